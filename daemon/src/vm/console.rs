//! The serial console: the VMM appends straight to `console.log` (the daemon opens it and passes
//! the descriptor), so the console does not depend on the daemon being alive. With a pipe, a
//! daemon that died left the VMM writing into a pipe without a reader, and Firecracker
//! deadlocks on that error before its API is up; a re-adopted VM's console was lost. The daemon
//! keeps the file near its cap by dropping the older part in place (`trim`), checked every
//! second while the VM runs and once when it stops.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Past this size the console log is trimmed to about half of it.
pub const CAP: u64 = 1 << 20;

/// The console log opened (created) for the VMM to append to.
pub fn open_for_vmm(log: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(log)
}

/// Past `CAP`, keeps the newest `CAP / 2` bytes (or up to a block more), in place, since the
/// VMM goes on appending to the same file. `FALLOC_FL_COLLAPSE_RANGE` where the filesystem has
/// it (exact); else the newer half is copied to the front and the file cut, and what the VMM
/// appends during those two steps can be lost. Returns whether it trimmed.
pub fn trim(log: &Path) -> std::io::Result<bool> {
    let mut file = OpenOptions::new().read(true).write(true).open(log)?;
    let meta = file.metadata()?;
    let len = meta.len();
    if len <= CAP {
        return Ok(false);
    }
    let block = meta.blksize().max(1);
    let cut = (len - CAP / 2) / block * block;
    // SAFETY: fallocate on an open descriptor with integer arguments; the range lies inside the
    // file and is block-aligned, as COLLAPSE_RANGE requires.
    let collapsed =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, cut as i64) } == 0;
    if !collapsed {
        keep_newer_half(&mut file, len)?;
    }
    Ok(true)
}

/// Where a filesystem cannot collapse a range: the newest `CAP / 2` bytes copied to the front,
/// then the file cut after them.
fn keep_newer_half(file: &mut File, len: u64) -> std::io::Result<()> {
    let mut newer = Vec::with_capacity((CAP / 2) as usize);
    file.seek(SeekFrom::Start(len - CAP / 2))?;
    file.take(CAP / 2).read_to_end(&mut newer)?;
    file.write_all_at(&newer, 0)?;
    file.set_len(newer.len() as u64)
}

/// The last `lines` lines of the log, for failure reasons.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn trim_keeps_the_newer_half_and_the_vmm_goes_on_appending() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut vmm = open_for_vmm(&log).unwrap();
        for i in 0..3000u32 {
            writeln!(vmm, "line {i} {}", "x".repeat(1000)).unwrap();
        }
        assert!(trim(&log).unwrap());
        let len = std::fs::metadata(&log).unwrap().len();
        assert!((CAP / 2 - 4096..=CAP / 2 + 4096).contains(&len), "{len}");
        assert!(tail(&log, 1).starts_with("line 2999"));
        writeln!(vmm, "after the trim").unwrap();
        assert_eq!(tail(&log, 2).lines().next().map(|l| &l[..9]), Some("line 2999"));
        assert_eq!(tail(&log, 1), "after the trim", "appended at the new end, no gap");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), len + 15);
        assert!(!trim(&log).unwrap(), "under the cap: left alone");
    }

    #[test]
    fn without_collapse_the_newer_half_is_copied_to_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut vmm = open_for_vmm(&log).unwrap();
        for i in 0..3000u32 {
            writeln!(vmm, "line {i} {}", "x".repeat(1000)).unwrap();
        }
        let len = std::fs::metadata(&log).unwrap().len();
        let mut file = OpenOptions::new().read(true).write(true).open(&log).unwrap();
        keep_newer_half(&mut file, len).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), CAP / 2);
        assert!(tail(&log, 1).starts_with("line 2999"));
        writeln!(vmm, "after the trim").unwrap();
        assert_eq!(tail(&log, 1), "after the trim", "appended at the new end");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), CAP / 2 + 15);
    }
}
