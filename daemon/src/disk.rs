//! Disks: a copy-on-write clone of a file (FICLONE where the filesystem can, else a sparse
//! copy), an ext4 image grown to a size (file and filesystem), and the guest agent written
//! into one without mounting it.

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

/// Where the agent lives in every VM's disk (the kernel command line's `init=` without an
/// initrd).
pub const AGENT_IN_DISK: &str = "/.banger/agent";

/// Writes the host file `agent` into the ext4 image `disk` as `/.banger/agent`, mode 0755,
/// owned by root, with debugfs (no mount, no root needed), and checks the result. Whatever the
/// image had at `/.banger` (a file, a link) is replaced by a directory.
pub fn install_agent(disk: &Path, agent: &Path) -> Result<(), String> {
    let debugfs = crate::image_cache::flatten::find_program("debugfs")
        .ok_or("debugfs is not installed (e2fsprogs): banger writes the guest agent into disks with it")?;
    let (Some(dir), Some(file)) = (agent.parent(), agent.file_name().and_then(|f| f.to_str())) else {
        return Err(format!("{} is not a file path", agent.display()));
    };
    if file.contains(char::is_whitespace) || file.contains('"') {
        return Err(format!("{} has a name debugfs cannot take", agent.display()));
    }
    let size = std::fs::metadata(agent).map_err(|e| format!("cannot read {}: {e}", agent.display()))?.len();
    // `rm /.banger` first: it removes a link or file there (never a directory), so the paths
    // below cannot lead elsewhere in the image.
    let script = format!(
        "rm /.banger\nrm {AGENT_IN_DISK}\nmkdir /.banger\n\
         set_inode_field /.banger mode 040755\nset_inode_field /.banger uid 0\nset_inode_field /.banger gid 0\n\
         write {file} {AGENT_IN_DISK}\nset_inode_field {AGENT_IN_DISK} mode 0100755\n\
         set_inode_field {AGENT_IN_DISK} uid 0\nset_inode_field {AGENT_IN_DISK} gid 0\n"
    );
    let mut child = crate::subprocess::dies_with_daemon(&debugfs)
        .args(["-w", "-f", "-"])
        .arg(disk)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(script.as_bytes()).map_err(|e| format!("cannot talk to debugfs: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("cannot run debugfs: {e}"))?;
    if !out.status.success() {
        return Err(format!("debugfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    // debugfs goes on past a failed command: what counts is what the image holds now.
    let stat = |path: &str| -> Result<String, String> {
        let out = crate::subprocess::dies_with_daemon(&debugfs)
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(disk)
            .output()
            .map_err(|e| format!("cannot run debugfs: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (dir_stat, agent_stat) = (stat("/.banger")?, stat(AGENT_IN_DISK)?);
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>().join(" ");
    let (dir_stat, agent_stat) = (words(&dir_stat), words(&agent_stat));
    let ok = dir_stat.contains("Type: directory")
        && agent_stat.contains("Type: regular Mode: 0755")
        && agent_stat.contains("User: 0 Group: 0")
        && agent_stat.contains(&format!("Size: {size} "));
    if !ok {
        return Err(format!(
            "the guest agent did not land in the disk as {AGENT_IN_DISK} (full, or not ext4?); debugfs said: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
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
    fn the_agent_lands_in_the_disk_as_root_0755_even_over_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::os::unix::fs::symlink("/bin", root.join(".banger")).unwrap();
        let disk = dir.path().join("disk.ext4");
        File::create(&disk).unwrap().set_len(32 << 20).unwrap();
        let mkfs = std::process::Command::new("mkfs.ext4").args(["-q", "-d"]).arg(&root).arg(&disk).status();
        if !mkfs.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfs.ext4 (e2fsprogs) is not installed");
            return;
        }
        let agent = dir.path().join("agent");
        std::fs::write(&agent, vec![0x41u8; 100_001]).unwrap();
        install_agent(&disk, &agent).unwrap();
        install_agent(&disk, &agent).unwrap(); // again: replaced, not refused
        let out = std::process::Command::new("debugfs")
            .args(["-R", "cat /.banger/agent"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(out.stdout, vec![0x41u8; 100_001]);
        let out =
            std::process::Command::new("debugfs").args(["-R", "ls -l /bin"]).arg(&disk).output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("agent"), "not written through the link");
        let text = std::fs::write(dir.path().join("not-ext4"), b"plain file");
        text.unwrap();
        assert!(install_agent(&dir.path().join("not-ext4"), &agent).is_err());
    }

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
