//! The serial console: the VMM writes into a pipe; a blocking thread copies it to
//! `console.log`, keeping the file under a cap by dropping its older half.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The most a console log holds; past it, the older half is dropped.
pub const CAP: u64 = 1 << 20;

/// Copies everything from `pipe` into `log` until the VMM closes its end.
pub fn capture(mut pipe: impl Read + Send + 'static, log: PathBuf) {
    std::thread::spawn(move || {
        let Ok(mut out) = OpenOptions::new().create(true).append(true).open(&log) else { return };
        let mut buf = [0u8; 8192];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if out.write_all(&buf[..n]).is_err() {
                return;
            }
            if out.metadata().is_ok_and(|m| m.len() > CAP)
                && let Ok(f) = trim(&log)
            {
                out = f;
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

    #[test]
    fn capture_keeps_the_log_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (reader, mut writer) = std::io::pipe().unwrap();
        capture(reader, log.clone());
        for i in 0..3000u32 {
            writeln!(writer, "line {i} {}", "x".repeat(1000)).unwrap();
        }
        writeln!(writer, "the end").unwrap();
        drop(writer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !tail(&log, 1).contains("the end") {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::fs::metadata(&log).unwrap().len() <= CAP + 8192);
        assert!(tail(&log, 2).starts_with("line 2999"));
    }
}
