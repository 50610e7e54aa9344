//! An actor's state file, written off its mailbox and in order. `save` queues the newest
//! contents at once; one task per file writes them with `write_atomic` on the blocking pool,
//! skipping any that a newer one replaced before its turn; `settled` resolves once everything
//! queued so far is on disk. The task ends after the last queued write once the handle is
//! dropped.

use std::future::Future;
use std::path::PathBuf;

use protocol::Error;
use tokio::sync::{mpsc, watch};

use crate::fsutil::write_atomic;

pub struct Persisted {
    queue: mpsc::UnboundedSender<(u64, Vec<u8>)>,
    /// The last version written, and how its write went.
    written: watch::Receiver<(u64, Result<(), String>)>,
    queued: u64,
}

impl Persisted {
    /// Starts the writer of `path` (on the current tokio runtime).
    pub fn new(path: PathBuf) -> Self {
        let (queue, mut next) = mpsc::unbounded_channel::<(u64, Vec<u8>)>();
        let (tell, written) = watch::channel((0, Ok(())));
        tokio::spawn(async move {
            while let Some(mut latest) = next.recv().await {
                while let Ok(newer) = next.try_recv() {
                    latest = newer;
                }
                let (version, bytes) = latest;
                let file = path.clone();
                let done = tokio::task::spawn_blocking(move || write_atomic(&file, &bytes))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("cannot save {}: {e}", path.display())));
                let _ = tell.send((version, done));
            }
        });
        Persisted { queue, written, queued: 0 }
    }

    /// Queues `bytes` as the file's new contents; `settled` tells when they are on disk.
    pub fn save(&mut self, bytes: Vec<u8>) {
        self.queued += 1;
        let _ = self.queue.send((self.queued, bytes));
    }

    /// Resolves once everything queued so far is on disk (or failed to get there).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_land_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = Persisted::new(path.clone());
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

        let mut lost = Persisted::new(dir.path().join("no/such/dir/state.json"));
        lost.save(b"x".to_vec());
        let err = lost.settled().await.unwrap_err();
        assert!(err.message.contains("cannot save"), "{}", err.message);
    }
}
