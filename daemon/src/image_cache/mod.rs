//! ImageCache: owns the blob cache and the image store. Takes `StartPull`, `ListImages`,
//! `InspectImage`, `RemoveImage`, `Prune`, `BaseDisk` (for a VM's disk), and
//! `Describe`/`Control` from the supervisor.
//!
//! One pull or import per image name at a time; a second is refused while the first runs. A
//! pull or import whose client goes away (its handle dropped) is stopped.
//!
//! Pulls run as futures in this actor's context. A prune is serialised against them here, with
//! no locks and no blocked mailbox: it waits until the pulls in flight finish, pulls that arrive
//! meanwhile are held in a queue until it is done, and prunes that arrive together share a run.

pub mod blobs;
pub mod cancel;
pub mod digest;
pub mod error;
pub mod extract;
pub mod flatten;
pub mod images;
pub mod locks;
pub mod pull;
pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use protocol::Error;
use protocol::image::{ImageInfo, PruneReport, PullEvent, PullRequest};
use slog::{Logger, info, warn};
use tokio::sync::{mpsc, oneshot};

use self::blobs::BlobStore;
use self::error::ImageError;
use self::extract::Limits;
use self::images::ImageStore;
use self::locks::KeyLocks;
use self::pull::PullCtx;
use crate::child::{ChildCtx, ChildGuard, Describe};

/// What a caller of `StartPull` reads: progress, then the result.
pub struct PullHandle {
    pub events: mpsc::UnboundedReceiver<PullEvent>,
    pub result: oneshot::Receiver<Result<ImageInfo, Error>>,
}

/// Pull an image; an existing one of the same name is replaced only with `replace`. Dropping
/// the [`PullHandle`] cancels the pull.
#[derive(Message)]
#[rtype(result = "PullHandle")]
pub struct StartPull {
    pub request: PullRequest,
    pub replace: bool,
}

/// Make an image from a flat rootfs tar read from `input` (a file or pipe the client passed).
/// Replacing and cancelling as for [`StartPull`].
#[derive(Message)]
#[rtype(result = "PullHandle")]
pub struct StartImport {
    pub name: String,
    pub file: String,
    pub size: Option<u64>,
    pub replace: bool,
    pub input: std::fs::File,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<ImageInfo>, Error>")]
pub struct ListImages;

#[derive(Message)]
#[rtype(result = "Result<ImageInfo, Error>")]
pub struct InspectImage(pub String);

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveImage {
    pub name: String,
}

/// The base of a VM's disk from image `image`: `bytes` if asked for, else the larger of
/// `default_bytes` and the image (see `ImageStore::base_disk`).
#[derive(Message)]
#[rtype(result = "Result<BaseDiskFor, Error>")]
pub struct BaseDisk {
    pub image: String,
    pub bytes: Option<u64>,
    pub default_bytes: u64,
}

pub use self::images::BaseDiskFor;

#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Result<PruneReport, Error>>")]
pub struct Prune {
    pub dry_run: bool,
}

struct HeldPull {
    request: PullRequest,
    replace: bool,
    name: String,
    events: mpsc::UnboundedSender<PullEvent>,
    result: oneshot::Sender<Result<ImageInfo, Error>>,
}

struct PruneBatch {
    dry_run: bool,
    waiters: Vec<oneshot::Sender<Result<PruneReport, Error>>>,
}

pub struct ImageCache {
    pulls: PullCtx,
    log: Logger,
    guard: ChildGuard,
    in_flight: usize,
    held: VecDeque<HeldPull>,
    /// Prunes in arrival order; the front one runs once no pull is in flight.
    prunes: VecDeque<PruneBatch>,
    pruning: bool,
    /// Image names a pull or an import is making, and which: one operation per name, so two
    /// cannot race to install it (the later one would silently win).
    busy: HashMap<String, &'static str>,
}

impl ImageCache {
    pub fn new(cx: ChildCtx) -> Self {
        let config = &cx.config;
        let pulls = PullCtx {
            blobs: BlobStore::new(&config.layout.cache_dir),
            images: Arc::new(ImageStore::new(&config.layout.state_dir, cx.log.clone())),
            locks: KeyLocks::default(),
            insecure: Arc::new(config.insecure_registries.clone()),
            limits: Limits { max_bytes: config.max_image_bytes, max_entries: config.max_image_entries },
            max_layer_bytes: config.max_layer_bytes,
            peers: cx.peers.clone(),
        };
        ImageCache {
            pulls,
            log: cx.log,
            guard: cx.guard,
            in_flight: 0,
            held: VecDeque::new(),
            prunes: VecDeque::new(),
            pruning: false,
            busy: HashMap::new(),
        }
    }

    /// Takes `name` for a pull or an import (`what`), or says which operation has it.
    fn reserve(&mut self, name: &str, what: &'static str) -> Result<(), Error> {
        if let Some(other) = self.busy.get(name) {
            return Err(ImageError::InProgress { name: name.into(), other, what }.into());
        }
        self.busy.insert(name.to_string(), what);
        Ok(())
    }

    fn start_pull(&mut self, held: HeldPull, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        let HeldPull { request, replace, name, events, result } = held;
        info!(self.log, "pull started"; "reference" => &request.reference, "name" => &name);
        let work = pull::pull(request, replace, self.pulls.clone(), events);
        ctx.spawn(unless_abandoned(work, result).into_actor(self).map(move |outcome, act, ctx| {
            act.in_flight -= 1;
            act.busy.remove(&name);
            act.report("pull", &name, outcome);
            act.next_prune(ctx);
        }));
    }

    fn report(&self, what: &str, name: &str, outcome: Option<Result<(), String>>) {
        match outcome {
            None => info!(self.log, "{what} cancelled: the client went away"; "name" => name),
            Some(Err(e)) => warn!(self.log, "{what} failed"; "name" => name, "error" => e),
            Some(Ok(())) => info!(self.log, "{what} done"; "name" => name),
        }
    }

    /// Starts the front prune when nothing is pulling; when no prune is left, releases the
    /// pulls that were held back.
    fn next_prune(&mut self, ctx: &mut Context<Self>) {
        if self.pruning || self.in_flight > 0 {
            return;
        }
        let Some(batch) = self.prunes.front() else {
            while let Some(held) = self.held.pop_front() {
                self.start_pull(held, ctx);
            }
            return;
        };
        self.pruning = true;
        let (blobs, dry_run) = (self.pulls.blobs.clone(), batch.dry_run);
        let work = async move { tokio::task::spawn_blocking(move || blobs.prune(dry_run)).await };
        ctx.spawn(work.into_actor(self).map(move |outcome, act, ctx| {
            act.pruning = false;
            let dir = act.pulls.blobs.dir().display().to_string();
            let report = match outcome {
                Ok(Ok(freed)) => {
                    Ok(PruneReport { dry_run, freed_bytes: freed.bytes, blobs: freed.blobs, dir })
                }
                Ok(Err(e)) => Err(Error::internal(format!("prune failed in {dir}: {e}"))),
                Err(e) => Err(Error::internal(format!("prune task failed: {e}"))),
            };
            if let Some(batch) = act.prunes.pop_front() {
                info!(act.log, "prune done"; "dry_run" => dry_run, "waiters" => batch.waiters.len());
                for w in batch.waiters {
                    let _ = w.send(report.clone());
                }
            }
            act.next_prune(ctx);
        }));
    }
}

impl Actor for ImageCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let images = self.pulls.images.clone();
        // Before any pull: nothing else may touch the store while a crash's leftovers go.
        let cleanup = async move { tokio::task::spawn_blocking(move || images.clean_leftovers()).await };
        ctx.wait(cleanup.into_actor(self).map(|outcome, act, ctx| match outcome {
            Ok(Ok(n)) => {
                if n > 0 {
                    info!(act.log, "removed leftovers of interrupted pulls"; "count" => n);
                }
                act.guard.started();
            }
            Ok(Err(e)) => {
                act.guard.exiting(format!("cannot prepare {}: {e}", act.pulls.images.dir().display()));
                ctx.stop();
            }
            Err(e) => {
                act.guard.exiting(format!("cleanup task failed: {e}"));
                ctx.stop();
            }
        }));
    }
}

/// Runs `work` and sends its outcome, unless whoever waits for it goes away first: then the
/// work is dropped, which stops it (see `pull::build`). Says how it ended, for the log.
async fn unless_abandoned(
    work: impl std::future::Future<Output = Result<ImageInfo, Error>>,
    mut result: oneshot::Sender<Result<ImageInfo, Error>>,
) -> Option<Result<(), String>> {
    tokio::select! {
        outcome = work => {
            let summary = outcome.as_ref().map(|_| ()).map_err(|e| e.message.clone());
            let _ = result.send(outcome);
            Some(summary)
        }
        () = result.closed() => None,
    }
}

/// A handle that answers `error` at once.
fn refused(error: Error) -> PullHandle {
    let (_, events) = mpsc::unbounded_channel();
    let (result, result_rx) = oneshot::channel();
    let _ = result.send(Err(error));
    PullHandle { events, result: result_rx }
}

impl Handler<StartPull> for ImageCache {
    type Result = MessageResult<StartPull>;

    fn handle(&mut self, msg: StartPull, ctx: &mut Context<Self>) -> Self::Result {
        let StartPull { request, replace } = msg;
        let name = match pull::target_name(&request).and_then(|n| self.reserve(&n, "pull").map(|()| n)) {
            Ok(name) => name,
            Err(e) => return MessageResult(refused(e)),
        };
        let (events, events_rx) = mpsc::unbounded_channel();
        let (result, result_rx) = oneshot::channel();
        let held = HeldPull { request, replace, name, events, result };
        if self.pruning || !self.prunes.is_empty() {
            let _ = held.events.send(PullEvent::WaitingForPrune);
            self.held.push_back(held);
        } else {
            self.start_pull(held, ctx);
        }
        MessageResult(PullHandle { events: events_rx, result: result_rx })
    }
}

impl Handler<StartImport> for ImageCache {
    type Result = MessageResult<StartImport>;

    /// Imports use no blobs, so they need not wait for prunes.
    fn handle(&mut self, msg: StartImport, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = images::validate_name(&msg.name).and_then(|()| self.reserve(&msg.name, "import")) {
            return MessageResult(refused(e));
        }
        let (events, events_rx) = mpsc::unbounded_channel();
        let (result, result_rx) = oneshot::channel();
        info!(self.log, "import started"; "name" => &msg.name, "file" => &msg.file);
        let name = msg.name.clone();
        let work =
            pull::import(msg.name, msg.file, msg.size, msg.replace, msg.input, self.pulls.clone(), events);
        ctx.spawn(unless_abandoned(work, result).into_actor(self).map(move |outcome, act, _| {
            act.busy.remove(&name);
            act.report("import", &name, outcome);
        }));
        MessageResult(PullHandle { events: events_rx, result: result_rx })
    }
}

impl Handler<Prune> for ImageCache {
    type Result = MessageResult<Prune>;

    fn handle(&mut self, msg: Prune, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        // Join the last queued prune of the same kind unless it is already running.
        let running_front = self.pruning && self.prunes.len() == 1;
        match self.prunes.back_mut() {
            Some(batch) if batch.dry_run == msg.dry_run && !running_front => batch.waiters.push(tx),
            _ => self.prunes.push_back(PruneBatch { dry_run: msg.dry_run, waiters: vec![tx] }),
        }
        self.next_prune(ctx);
        MessageResult(rx)
    }
}

/// Runs a small store operation on a blocking thread and answers with its result.
fn off_mailbox<T: Send + 'static>(
    images: Arc<ImageStore>,
    f: impl FnOnce(&ImageStore) -> Result<T, Error> + Send + 'static,
) -> ResponseFuture<Result<T, Error>> {
    Box::pin(crate::fsutil::blocking(move || f(&images)))
}

impl Handler<ListImages> for ImageCache {
    type Result = ResponseFuture<Result<Vec<ImageInfo>, Error>>;
    fn handle(&mut self, _: ListImages, _: &mut Context<Self>) -> Self::Result {
        off_mailbox(self.pulls.images.clone(), |s| s.list())
    }
}

impl Handler<InspectImage> for ImageCache {
    type Result = ResponseFuture<Result<ImageInfo, Error>>;
    fn handle(&mut self, InspectImage(name): InspectImage, _: &mut Context<Self>) -> Self::Result {
        off_mailbox(self.pulls.images.clone(), move |s| s.get(&name))
    }
}

impl Handler<RemoveImage> for ImageCache {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, msg: RemoveImage, _: &mut Context<Self>) -> Self::Result {
        let (images, locks) = (self.pulls.images.clone(), self.pulls.locks.clone());
        Box::pin(async move {
            images::validate_name(&msg.name)?;
            // Not while a pull is installing the same name.
            let _held = locks.lock(format!("image:{}", msg.name)).await;
            off_mailbox(images, move |s| s.remove(&msg.name)).await
        })
    }
}

impl Handler<BaseDisk> for ImageCache {
    type Result = ResponseFuture<Result<BaseDiskFor, Error>>;
    fn handle(&mut self, msg: BaseDisk, _: &mut Context<Self>) -> Self::Result {
        let (images, locks) = (self.pulls.images.clone(), self.pulls.locks.clone());
        Box::pin(async move {
            images::validate_name(&msg.image)?;
            // Not while the image is being replaced or removed, and one grown copy at a time.
            let _held = locks.lock(format!("image:{}", msg.image)).await;
            off_mailbox(images, move |s| s.base_disk(&msg.image, msg.bytes, msg.default_bytes)).await
        })
    }
}

impl Handler<Describe> for ImageCache {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        let prune = match (self.pruning, self.prunes.len()) {
            (true, _) => "prune running",
            (false, 0) => "no prune",
            (false, _) => "prune waiting for pulls",
        };
        let mut line = format!("{} pull(s) in flight, {} held, {prune}", self.in_flight, self.held.len());
        for note in self.pulls.images.recovered() {
            line.push_str("; ");
            line.push_str(&note);
        }
        Some(line)
    }
}

crate::handle_control!(ImageCache);
