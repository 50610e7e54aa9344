//! Connection: one per client. Runs the handshake, then routes each [`Request`] to the actor
//! that owns the answer and writes the reply. Its session runs as a future inside the actor's
//! context, so the session ends when the actor stops and the actor stops when the session ends.
//! Tells its ApiServer when it closes.

mod vms;

use std::os::fd::OwnedFd;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use protocol::channel::{Channel, WireError, server_handshake};
use protocol::daemon::{ChaosAction, Request, Response, VersionInfo};
use protocol::handshake::{Hello, ServiceKind};
use protocol::{Error, ErrorKind};
use slog::{Logger, debug, info, warn};
use tokio_seqpacket::UnixSeqpacket;

use crate::api_server::ConnectionClosed;
use crate::config::Config;
use crate::image_cache::{self, InspectImage, ListImages, Prune, RemoveImage, StartImport, StartPull};
use crate::supervisor::{Chaos, GetStatus, Lookup, Shutdown, Supervisor};

/// What a connection needs to answer requests.
#[derive(Clone)]
pub struct Deps {
    pub config: Config,
    pub supervisor: Addr<Supervisor>,
}

pub struct Connection {
    session: Option<(UnixSeqpacket, Result<(), Error>)>,
    deps: Deps,
    server: Recipient<ConnectionClosed>,
    log: Logger,
}

impl Connection {
    pub fn new(
        sock: UnixSeqpacket,
        verdict: Result<(), Error>,
        deps: Deps,
        server: Recipient<ConnectionClosed>,
        log: Logger,
    ) -> Self {
        Connection { session: Some((sock, verdict)), deps, server, log }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some((sock, verdict)) = self.session.take() {
            let session = serve(Channel::new(sock), verdict, self.deps.clone(), self.log.clone());
            ctx.spawn(session.into_actor(self).map(|(), _, ctx| ctx.stop()));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.server.do_send(ConnectionClosed);
    }
}

async fn serve(mut chan: Channel, verdict: Result<(), Error>, deps: Deps, log: Logger) {
    let ours = Hello::new(ServiceKind::Daemon, "bangerd");
    let version = match server_handshake(&mut chan, &ours, verdict).await {
        Ok(v) => v,
        Err(e) => {
            info!(log, "connection refused"; "reason" => %e.message);
            return;
        }
    };
    debug!(log, "connected"; "protocol" => version);
    loop {
        let request = match chan.recv::<Request>().await {
            Ok(Some((request, _))) => request,
            Ok(None) => return,
            Err(e) => {
                warn!(log, "closing a connection that sent a bad message"; "error" => %e);
                if let Some(reply) = e.to_reply() {
                    let _ = chan.send(&Response::Error(reply), false).await;
                }
                return;
            }
        };
        // A descriptor only ever accompanies an import; any other is closed here.
        let fd = chan.take_fd();
        if let Err(e) = route(&chan, request, fd, version, &deps).await {
            debug!(log, "reply failed"; "error" => %e);
            return;
        }
    }
}

async fn route(
    chan: &Channel,
    request: Request,
    fd: Option<OwnedFd>,
    version: u32,
    deps: &Deps,
) -> Result<(), WireError> {
    let reply = match request {
        Request::Ping => Response::Pong,
        Request::Version => Response::Version(version_info(version)),
        Request::Status => match deps.supervisor.send(GetStatus).await {
            Ok(mut report) => {
                report.version.protocol = version;
                Response::Status(report)
            }
            Err(e) => Response::Error(Error::new(
                ErrorKind::Unavailable,
                format!("the supervisor did not answer: {e}"),
            )),
        },
        Request::Shutdown => {
            chan.send(&Response::Ok, false).await?;
            deps.supervisor.do_send(Shutdown { reason: "requested by a client" });
            return Ok(());
        }
        Request::VmCreate(_)
        | Request::VmStart { .. }
        | Request::VmStop { .. }
        | Request::VmKill { .. }
        | Request::VmRestart { .. }
        | Request::VmRemove { .. }
        | Request::VmList { .. }
        | Request::VmInspect { .. }
        | Request::VmLogs { .. }
        | Request::VmPrune
        | Request::KernelImport { .. }
        | Request::KernelList
        | Request::KernelRemove { .. }
        | Request::SystemUninstall => return vms::route(chan, request, fd, deps).await,
        Request::Chaos(action) if cfg!(feature = "chaos") => return chaos(chan, action, deps).await,
        Request::ImagePull(_)
        | Request::ImageList
        | Request::ImageInspect { .. }
        | Request::ImageRemove { .. }
        | Request::ImageImport { .. }
        | Request::CachePrune { .. } => return image_request(chan, request, fd, deps).await,
        Request::Chaos(_) => Response::Error(
            Error::new(ErrorKind::InvalidInput, "this bangerd was built without fault injection")
                .with_hint("build it with `--features chaos` to run chaos-tests"),
        ),
    };
    chan.send(&reply, false).await
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

async fn chaos(chan: &Channel, action: ChaosAction, deps: &Deps) -> Result<(), WireError> {
    if let ChaosAction::Echo { payload, repeat } = action {
        if repeat > MAX_ECHO_FRAMES {
            let e =
                Error::new(ErrorKind::InvalidInput, format!("echo repeat is capped at {MAX_ECHO_FRAMES}"));
            return chan.send(&Response::Error(e), false).await;
        }
        if repeat == 0 {
            return chan.send(&Response::Ok, false).await;
        }
        let reply = Response::Echo(payload);
        for i in 0..repeat {
            chan.send(&reply, i + 1 < repeat).await?;
        }
        return Ok(());
    }
    let reply = match deps.supervisor.send(Chaos(action)).await {
        Ok(Ok(())) => Response::Ok,
        Ok(Err(e)) => Response::Error(e),
        Err(e) => Response::Error(Error::internal(format!("the supervisor did not answer: {e}"))),
    };
    chan.send(&reply, false).await
}

/// Routes an image request to the ImageCache and streams its answer back.
async fn image_request(
    chan: &Channel,
    request: Request,
    fd: Option<OwnedFd>,
    deps: &Deps,
) -> Result<(), WireError> {
    let Ok(Some(images)) = deps.supervisor.send(Lookup).await.map(|p| p.images) else {
        return chan.send(&Response::Error(image_cache::unavailable()), false).await;
    };
    let gone = |e: actix::MailboxError| Error::internal(format!("the image cache did not answer: {e}"));
    let response = match request {
        Request::ImagePull(pull) => match images.send(StartPull(pull)).await {
            Ok(handle) => return stream_image(chan, handle).await,
            Err(e) => Response::Error(gone(e)),
        },
        Request::ImageImport { name, size, file } => {
            let Some(fd) = fd else {
                let e = Error::new(
                    ErrorKind::InvalidInput,
                    "an import needs the tar passed as a file descriptor",
                )
                .with_hint("use `banger image import FILE --name NAME`");
                return chan.send(&Response::Error(e), false).await;
            };
            match images.send(StartImport { name, size, file, input: std::fs::File::from(fd) }).await {
                Ok(handle) => return stream_image(chan, handle).await,
                Err(e) => Response::Error(gone(e)),
            }
        }
        Request::ImageList => reply(ask(&images, ListImages).await, Response::Images),
        Request::ImageInspect { name } => reply(ask(&images, InspectImage(name)).await, Response::Image),
        Request::ImageRemove { name, force } => {
            // A VM's disk is a clone, so removing its image breaks nothing; still, a VM made
            // from it keeps it unless the user insists.
            let vms = match deps.supervisor.send(Lookup).await.ok().and_then(|p| p.vms) {
                Some(vms) => vms.send(crate::vm_manager::ListVms).await.unwrap_or_default(),
                None => vec![],
            };
            let users: Vec<String> =
                vms.into_iter().filter(|v| v.spec.image == name).map(|v| v.name).collect();
            if !force && !users.is_empty() {
                Response::Error(
                    Error::new(
                        ErrorKind::Conflict,
                        format!("image {name} is used by VM(s) {}", users.join(", ")),
                    )
                    .with_hint(format!("remove them first, or `banger image rm --force {name}`")),
                )
            } else {
                reply(ask(&images, RemoveImage { name }).await, |()| Response::Ok)
            }
        }
        Request::CachePrune { dry_run } => match images.send(Prune { dry_run }).await {
            Ok(rx) => match rx.await {
                Ok(Ok(report)) => Response::Pruned(report),
                Ok(Err(e)) => Response::Error(e),
                Err(_) => Response::Error(image_cache::unavailable()),
            },
            Err(e) => Response::Error(gone(e)),
        },
        _ => Response::Error(Error::internal("not an image request")),
    };
    chan.send(&response, false).await
}

/// Streams a pull's or an import's progress, then its result.
async fn stream_image(chan: &Channel, mut handle: image_cache::PullHandle) -> Result<(), WireError> {
    while let Some(event) = handle.events.recv().await {
        chan.send(&Response::PullProgress(event), true).await?;
    }
    let reply = match handle.result.await {
        Ok(Ok(info)) => Response::Image(info),
        Ok(Err(e)) => Response::Error(e),
        Err(_) => Response::Error(image_cache::unavailable()),
    };
    chan.send(&reply, false).await
}

/// The response for an answer: `ok` of its value, or the error.
pub(super) fn reply<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => ok(v),
        Err(e) => Response::Error(e),
    }
}

/// Sends `msg` to `addr` and waits for its answer; a dead mailbox is an internal error.
pub(super) async fn ask<A, M, T>(addr: &Addr<A>, msg: M) -> Result<T, Error>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    addr.send(msg).await.map_err(|e| Error::internal(format!("the actor did not answer: {e}")))?
}
