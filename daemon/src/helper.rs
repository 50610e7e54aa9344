//! Helper: the daemon's link to the root `banger-helper`. Keeps one connection open, pings it,
//! and reconnects with backoff whenever it goes away, so a helper restart never needs a daemon
//! restart. The link runs as a future in this actor's context; its state is published on a
//! watch channel that `Describe` reads. Takes `Describe` and `Control` from the supervisor.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use protocol::channel::{Client, Helper};
use protocol::helper::{HelperRequest, HelperResponse};
use slog::{Logger, info, warn};
use tokio::sync::watch;

use crate::child::{ChildCtx, ChildGuard, Describe};

const PING_EVERY: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Link {
    NotConfigured,
    Waiting { error: String },
    Connected { server: String, protocol: u32 },
}

pub struct HelperLink {
    path: Option<PathBuf>,
    log: Logger,
    guard: ChildGuard,
    link: watch::Receiver<Link>,
    publish: Option<watch::Sender<Link>>,
}

impl HelperLink {
    pub fn new(cx: ChildCtx) -> Self {
        let path = cx.config.helper_socket.clone();
        let first =
            if path.is_some() { Link::Waiting { error: "connecting".into() } } else { Link::NotConfigured };
        let (publish, link) = watch::channel(first);
        HelperLink { path, log: cx.log, guard: cx.guard, link, publish: Some(publish) }
    }
}

async fn run_link(path: PathBuf, publish: watch::Sender<Link>, log: Logger) {
    let mut retry = RETRY_MIN;
    loop {
        match Client::<Helper>::connect(&path, "bangerd").await {
            Ok(mut client) => {
                retry = RETRY_MIN;
                info!(log, "connected to the helper"; "helper" => &client.server.software);
                publish.send_replace(Link::Connected {
                    server: client.server.software.clone(),
                    protocol: client.version,
                });
                let error = loop {
                    tokio::time::sleep(PING_EVERY).await;
                    match client.call(&HelperRequest::Ping).await {
                        Ok(HelperResponse::Pong) => {}
                        Ok(other) => break format!("unexpected reply to ping: {other:?}"),
                        Err(e) => break e.to_string(),
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

impl Actor for HelperLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let (Some(path), Some(publish)) = (self.path.clone(), self.publish.take()) {
            ctx.spawn(run_link(path, publish, self.log.clone()).into_actor(self));
        }
        self.guard.started();
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
