//! Disks: a copy-on-write clone of a file (FICLONE where the filesystem can, else a sparse
//! copy), and an ext4 image grown to a size (file and filesystem).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Clones `src` to a new file `dst`, synced.
pub fn clone_file(src: &File, dst: &Path) -> Result<(), String> {
    let mut output = File::create(dst).map_err(|e| format!("cannot create {}: {e}", dst.display()))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let cloned = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if !cloned {
        sparse_copy(src, &mut output).map_err(|e| format!("cannot copy to {}: {e}", dst.display()))?;
    }
    output.sync_all().map_err(|e| format!("cannot sync {}: {e}", dst.display()))
}

/// Grows the ext4 image at `path` to `size` bytes, file and filesystem (never shrinks).
pub fn grow(path: &Path, size: u64) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if file.metadata().map_err(|e| e.to_string())?.len() >= size {
        return Ok(());
    }
    file.set_len(size).map_err(|e| format!("cannot grow {}: {e}", path.display()))?;
    drop(file);
    let resize2fs = crate::image_cache::flatten::find_program("resize2fs")
        .ok_or("resize2fs is not installed (e2fsprogs)")?;
    // resize2fs syncs what it wrote before it exits.
    let out = crate::subprocess::dies_with_daemon(resize2fs)
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run resize2fs: {e}"))?;
    if !out.status.success() {
        return Err(format!("resize2fs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Copies only the data extents (SEEK_DATA/SEEK_HOLE, copied in the kernel with
/// copy_file_range), so the copy is as sparse as the original and a mostly empty filesystem
/// image costs only its data.
fn sparse_copy(input: &File, output: &mut File) -> std::io::Result<()> {
    let len = input.metadata()?.len();
    let (src, dst) = (input.as_raw_fd(), output.as_raw_fd());
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on an open descriptor with plain integer arguments.
        let data = unsafe { libc::lseek(src, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src, data, libc::SEEK_HOLE) };
        let (mut from, mut to) = (data, data);
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: both descriptors are open; the offsets are ours and advance as it copies.
            let n = unsafe { libc::copy_file_range(src, &mut from, dst, &mut to, left, 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
        }
        pos = hole;
    }
    output.set_len(len)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn a_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.write_all(b"head").unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::End(-4)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        clone_file(&File::open(&src).unwrap(), &dst).unwrap();
        let data = std::fs::read(&dst).unwrap();
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[data.len() - 4..], b"tail");
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20, "the hole stayed a hole");
    }
}
