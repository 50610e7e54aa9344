//! ApiServer: owns the listening socket's registration and accepts connections, giving each a
//! seat (`connection/seats.rs`) or a refusal. Takes `Describe` and `Control` from the
//! supervisor.
//!
//! The socket itself is bound once, in `main`, and outlives any one ApiServer: each incarnation
//! registers a duplicate of the fd, so clients that connect while it restarts wait in the
//! kernel's backlog instead of being refused.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use actix::prelude::*;
use futures_util::stream;
use protocol::channel::{SocketAccess, bind_listener};
use slog::{Logger, debug, info, o, warn};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

use crate::admission;
use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::config::Config;
use crate::connection::seats::Seats;
use crate::connection::{Connection, Deps, refuse};

/// Binds the daemon socket: 0600, or 0660 with the configured group.
pub fn bind(config: &Config) -> Result<OwnedFd, String> {
    let access = SocketAccess {
        mode: if config.group.is_some() { 0o660 } else { 0o600 },
        owner: None,
        group: config.group.as_ref().map(|(gid, _)| *gid),
    };
    bind_listener(&config.socket, &access)
}

pub struct ApiServer {
    listener: Option<UnixSeqpacketListener>,
    deps: Deps,
    seats: Seats,
    log: Logger,
    guard: ChildGuard,
    served: u64,
}

impl ApiServer {
    pub fn new(mut cx: ChildCtx, listener: &OwnedFd, deps: Deps, seats: Seats) -> Result<Self, String> {
        let registered = listener.as_fd().try_clone_to_owned().and_then(UnixSeqpacketListener::try_from);
        let listener = registered.map_err(|e| {
            let why = format!("cannot register the listening socket: {e}");
            cx.guard.exiting(why.clone());
            why
        })?;
        Ok(ApiServer { listener: Some(listener), deps, seats, log: cx.log, guard: cx.guard, served: 0 })
    }
}

/// Out of descriptors: accepting again at once would only fail again (the listener stays
/// readable), so the accept loop waits this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Actor for ApiServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(stream::unfold(listener, |mut l| async move {
                let next = l.accept().await;
                let starved = next.as_ref().err().and_then(std::io::Error::raw_os_error);
                if matches!(starved, Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Some((next, l))
            }));
        }
        info!(self.log, "accepting connections");
        self.guard.started();
    }
}

impl StreamHandler<std::io::Result<UnixSeqpacket>> for ApiServer {
    fn handle(&mut self, accepted: std::io::Result<UnixSeqpacket>, ctx: &mut Context<Self>) {
        let sock = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(self.log, "accept failed"; "error" => %e);
                return;
            }
        };
        self.served += 1;
        let cred = match sock.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                let why = protocol::Error::internal(format!("cannot read peer credentials: {e}"));
                warn!(self.log, "refused a connection"; "conn" => self.served, "reason" => %why.message);
                ctx.spawn(refuse(sock, why).into_actor(self));
                return;
            }
        };
        // Seats are handed out here, before the handshake, so a client that never says hello
        // is counted (and limited) like any other.
        let owner = admission::is_owner(&self.deps.config, cred.uid());
        match self.seats.take(cred.uid(), owner) {
            Ok(seat) => {
                let log = self.log.new(
                    o!("conn" => self.served, "uid" => cred.uid(), "peer_pid" => cred.pid().unwrap_or(0)),
                );
                Connection::new(sock, cred, seat, self.deps.clone(), log).start();
            }
            Err(why) => {
                debug!(self.log, "refused a connection"; "conn" => self.served, "uid" => cred.uid(),
                    "reason" => %why.message);
                ctx.spawn(refuse(sock, why).into_actor(self));
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The accept stream never ends on its own; keep the actor (and its guard) alive.
    }
}

impl Handler<Describe> for ApiServer {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        let c = self.seats.counts();
        let closing = if c.evicting > 0 { format!(" ({} closing)", c.evicting) } else { String::new() };
        Some(format!(
            "{} open{closing}, {} served by this incarnation, {} refused",
            c.open, self.served, c.refused
        ))
    }
}

crate::handle_control!(ApiServer);
