//! `vm logs -f`: while a VMM runs, one task per VM watches its console log with inotify and
//! sends what the VMM appends to every follower as it lands, and keeps the log under its cap.
//! The VmActor holds the task's [`Watch`]; dropping it (the VMM exited) makes the task send
//! the last output and end, which ends every follower's stream.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use protocol::{Error, ErrorKind};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::console;

/// One piece of console output, or why the stream stopped early.
pub type Chunk = Result<Vec<u8>, Error>;

/// Chunks a follower may have queued before it counts as fallen behind (at most 32 KiB each).
const FOLLOWER_QUEUE: usize = 256;
const CHUNK: usize = 32 << 10;

/// The handle of a VM's console watch; the task ends when it is dropped.
pub struct Watch {
    followers: mpsc::UnboundedSender<mpsc::Sender<Chunk>>,
}

impl Watch {
    /// Starts watching `log` (created by now: the VMM appends to it).
    pub fn start(log: PathBuf) -> Watch {
        let (followers, joins) = mpsc::unbounded_channel();
        tokio::spawn(run(log, joins));
        Watch { followers }
    }

    /// A stream of the whole log so far, then of what the VMM appends until it exits.
    pub fn follow(&self) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        // The task gone means the VMM just exited: the stream then ends at once, and the
        // caller reads the file whole instead.
        let _ = self.followers.send(tx);
        rx
    }
}

/// The whole log as one stream (a VM that does not run, or `vm logs` without `-f`).
pub fn read_once(log: PathBuf) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
    tokio::spawn(async move {
        let mut followers = vec![tx];
        if let Err(e) = send_range(&log, 0, None, &mut followers).await {
            for f in &followers {
                let _ = f.send(Err(e.clone())).await;
            }
        }
    });
    rx
}

async fn run(log: PathBuf, mut joins: mpsc::UnboundedReceiver<mpsc::Sender<Chunk>>) {
    // Without inotify (out of watches, say) the log is still read every 100 ms.
    let events = inotify(&log).ok();
    let mut followers: Vec<mpsc::Sender<Chunk>> = vec![];
    let mut sent = len(&log).await;
    let mut trim = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            join = joins.recv() => match join {
                Some(follower) => {
                    sent = pump(&log, sent, &mut followers).await;
                    let mut one = vec![follower];
                    let _ = send_range(&log, 0, Some(sent), &mut one).await;
                    followers.extend(one);
                }
                None => break,
            },
            () = changed(events.as_ref()) => sent = pump(&log, sent, &mut followers).await,
            _ = trim.tick() => {
                sent = pump(&log, sent, &mut followers).await;
                let path = log.clone();
                let trimmed = tokio::task::spawn_blocking(move || console::trim(&path)).await;
                if matches!(trimmed, Ok(Ok(true))) {
                    sent = len(&log).await;
                }
            }
        }
    }
    // The VMM exited: what it wrote last goes out before the streams end.
    pump(&log, sent, &mut followers).await;
}

fn inotify(log: &Path) -> std::io::Result<AsyncFd<OwnedFd>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(log, AddWatchFlags::IN_MODIFY)?;
    // SAFETY: the AsyncFd takes the OwnedFd, which stays open as long as it does.
    unsafe { AsyncFd::register(OwnedFd::from(ino)) }.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Resolves when the log was written to (its inotify events drained), or after 100 ms without
/// inotify.
async fn changed(events: Option<&AsyncFd<OwnedFd>>) {
    let Some(fd) = events else {
        return tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 4096];
        match nix::unistd::read(fd.get_ref(), &mut buf) {
            Ok(_) => return,
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            Err(_) => return std::future::pending().await,
        }
    }
}

async fn len(log: &Path) -> u64 {
    tokio::fs::metadata(log).await.map(|m| m.len()).unwrap_or(0)
}

/// Sends what was appended past `sent` to every follower; returns the new end.
async fn pump(log: &Path, sent: u64, followers: &mut Vec<mpsc::Sender<Chunk>>) -> u64 {
    let end = len(log).await;
    // Shorter than what was sent: trimmed by someone else; go on from its new end.
    if end <= sent {
        return end;
    }
    match send_range(log, sent, Some(end), followers).await {
        Ok(()) => end,
        Err(_) => sent,
    }
}

/// Sends bytes `from..to` (to the end with `None`) of the log to the followers, in chunks.
/// A follower whose queue is full is told it fell behind and dropped: the VMM is never held up.
async fn send_range(
    log: &Path,
    from: u64,
    to: Option<u64>,
    followers: &mut Vec<mpsc::Sender<Chunk>>,
) -> Result<(), Error> {
    let unreadable = |e: std::io::Error| Error::internal(format!("cannot read {}: {e}", log.display()));
    let mut file = match tokio::fs::File::open(log).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unreadable(e)),
    };
    file.seek(std::io::SeekFrom::Start(from)).await.map_err(unreadable)?;
    let mut left = to.map(|to| to - from);
    let mut buf = vec![0u8; CHUNK];
    while left != Some(0) && !followers.is_empty() {
        let want = left.map_or(CHUNK, |l| l.min(CHUNK as u64) as usize);
        let n = file.read(&mut buf[..want]).await.map_err(unreadable)?;
        if n == 0 {
            break;
        }
        left = left.map(|l| l - n as u64);
        followers.retain(|f| {
            if f.capacity() > 1 {
                return f.try_send(Ok(buf[..n].to_vec())).is_ok();
            }
            let behind =
                Error::new(ErrorKind::Unavailable, "stopped following: this client fell behind the console")
                    .with_hint("read it again with `banger vm logs NAME`");
            let _ = f.try_send(Err(behind));
            false
        });
    }
    Ok(())
}
