//! ApiServer: owns the listening socket's registration and the connections it accepts. Takes
//! `Describe` and `Control` from the supervisor and `ConnectionClosed` from its connections.
//!
//! The socket itself is bound once, in `main`, and outlives any one ApiServer: each incarnation
//! registers a duplicate of the fd, so clients that connect while it restarts wait in the
//! kernel's backlog instead of being refused.

use std::os::fd::{AsFd, OwnedFd};

use actix::prelude::*;
use futures_util::stream;
use protocol::channel::{SocketAccess, bind_listener};
use slog::{Logger, info, o, warn};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

use crate::admission;
use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::config::Config;
use crate::connection::{Connection, Deps};

/// Binds the daemon socket: 0600, or 0660 with the configured group.
pub fn bind(config: &Config) -> Result<OwnedFd, String> {
    let access = SocketAccess {
        mode: if config.group.is_some() { 0o660 } else { 0o600 },
        owner: None,
        group: config.group.as_ref().map(|(gid, _)| *gid),
    };
    bind_listener(&config.socket, &access)
}

/// Connections served at once; past this a client is refused with advice instead of the daemon
/// running out of file descriptors.
const MAX_CONNECTIONS: usize = 1024;

#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed;

pub struct ApiServer {
    listener: Option<UnixSeqpacketListener>,
    deps: Deps,
    log: Logger,
    guard: ChildGuard,
    open: usize,
    served: u64,
}

impl ApiServer {
    pub fn new(mut cx: ChildCtx, listener: &OwnedFd, deps: Deps) -> Result<Self, String> {
        let registered = listener.as_fd().try_clone_to_owned().and_then(UnixSeqpacketListener::try_from);
        let listener = registered.map_err(|e| {
            let why = format!("cannot register the listening socket: {e}");
            cx.guard.exiting(why.clone());
            why
        })?;
        Ok(ApiServer { listener: Some(listener), deps, log: cx.log, guard: cx.guard, open: 0, served: 0 })
    }
}

impl Actor for ApiServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(stream::unfold(listener, |mut l| async move {
                let next = l.accept().await;
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
        let full = self.open >= MAX_CONNECTIONS;
        self.served += 1;
        self.open += 1;
        let (verdict, log) = match sock.peer_cred() {
            Ok(_) if full => (
                Err(protocol::Error::new(
                    protocol::ErrorKind::Unavailable,
                    format!("bangerd is serving {MAX_CONNECTIONS} connections already"),
                )
                .with_hint("close idle clients, or retry shortly")),
                self.log.new(o!("conn" => self.served)),
            ),
            Ok(cred) => (
                admission::admit(&self.deps.config, &cred),
                self.log.new(
                    o!("conn" => self.served, "uid" => cred.uid(), "peer_pid" => cred.pid().unwrap_or(0)),
                ),
            ),
            Err(e) => (
                Err(protocol::Error::internal(format!("cannot read peer credentials: {e}"))),
                self.log.new(o!("conn" => self.served)),
            ),
        };
        Connection::new(sock, verdict, self.deps.clone(), ctx.address().recipient(), log).start();
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The accept stream never ends on its own; keep the actor (and its guard) alive.
    }
}

impl Handler<ConnectionClosed> for ApiServer {
    type Result = ();
    fn handle(&mut self, _: ConnectionClosed, _: &mut Context<Self>) {
        self.open = self.open.saturating_sub(1);
    }
}

impl Handler<Describe> for ApiServer {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        Some(format!("{} open, {} served by this incarnation", self.open, self.served))
    }
}

crate::handle_control!(ApiServer);
