//! Connection: one per client. Runs the handshake, then routes each [`Request`] to the actor
//! that owns the answer and writes the reply: each arm of the router is one call, and the
//! decisions are the actors' (the VmManager's for anything that needs every VM). Its session
//! runs as a future inside the actor's context, so the session ends when the actor stops and
//! the actor stops when the session ends. It holds its [`Seat`] for as long as it runs; a
//! connection with no request in flight for the idle timeout, or whose seat the owner needs,
//! says why and closes.

mod exec;
pub mod seats;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::time::Duration;

use actix::prelude::*;
use protocol::channel::{Channel, WireError, refuse_before_handshake, server_handshake};
use protocol::daemon::{ChaosAction, Request, Response, VersionInfo};
use protocol::handshake::{Hello, ServiceKind};
use protocol::{Error, ErrorKind};
use slog::{Logger, debug, info, warn};
use tokio_seqpacket::{UCred, UnixSeqpacket};

use crate::admission;
use crate::config::Config;
use crate::image_cache::{InspectImage, ListImages, Prune, PullHandle, StartImport, StartPull};
use crate::kernels::{ImportKernel, ListKernels};
use crate::peers::{Peers, restarting};
use crate::supervisor::{Chaos, GetStatus, Shutdown};
use crate::vm::agent::Op;
use crate::vm::follow::Chunk;
use crate::vm::ports::PortChange;
use crate::vm_manager::{
    AgentOf, CreateVm, Lifecycle, ListVms, Logs, Ports, PruneVms, RemoveImage, RemoveKernel, RemoveVm,
    SetWorkspace, Uninstall,
};
use seats::{MAX_CONNECTIONS, Seat};

/// What a connection needs to answer requests.
#[derive(Clone)]
pub struct Deps {
    pub config: Config,
    pub peers: Peers,
}

pub struct Connection {
    session: Option<(UnixSeqpacket, UCred, Seat)>,
    deps: Deps,
    log: Logger,
}

impl Connection {
    pub fn new(sock: UnixSeqpacket, cred: UCred, seat: Seat, deps: Deps, log: Logger) -> Self {
        Connection { session: Some((sock, cred, seat)), deps, log }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some((sock, cred, seat)) = self.session.take() {
            let session = serve(Channel::new(sock), cred, seat, self.deps.clone(), self.log.clone());
            ctx.spawn(session.into_actor(self).map(|(), _, ctx| ctx.stop()));
        }
    }
}

fn hello() -> Hello {
    Hello::new(ServiceKind::Daemon, "bangerd")
}

/// The refusal sent at accept, before the handshake (no seat for this client).
pub async fn refuse(sock: UnixSeqpacket, why: Error) {
    let chan = Channel::new(sock);
    // A new socket's send buffer is empty, so this does not wait; the bound is for a
    // misbehaving kernel, never for the peer.
    let _ = tokio::time::timeout(Duration::from_secs(1), refuse_before_handshake(&chan, &hello(), why)).await;
}

/// Why the session stopped waiting for a request.
enum Next {
    Request(Result<Option<(Request, bool)>, WireError>),
    Idle(Duration),
    Evicted,
}

async fn serve(mut chan: Channel, cred: UCred, seat: Seat, deps: Deps, log: Logger) {
    // The owner is known without a lookup; anyone else may need NSS (group membership), which
    // can block, so it runs off the runtime's threads.
    let owner = admission::is_owner(&deps.config, cred.uid());
    let verdict = if owner {
        Ok(())
    } else {
        let config = deps.config.clone();
        tokio::task::spawn_blocking(move || admission::admit(&config, &cred))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("the admission check failed: {e}"))))
    };
    let ours = hello();
    let shaken = tokio::select! {
        shaken = server_handshake(&mut chan, &ours, verdict) => Some(shaken),
        () = seat.activity.evicted() => None,
    };
    let version = match shaken {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            info!(log, "connection refused"; "reason" => %e.message);
            return;
        }
        None => {
            info!(log, "closed a connection that had not said hello, to make room for the owner");
            let _ = tokio::time::timeout(LAST_WORD, refuse_before_handshake(&chan, &ours, evicted())).await;
            return;
        }
    };
    debug!(log, "connected"; "protocol" => version);
    let idle_timeout = deps.config.connections.idle_timeout;
    loop {
        seat.activity.idle();
        let next = tokio::select! {
            received = chan.recv::<Request>() => Next::Request(received),
            () = after(idle_timeout) => Next::Idle(idle_timeout.unwrap_or_default()),
            () = seat.activity.evicted() => Next::Evicted,
        };
        let request = match next {
            Next::Request(Ok(Some((request, _)))) => request,
            Next::Request(Ok(None)) => return,
            Next::Request(Err(e)) => {
                warn!(log, "closing a connection that sent a bad message"; "error" => %e);
                if let Some(reply) = e.to_reply() {
                    last_word(&chan, &Response::Error(reply)).await;
                }
                return;
            }
            // Said first, so that a client that sends its next request on this connection
            // reads why it was closed instead of a bare broken pipe.
            Next::Idle(after) => {
                debug!(log, "closing an idle connection"; "idle_s" => after.as_secs());
                last_word(&chan, &Response::Error(idle(after))).await;
                return;
            }
            Next::Evicted => {
                info!(log, "closed an idle connection to make room for the owner");
                last_word(&chan, &Response::Error(evicted())).await;
                return;
            }
        };
        seat.activity.busy();
        // A descriptor only ever accompanies an import; any other is closed here.
        let fd = chan.take_fd();
        // A member of the daemon's group uses it; stopping it is for its owner and root.
        if matches!(request, Request::Shutdown) && !owner {
            let e = Error::new(ErrorKind::PermissionDenied, "only the daemon's owner or root may stop it")
                .with_hint(
                    "as root: `sudo systemctl stop bangerd` (a system install) or `sudo banger daemon stop`",
                );
            if chan.send(&Response::Error(e), false).await.is_err() {
                return;
            }
            continue;
        }
        if let Err(e) =
            route(&mut Replies { chan: &mut chan, stall: idle_timeout }, request, fd, version, &deps).await
        {
            debug!(log, "reply failed"; "error" => %e);
            return;
        }
    }
}

/// How long the last word before closing may wait for room in the client's socket.
const LAST_WORD: Duration = Duration::from_secs(1);

/// Sends the error a connection closes with; a client that reads nothing is not waited for.
async fn last_word(chan: &Channel, reply: &Response) {
    let _ = tokio::time::timeout(LAST_WORD, chan.send(reply, false)).await;
}

/// Where replies go. A client that stops reading would leave the daemon's send waiting, its
/// connection busy (so never idle, never closed) and its seat held for good: a send that cannot
/// finish within the idle timeout ends the connection.
struct Replies<'a> {
    chan: &'a mut Channel,
    stall: Option<Duration>,
}

impl Replies<'_> {
    async fn send<T: serde::Serialize>(&self, message: &T, more: bool) -> Result<(), WireError> {
        let Some(stall) = self.stall else { return self.chan.send(message, more).await };
        tokio::time::timeout(stall, self.chan.send(message, more)).await.unwrap_or_else(|_| {
            Err(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", stall.as_secs()),
            )))
        })
    }
}

/// Resolves after `timeout`, or never.
async fn after(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

fn idle(after: Duration) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("bangerd closed this connection after {} s without a request", after.as_secs()),
    )
    .with_hint(
        "connect again (each banger command does); the daemon's owner sets the wait with \
         `[connections] idle_timeout_secs` in bangerd.toml",
    )
}

fn evicted() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "bangerd closed this idle connection to make room for its owner (it serves \
             {MAX_CONNECTIONS} at most)"
        ),
    )
    .with_hint("connect again; close idle clients so the daemon need not close them")
}

/// What a request is answered with: one response, or a stream of them.
enum Reply {
    One(Box<Response>),
    /// A pull's or an import's progress, then its result.
    Pull(PullHandle),
    /// Console output, then `Ok`.
    Log(tokio::sync::mpsc::Receiver<Chunk>),
    /// `Ok` first, then the shutdown begins.
    Shutdown,
    /// Chaos: the payload, this many times.
    Echo(Vec<u8>, u32),
    /// An exec or a copy in this VM: its events, while the client's input goes the other way.
    Exec(String, Op),
}

fn reply(response: Response) -> Reply {
    Reply::One(Box::new(response))
}

/// `ok` of an answer's value, or its error, as the reply.
fn one<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Response) -> Reply {
    reply(match result {
        Ok(v) => ok(v),
        Err(e) => Response::Error(e),
    })
}

fn stream<T>(result: Result<T, Error>, as_reply: impl FnOnce(T) -> Reply) -> Reply {
    result.map_or_else(|e| reply(Response::Error(e)), as_reply)
}

async fn route(
    chan: &mut Replies<'_>,
    request: Request,
    fd: Option<OwnedFd>,
    version: u32,
    deps: &Deps,
) -> Result<(), WireError> {
    let p = &deps.peers;
    let ms = Duration::from_millis;
    let reply = match request {
        Request::Ping => reply(Response::Pong),
        Request::Version => reply(Response::Version(version_info(version))),
        Request::Status => one(p.supervisor().send(GetStatus).await, |mut report| {
            report.version.protocol = version;
            Response::Status(report)
        }),
        Request::Shutdown => Reply::Shutdown,
        Request::Chaos(action) => chaos(action, p).await,
        Request::ImagePull(pull) => image_pull(p, pull, false).await,
        Request::ImagePullReplacing { pull, replace } => image_pull(p, pull, replace).await,
        Request::ImageImport { name, size, file } => image_import(p, name, size, file, false, fd).await,
        Request::ImageImportReplacing { name, size, file, replace } => {
            image_import(p, name, size, file, replace, fd).await
        }
        Request::ImageList => one(p.images().ask(ListImages).await, Response::Images),
        Request::ImageInspect { name } => one(p.images().ask(InspectImage(name)).await, Response::Image),
        Request::ImageRemove { name, force } => {
            one(p.vms().ask(RemoveImage { name, force }).await, |()| Response::Ok)
        }
        Request::CachePrune { dry_run } => one(prune(p, dry_run).await, Response::Pruned),
        Request::VmCreate(create) => one(p.vms().ask(CreateVm(create)).await, Response::Vm),
        Request::VmStart { name } => one(p.vms().ask(Lifecycle::Start(name)).await, Response::Vm),
        Request::VmStop { name, timeout_ms } => {
            one(p.vms().ask(Lifecycle::Stop(name, ms(timeout_ms))).await, Response::Vm)
        }
        Request::VmKill { name } => one(p.vms().ask(Lifecycle::Kill(name)).await, Response::Vm),
        Request::VmRestart { name, timeout_ms } => {
            one(p.vms().ask(Lifecycle::Restart(name, ms(timeout_ms))).await, Response::Vm)
        }
        Request::VmRemove { name, force } => {
            one(p.vms().ask(RemoveVm { name, force }).await, |()| Response::Ok)
        }
        Request::VmList { all } => one(p.vms().ask(ListVms { all }).await, Response::Vms),
        Request::VmInspect { name } => one(p.vms().ask(Lifecycle::Inspect(name)).await, Response::Vm),
        Request::VmLogs { name, follow } => stream(p.vms().ask(Logs { name, follow }).await, Reply::Log),
        Request::VmPrune => one(p.vms().ask(PruneVms).await, Response::Removed),
        Request::KernelImport { name, file } => one(
            async {
                p.kernels()
                    .ask(ImportKernel { name, source: file, input: passed(fd, "kernel import")? })
                    .await
            }
            .await,
            Response::Kernel,
        ),
        Request::KernelList => one(p.kernels().ask(ListKernels).await, Response::Kernels),
        Request::KernelRemove { name } => one(p.vms().ask(RemoveKernel(name)).await, |()| Response::Ok),
        Request::SystemUninstall => one(p.vms().ask(Uninstall).await, Response::Removed),
        Request::VmExec { name, spec } => Reply::Exec(name, Op::Exec(spec)),
        Request::VmCopyIn { name, path } => Reply::Exec(name, Op::CopyIn(path)),
        Request::VmCopyOut { name, path } => Reply::Exec(name, Op::CopyOut(path)),
        Request::ExecInput(_) => reply(Response::Error(
            Error::new(ErrorKind::InvalidInput, "no exec runs on this connection")
                .with_hint("send ExecInput only while a VmExec's replies stream"),
        )),
        Request::VmWait { name, timeout_ms } => one(wait(p, name, ms(timeout_ms)).await, Response::Vm),
        Request::VmPing { name } => one(ping(p, name).await, |()| Response::Pong),
        Request::VmConnect { name, port } => Reply::Exec(name, Op::Connect(port)),
        Request::VmPortAdd { name, forward } => {
            one(p.vms().ask(Ports { name, change: PortChange::Add(forward) }).await, Response::Vm)
        }
        Request::VmPortRemove { name, host_port } => {
            one(p.vms().ask(Ports { name, change: PortChange::Remove(host_port) }).await, Response::Vm)
        }
        Request::VmWorkspaceSet { name, workspace } => {
            one(p.vms().ask(SetWorkspace { name, workspace }).await, Response::Vm)
        }
    };
    match reply {
        Reply::One(response) => chan.send(&response, false).await,
        Reply::Exec(name, op) => {
            let agent = p.vms().ask(AgentOf(name.clone())).await;
            exec::relay(chan, agent, &name, op).await
        }
        Reply::Pull(handle) => send_pull(chan, handle).await,
        Reply::Log(chunks) => send_log(chan, chunks).await,
        Reply::Shutdown => {
            chan.send(&Response::Ok, false).await?;
            // A supervisor that is gone is already shutting down.
            let _ = p.supervisor().tell(Shutdown { reason: "requested by a client" });
            Ok(())
        }
        Reply::Echo(payload, repeat) => {
            let echo = Response::Echo(payload);
            for i in 0..repeat {
                chan.send(&echo, i + 1 < repeat).await?;
            }
            Ok(())
        }
    }
}

/// Waits for the VM's agent to be ready; the VM as it then is.
async fn wait(p: &Peers, name: String, timeout: Duration) -> Result<protocol::vm::VmInfo, Error> {
    let mut agent = p.vms().ask(AgentOf(name.clone())).await?;
    agent.ready(&name, timeout).await?;
    p.vms().ask(Lifecycle::Inspect(name)).await
}

async fn ping(p: &Peers, name: String) -> Result<(), Error> {
    p.vms().ask(AgentOf(name)).await?.ping().await
}

async fn image_pull(p: &Peers, request: protocol::image::PullRequest, replace: bool) -> Reply {
    stream(p.images().send(StartPull { request, replace }).await, Reply::Pull)
}

async fn image_import(
    p: &Peers,
    name: String,
    size: Option<u64>,
    file: String,
    replace: bool,
    fd: Option<OwnedFd>,
) -> Reply {
    let input = match passed(fd, "image import") {
        Ok(input) => input,
        Err(e) => return reply(Response::Error(e)),
    };
    stream(p.images().send(StartImport { name, size, file, replace, input }).await, Reply::Pull)
}

/// The file a request came with (SCM_RIGHTS), as imports need.
fn passed(fd: Option<OwnedFd>, what: &str) -> Result<std::fs::File, Error> {
    fd.map(std::fs::File::from).ok_or_else(|| {
        Error::new(ErrorKind::InvalidInput, format!("an {what} needs the file passed as a descriptor"))
            .with_hint(format!("use `banger {what} FILE --name NAME`"))
    })
}

async fn prune(p: &Peers, dry_run: bool) -> Result<protocol::image::PruneReport, Error> {
    let report = p.images().send(Prune { dry_run }).await?;
    report.await.map_err(|_| restarting("image cache"))?
}

pub fn version_info(protocol: u32) -> VersionInfo {
    VersionInfo {
        software: format!("bangerd {}", protocol::SOFTWARE_VERSION),
        protocol,
        chaos: cfg!(feature = "chaos"),
    }
}

/// The most frames one `Echo` may ask for.
const MAX_ECHO_FRAMES: u32 = 10_000;

/// Fault injection (chaos builds only): `Echo` is answered here; the rest goes to the
/// supervisor.
async fn chaos(action: ChaosAction, p: &Peers) -> Reply {
    if !cfg!(feature = "chaos") {
        return reply(Response::Error(
            Error::new(ErrorKind::InvalidInput, "this bangerd was built without fault injection")
                .with_hint("build it with `--features chaos` to run chaos-tests"),
        ));
    }
    match action {
        ChaosAction::Echo { repeat, .. } if repeat > MAX_ECHO_FRAMES => reply(Response::Error(Error::new(
            ErrorKind::InvalidInput,
            format!("echo repeat is capped at {MAX_ECHO_FRAMES}"),
        ))),
        ChaosAction::Echo { repeat: 0, .. } => reply(Response::Ok),
        ChaosAction::Echo { payload, repeat } => Reply::Echo(payload, repeat),
        action => one(p.supervisor().ask(Chaos(action)).await, |()| Response::Ok),
    }
}

/// Streams a pull's or an import's progress, then its result. A client that hangs up ends
/// this, and dropping the handle cancels the work (mkfs can run for minutes without an event).
async fn send_pull(chan: &Replies<'_>, mut handle: PullHandle) -> Result<(), WireError> {
    loop {
        let event = tokio::select! {
            event = handle.events.recv() => event,
            () = chan.chan.closed() => return Err(WireError::ClosedMidMessage),
        };
        let Some(event) = event else { break };
        chan.send(&Response::PullProgress(event), true).await?;
    }
    let reply = match handle.result.await {
        Ok(Ok(info)) => Response::Image(info),
        Ok(Err(e)) => Response::Error(e),
        Err(_) => Response::Error(restarting("image cache")),
    };
    chan.send(&reply, false).await
}

/// Streams console output, then `Ok` (or the error that cut it short).
async fn send_log(
    chan: &Replies<'_>,
    mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<(), WireError> {
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Ok(bytes) => chan.send(&Response::Log(bytes), true).await?,
            Err(e) => return chan.send(&Response::Error(e), false).await,
        }
    }
    chan.send(&Response::Ok, false).await
}
