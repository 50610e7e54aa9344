//! A VM's port forwards while it runs: a listener per forward and host address, each accepted
//! connection carried to the guest port over the agent's channel (`AgentRequest::Connect`), so
//! the guest needs no network. Both directions keep to the agent's windows: the host's bytes
//! go no faster than the agent acknowledges them, and the guest's are acknowledged once the
//! host socket took them. Dropping [`Forwards`] closes the listeners and every connection.

use std::collections::HashMap;
use std::net::SocketAddr;

use protocol::agent::WINDOW;
use protocol::exec::{ExecEvent, ExecInput};
use protocol::vm::PortForward;
use protocol::{Error, ErrorKind};
use slog::{Logger, debug, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::agent::{AgentHandle, Delivery, Op};

/// The most host bytes read (and sent to the agent) at once.
const CHUNK: usize = 64 << 10;

/// The listeners of a running VM's forwards, by host port.
#[derive(Default)]
pub struct Forwards {
    listening: HashMap<u16, Vec<Task>>,
}

struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A forward's listeners, bound and not yet served.
pub struct Bound {
    forward: PortForward,
    listeners: Vec<TcpListener>,
}

impl Forwards {
    /// Carries `bound`'s connections to the guest from now on.
    pub fn serve(&mut self, bound: Bound, agent: &AgentHandle, log: &Logger) {
        let guest_port = bound.forward.guest_port;
        let tasks = bound
            .listeners
            .into_iter()
            .map(|l| Task(tokio::spawn(accept(l, guest_port, agent.clone(), log.clone()))))
            .collect();
        self.listening.insert(bound.forward.host_port, tasks);
    }

    /// Listens for `forward` from now on; refused (with nothing listening) if any of its host
    /// addresses cannot be bound.
    pub fn add(&mut self, forward: &PortForward, agent: &AgentHandle, log: &Logger) -> Result<(), Error> {
        self.serve(bind(forward)?, agent, log);
        Ok(())
    }

    pub fn remove(&mut self, host_port: u16) {
        self.listening.remove(&host_port);
    }
}

/// Every forward bound, or the error of the first that cannot be (a start is refused then).
pub fn bind_all(forwards: &[PortForward]) -> Result<Vec<Bound>, Error> {
    forwards.iter().map(bind).collect()
}

/// Binds every host address of `forward` (non-blocking, ready for tokio).
pub fn bind(forward: &PortForward) -> Result<Bound, Error> {
    let mut listeners = vec![];
    for ip in forward.host_ips()? {
        let addr = SocketAddr::new(ip, forward.host_port);
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .map_err(|e| bind_error(addr, forward, e))?;
        listeners.push(listener);
    }
    Ok(Bound { forward: forward.clone(), listeners })
}

fn bind_error(addr: SocketAddr, forward: &PortForward, e: std::io::Error) -> Error {
    let port = forward.host_port;
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another program holds it (see `ss -ltnp 'sport = :{port}'`); pick another host port, e.g. -p {}:{}",
            port.saturating_add(1),
            forward.guest_port
        ),
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges bangerd lacks; pick a port from 1024 up".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!(
                "{} is not an address of this host; use 127.0.0.1, ::1, localhost or 0.0.0.0",
                forward.host_addr
            )
        }
        _ => "pick another host address or port".to_string(),
    };
    Error::new(ErrorKind::Conflict, format!("cannot listen on {addr}: {e}")).with_hint(hint)
}

async fn accept(listener: TcpListener, guest_port: u16, agent: AgentHandle, log: Logger) {
    loop {
        match listener.accept().await {
            Ok((tcp, from)) => {
                // Relayed as it comes, as the guest side is: no Nagle delay on either end.
                let _ = tcp.set_nodelay(true);
                let (agent, log) = (agent.clone(), log.clone());
                tokio::spawn(async move {
                    if let Err(why) = carry(tcp, guest_port, agent).await {
                        debug!(log, "a forwarded connection ended"; "from" => %from, "guest_port" => guest_port, "why" => why);
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                warn!(log, "cannot accept a forwarded connection"; "error" => %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection, both ways, until both sides are done.
async fn carry(mut tcp: TcpStream, guest_port: u16, agent: AgentHandle) -> Result<(), String> {
    let mut exec = agent.open(Op::Connect(guest_port)).await.map_err(|e| e.message)?;
    let ended = {
        let (mut from_host, mut to_host) = tcp.split();
        let mut buf = vec![0u8; CHUNK];
        let (mut credit, mut host_open) = (WINDOW, true);
        loop {
            tokio::select! {
                delivery = exec.next() => match delivery {
                    Some(Delivery::StdinAck(bytes)) => credit = credit.saturating_add(bytes),
                    Some(Delivery::Event(ExecEvent::Output { data, .. })) => {
                        to_host.write_all(&data).await.map_err(|e| e.to_string())?;
                        let _ = exec.ack(data.len() as u64).await;
                    }
                    Some(Delivery::Event(ExecEvent::Started { .. })) => {}
                    Some(Delivery::Event(ExecEvent::Exited(_))) => {
                        let _ = to_host.shutdown().await;
                        break Ok(());
                    }
                    Some(Delivery::Event(ExecEvent::Failed { message, .. })) => break Err(message),
                    None => break Err("the agent link ended".to_string()),
                },
                read = from_host.read(&mut buf[..CHUNK.min(credit as usize)]), if host_open && credit > 0 => {
                    match read {
                        Ok(0) | Err(_) => {
                            host_open = false;
                            let _ = exec.input(ExecInput::CloseStdin).await;
                        }
                        Ok(n) => {
                            credit -= n as u64;
                            let _ = exec.input(ExecInput::Stdin(buf[..n].to_vec())).await;
                        }
                    }
                }
            }
        }
    };
    if ended.is_err() {
        // A reset, not an orderly close: the client sees that the guest refused or went away.
        let _ = tcp.set_zero_linger();
    }
    ended
}

/// Add or remove a forward; answered with the VM as it then is. Kept in the VM's record, so
/// it holds across daemon restarts and every later start.
#[derive(actix::Message)]
#[rtype(result = "Result<protocol::vm::VmInfo, Error>")]
pub enum PortChange {
    Add(PortForward),
    Remove(u16),
}

impl actix::Handler<PortChange> for super::VmActor {
    type Result = actix::ResponseActFuture<Self, Result<protocol::vm::VmInfo, Error>>;

    fn handle(&mut self, change: PortChange, _: &mut actix::Context<Self>) -> Self::Result {
        use actix::WrapFuture;
        let changed = self.change_ports(change);
        // Answered once the record is on disk, so a daemon restart keeps the forward.
        let saved = self.saved();
        let info = changed.map(|()| self.info());
        Box::pin(
            async move {
                saved.await;
                info
            }
            .into_actor(self),
        )
    }
}

impl super::VmActor {
    fn change_ports(&mut self, change: PortChange) -> Result<(), Error> {
        let name = self.name();
        let ports = &mut self.record.info.ports;
        match change {
            PortChange::Add(forward) => {
                check(&forward)?;
                if let Some(taken) = ports.iter().find(|p| p.host_port == forward.host_port) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("VM {name} already forwards host port {} ({taken})", forward.host_port),
                    )
                    .with_hint(format!("remove it first: banger vm port rm {name} {}", forward.host_port)));
                }
                // A running VM listens now, so a taken port is refused before it is kept.
                if let Some(link) = &self.agent {
                    self.forwards.add(&forward, &link.handle(), &self.log)?;
                }
                ports.push(forward);
            }
            PortChange::Remove(host_port) => {
                let before = ports.len();
                ports.retain(|p| p.host_port != host_port);
                if ports.len() == before {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("VM {name} forwards no host port {host_port}"),
                    )
                    .with_hint(format!("see its forwards: banger vm port ls {name}")));
                }
                self.forwards.remove(host_port);
            }
        }
        self.persist();
        Ok(())
    }
}

/// A forward's own rules (its addresses parse; no port 0).
pub fn check(forward: &PortForward) -> Result<(), Error> {
    forward.host_ips()?;
    if forward.host_port == 0 || forward.guest_port == 0 {
        return Err(Error::new(ErrorKind::InvalidInput, format!("port 0 cannot be forwarded ({forward})"))
            .with_hint("give ports from 1 to 65535, e.g. -p 8080:80"));
    }
    Ok(())
}
