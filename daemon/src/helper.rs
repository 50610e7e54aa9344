//! Helper: the daemon's link to the root `banger-helper`. Keeps one connection open, pings it,
//! and reconnects with backoff whenever it goes away, so a helper restart never needs a daemon
//! restart. The link runs as a future in this actor's context; its state is published on a
//! watch channel that `Describe` reads, and privileged requests (`Call`) reach it through a
//! queue. Takes `Call`, and `Describe` and `Control` from the supervisor.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use protocol::channel::{Client, ClientError, Helper};
use protocol::helper::{HelperRequest, HelperResponse};
use protocol::{Error, ErrorKind};
use slog::{Logger, info, warn};
use tokio::sync::{mpsc, oneshot, watch};

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::peers::Peers;

const PING_EVERY: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a call waits for the helper to be (re)connected and answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Link {
    NotConfigured,
    Waiting { error: String },
    Connected { server: String, protocol: u32 },
}

/// A privileged request for the helper, with an optional descriptor to pass along.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Call {
    pub request: HelperRequest,
    pub fd: Option<OwnedFd>,
    pub reply: oneshot::Sender<Result<HelperResponse, Error>>,
}

pub struct HelperLink {
    path: Option<PathBuf>,
    log: Logger,
    guard: ChildGuard,
    link: watch::Receiver<Link>,
    publish: Option<watch::Sender<Link>>,
    calls: mpsc::UnboundedSender<Call>,
    queue: Option<mpsc::UnboundedReceiver<Call>>,
}

impl HelperLink {
    pub fn new(cx: ChildCtx) -> Self {
        let path = cx.config.helper_socket.clone();
        let first =
            if path.is_some() { Link::Waiting { error: "connecting".into() } } else { Link::NotConfigured };
        let (publish, link) = watch::channel(first);
        let (calls, queue) = mpsc::unbounded_channel();
        HelperLink {
            path,
            log: cx.log,
            guard: cx.guard,
            link,
            publish: Some(publish),
            calls,
            queue: Some(queue),
        }
    }
}

/// Sends one privileged request through whichever Helper actor runs now, and waits for it.
pub async fn call(
    peers: &Peers,
    request: HelperRequest,
    fd: Option<OwnedFd>,
) -> Result<HelperResponse, Error> {
    let unavailable = |why: &str| {
        Error::new(ErrorKind::Unavailable, format!("banger-helper is not available: {why}")).with_hint(
            "VMs need the root helper: start banger as root (`sudo banger daemon start`) or install the service",
        )
    };
    let (reply, answer) = oneshot::channel();
    peers.helper().send(Call { request, fd, reply }).await?;
    match tokio::time::timeout(CALL_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(unavailable("the helper link restarted during the request")),
        Err(_) => Err(unavailable("no answer within 20 s")),
    }
}

async fn run_link(
    path: PathBuf,
    publish: watch::Sender<Link>,
    mut calls: mpsc::UnboundedReceiver<Call>,
    log: Logger,
) {
    let mut retry = RETRY_MIN;
    loop {
        match Client::<Helper>::connect(&path, "bangerd").await {
            Ok(mut client) => {
                retry = RETRY_MIN;
                info!(log, "connected to the helper"; "helper" => &client.server.software);
                let server = client.server.software.clone();
                publish.send_replace(Link::Connected { server, protocol: client.version });
                let error = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(PING_EVERY) => match client.call(&HelperRequest::Ping).await {
                            Ok(HelperResponse::Pong) => {}
                            Ok(other) => break format!("unexpected reply to ping: {other:?}"),
                            Err(e) => break e.to_string(),
                        },
                        call = calls.recv() => {
                            let Some(call) = call else { return };
                            match forward(&mut client, call.request, call.fd).await {
                                Ok(answer) => {
                                    let _ = call.reply.send(answer);
                                }
                                Err(e) => {
                                    let message = e.to_string();
                                    let gone = Error::new(ErrorKind::Unavailable, format!("the helper went away: {message}"));
                                    let _ = call.reply.send(Err(gone));
                                    break message;
                                }
                            }
                        }
                    }
                };
                warn!(log, "lost the helper; reconnecting"; "error" => %error);
                publish.send_replace(Link::Waiting { error });
            }
            Err(e) => {
                publish.send_replace(Link::Waiting { error: e.to_string() });
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One request and its reply: an `Error` reply is the helper's refusal; a transport error
/// means the link is down.
async fn forward(
    client: &mut Client<Helper>,
    request: HelperRequest,
    fd: Option<OwnedFd>,
) -> Result<Result<HelperResponse, Error>, ClientError> {
    let reply = match fd {
        Some(fd) => {
            client.send_with_fd(&request, fd.as_fd()).await?;
            match client.next().await? {
                Some((reply, _)) => reply,
                None => return Err(ClientError::Closed),
            }
        }
        None => client.call(&request).await?,
    };
    Ok(match reply {
        HelperResponse::Error(e) => Err(e),
        other => Ok(other),
    })
}

impl Actor for HelperLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let (Some(path), Some(publish), Some(queue)) =
            (self.path.clone(), self.publish.take(), self.queue.take())
        {
            ctx.spawn(run_link(path, publish, queue, self.log.clone()).into_actor(self));
        }
        self.guard.started();
    }
}

impl Handler<Call> for HelperLink {
    type Result = ();
    fn handle(&mut self, call: Call, _: &mut Context<Self>) {
        if self.path.is_none() {
            let e =
                Error::new(ErrorKind::Unavailable, "this daemon runs without banger-helper (--no-helper)")
                    .with_hint("VMs need the root helper: restart the daemon without --no-helper");
            let _ = call.reply.send(Err(e));
            return;
        }
        // Queued for the link: answered once the helper is (back) up, or the caller times out.
        if let Err(mpsc::error::SendError(call)) = self.calls.send(call) {
            let _ = call.reply.send(Err(Error::internal("the helper link has stopped")));
        }
    }
}

impl Handler<Describe> for HelperLink {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        let path = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        Some(match &*self.link.borrow() {
            Link::NotConfigured => "no helper configured (--no-helper)".to_string(),
            Link::Waiting { error } => format!("waiting for banger-helper at {path}: {error}"),
            Link::Connected { server, protocol } => {
                format!("connected to {server} at {path} (protocol {protocol})")
            }
        })
    }
}

crate::handle_control!(HelperLink);
