//! The serial console: the VMM writes into a pipe; a task on the daemon's runtime copies it to
//! `console.log`, keeping the file under a cap by dropping its older half. A task, not a
//! thread: a thread per VM cost ~20 KiB of RSS each, and an idle task holds no buffer.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// The most a console log holds; past it, the older half is dropped.
pub const CAP: u64 = 1 << 20;

/// Copies everything from `pipe` into `log` until the VMM closes its end. The file work runs on
/// the blocking pool (tokio's `fs`), never on the caller's thread.
pub fn capture(pipe: pipe::Receiver, log: PathBuf) {
    tokio::spawn(async move {
        let Ok(mut out) = tokio::fs::OpenOptions::new().create(true).append(true).open(&log).await else {
            return;
        };
        let mut len = out.metadata().await.map(|m| m.len()).unwrap_or(0);
        loop {
            if pipe.readable().await.is_err() {
                return;
            }
            let mut chunk = vec![0u8; 8192];
            let n = match pipe.try_read(&mut chunk) {
                Ok(0) => return, // the VMM exited
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            if out.write_all(&chunk[..n]).await.is_err() || out.flush().await.is_err() {
                return;
            }
            len += n as u64;
            if len > CAP {
                let path = log.clone();
                if let Ok(Ok(f)) = tokio::task::spawn_blocking(move || trim(&path)).await {
                    out = tokio::fs::File::from_std(f);
                    len = CAP / 2;
                }
            }
        }
    });
}

/// Keeps the newer half of the log; returns it reopened for appending.
fn trim(log: &Path) -> std::io::Result<File> {
    let mut f = File::open(log)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len - CAP / 2))?;
    let mut tail = Vec::with_capacity((CAP / 2) as usize);
    f.read_to_end(&mut tail)?;
    crate::fsutil::write_atomic(log, &tail)?;
    OpenOptions::new().append(true).open(log)
}

/// The last `lines` lines of the log, for failure reasons.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capture_keeps_the_log_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (writer, reader) = pipe::pipe().unwrap();
        capture(reader, log.clone());
        let mut writer = std::fs::File::from(writer.into_blocking_fd().unwrap());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            for i in 0..3000u32 {
                writeln!(writer, "line {i} {}", "x".repeat(1000)).unwrap();
            }
            writeln!(writer, "the end").unwrap();
        })
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !tail(&log, 1).contains("the end") {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(std::fs::metadata(&log).unwrap().len() <= CAP + 8192);
        assert!(tail(&log, 2).starts_with("line 2999"));
    }
}
