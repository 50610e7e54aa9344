//! An actor's state file, written off its mailbox and in order. `save` records the newest
//! contents at once; a writer task, started when there is something to write and gone when
//! there is not, writes them (`write_atomic` or `replace_atomic`) on the blocking pool, skipping any that a newer
//! one replaced before its turn. `settled` resolves once everything saved so far is on disk. A
//! file costs no task while nothing is pending (an idle VM holds a handle only).

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use protocol::Error;
use tokio::sync::watch;

use crate::fsutil::{replace_atomic, write_atomic};

/// The last version written, and how its write went.
type Written = (u64, Result<(), String>);

#[derive(Default)]
struct Pending {
    /// The newest contents not yet being written, with their version.
    next: Option<(u64, Vec<u8>)>,
    /// Whether a writer task runs (it takes `next` until there is none).
    writing: bool,
}

pub struct Persisted {
    path: Arc<PathBuf>,
    /// `write_atomic` (fsynced) or `replace_atomic` (not).
    durable: bool,
    pending: Arc<Mutex<Pending>>,
    tell: Arc<watch::Sender<Written>>,
    written: watch::Receiver<Written>,
    queued: u64,
}

impl Persisted {
    /// A file whose every version must survive a power cut (`write_atomic`).
    pub fn durable(path: PathBuf) -> Self {
        Self::new(path, true)
    }

    /// A file replaced atomically but not fsynced (`replace_atomic`): state a power cut makes
    /// moot, written often.
    pub fn atomic(path: PathBuf) -> Self {
        Self::new(path, false)
    }

    fn new(path: PathBuf, durable: bool) -> Self {
        let (tell, written) = watch::channel((0, Ok(())));
        let (pending, tell) = (Arc::default(), Arc::new(tell));
        Persisted { path: Arc::new(path), durable, pending, tell, written, queued: 0 }
    }

    /// Records `bytes` as the file's new contents; `settled` tells when they are on disk.
    /// Starts a writer on the current tokio runtime if none runs.
    pub fn save(&mut self, bytes: Vec<u8>) {
        self.queued += 1;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.next = Some((self.queued, bytes));
        if !pending.writing {
            pending.writing = true;
            tokio::spawn(write(self.path.clone(), self.durable, self.pending.clone(), self.tell.clone()));
        }
    }

    /// Resolves once everything saved so far is on disk (or failed to get there).
    pub fn settled(&self) -> impl Future<Output = Result<(), Error>> + Send + use<> {
        let (version, mut written) = (self.queued, self.written.clone());
        async move {
            let outcome = written
                .wait_for(|(v, _)| *v >= version)
                .await
                .map(|seen| seen.1.clone())
                .map_err(|_| Error::internal("the state writer stopped"))?;
            outcome.map_err(Error::internal)
        }
    }
}

/// Writes the newest pending contents until none are left.
async fn write(
    path: Arc<PathBuf>,
    durable: bool,
    pending: Arc<Mutex<Pending>>,
    tell: Arc<watch::Sender<Written>>,
) {
    loop {
        let next = {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            let next = pending.next.take();
            pending.writing = next.is_some();
            next
        };
        let Some((version, bytes)) = next else { return };
        let file = path.clone();
        let save = if durable { write_atomic } else { replace_atomic };
        let done = tokio::task::spawn_blocking(move || save(&file, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("cannot save {}: {e}", path.display())));
        tell.send_modify(|written| *written = (version, done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_land_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = Persisted::atomic(path.clone());
        let first = {
            file.save(b"0".to_vec());
            file.settled()
        };
        for i in 1..50 {
            file.save(format!("{i}").into_bytes());
        }
        first.await.unwrap();
        file.settled().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "49", "the last save wins");
        // The writer ended with nothing left to write; the next save starts another.
        file.save(b"50".to_vec());
        file.settled().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "50");

        let mut lost = Persisted::durable(dir.path().join("no/such/dir/state.json"));
        lost.save(b"x".to_vec());
        let err = lost.settled().await.unwrap_err();
        assert!(err.message.contains("cannot save"), "{}", err.message);
    }
}
