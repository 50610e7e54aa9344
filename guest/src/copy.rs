//! `vm cp`: a tar stream in (unpacked under a directory) or out (a file or a tree), carried as
//! an exec's stdin or stdout so both get the exec's flow control. Owners, modes, symlinks and
//! mtimes are kept. Each answers `Started`, then `Exited(Code(0))` or `Failed { code: 1 }`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::exec::{ExitStatus, OutputStream};

use crate::exec::{self, Ctx, Io, Outcome, Shared, Started};
use crate::spawn::SpawnError;

fn worker(
    name: &str,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
    shared: &Arc<Shared>,
) -> Result<(), SpawnError> {
    let s = shared.clone();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(move || {
            s.finish(match f() {
                Ok(()) => Outcome::Exited(ExitStatus::Code(0)),
                Err(message) => Outcome::Failed(message),
            })
        })
        .map(drop)
        .map_err(|e| SpawnError { code: 1, message: format!("cannot start a thread: {e}") })
}

/// `AgentRequest::CopyIn`: the exec's stdin is a tar stream to unpack under `path`.
pub fn copy_in(ctx: &Ctx, id: u32, path: String) {
    exec::begin(ctx, id, true, |shared| {
        let (r, w) = exec::pipe()?;
        let dest = PathBuf::from(&path);
        worker("copy-in", move || unpack(tar_stream(File::from(r))?, &dest), shared)?;
        Ok(Started {
            pid: None,
            io: Io { outputs: vec![], stdin: Some(w), stdin_is_tty: false, socket: false },
            tty: None,
        })
    });
}

/// `AgentRequest::CopyOut`: `path` as a tar stream on the exec's stdout.
pub fn copy_out(ctx: &Ctx, id: u32, path: String) {
    exec::begin(ctx, id, false, |shared| {
        let (r, w) = exec::pipe()?;
        let src = PathBuf::from(&path);
        worker("copy-out", move || pack(&src, File::from(w)), shared)?;
        Ok(Started {
            pid: None,
            io: Io {
                outputs: vec![(r, OutputStream::Stdout)],
                stdin: None,
                stdin_is_tty: false,
                socket: false,
            },
            tty: None,
        })
    });
}

/// zstd's frame magic. A tar stream starts with an entry's name, never with these bytes.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The tar stream in `input`, decompressed when it starts as a zstd frame.
fn tar_stream(mut input: impl Read + 'static) -> Result<Box<dyn Read>, String> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match input.read(head.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the copy's stream: {e}")),
        }
    }
    let stream = std::io::Cursor::new(head.get(..n).unwrap_or_default().to_vec()).chain(input);
    if n == head.len() && head == ZSTD_MAGIC {
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(stream).map_err(|e| format!("a bad zstd stream: {e}"))?;
        return Ok(Box::new(decoder));
    }
    Ok(Box::new(stream))
}

fn unpack(input: impl Read, dest: &Path) -> Result<(), String> {
    if !dest.is_absolute() {
        return Err(format!("{}: the destination must be an absolute path", dest.display()));
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(|e| format!("not a tar stream: {e}"))? {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let kind = entry.header().entry_type();
        let is_dir = kind.is_dir();
        let mtime = entry.header().mtime().ok();
        let mode = entry.header().mode().ok();
        let name = entry.path().map(|p| p.into_owned()).map_err(|e| format!("bad tar entry name: {e}"))?;
        let unpacked = entry.unpack_in(dest).map_err(|e| format!("cannot unpack {}: {e}", name.display()))?;
        // Changing the owner clears set-id bits: the mode goes on again, last.
        if let (true, Some(mode), false) = (unpacked, mode, kind.is_symlink() || kind.is_hard_link()) {
            let mode = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777);
            let _ = nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &dest.join(&name),
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            );
        }
        if let (true, Some(mtime)) = (is_dir, mtime) {
            dirs.push((dest.join(&name), mtime));
        }
    }
    // A directory's mtime changes as its entries are created: set them last, deepest first.
    for (dir, mtime) in dirs.into_iter().rev() {
        let t = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

fn pack(src: &Path, out: impl Write) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let name = src.file_name().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let result = if meta.is_dir() {
        builder.append_dir_all(&name, src)
    } else {
        builder.append_path_with_name(src, &name)
    };
    result
        .and_then(|()| builder.into_inner().map(drop))
        .map_err(|e| format!("cannot read {}: {e}", src.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn a_tree_survives_pack_and_unpack() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"hello").unwrap();
        std::fs::set_permissions(tree.join("sub/f"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("sub/f", tree.join("link")).unwrap();
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
        for p in [tree.join("sub/f"), tree.join("sub")] {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let mut tar = Vec::new();
        pack(&tree, &mut tar).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&tar[..], dst.path()).unwrap();
        let out = dst.path().join("tree");
        // The same stream, zstd-compressed, unpacks the same.
        let zst = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(zst.get(..4), Some(&ZSTD_MAGIC[..]));
        let dst2 = tempfile::tempdir().unwrap();
        unpack(tar_stream(std::io::Cursor::new(zst)).unwrap(), dst2.path()).unwrap();
        assert_eq!(std::fs::read(dst2.path().join("tree/sub/f")).unwrap(), b"hello");
        let mut short = tar_stream(std::io::Cursor::new(b"ab".to_vec())).unwrap();
        let mut read = vec![];
        short.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"ab", "a stream shorter than the magic is passed on whole");
        assert_eq!(std::fs::read(out.join("sub/f")).unwrap(), b"hello");
        let m = std::fs::metadata(out.join("sub/f")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o751);
        assert_eq!(m.mtime(), 1_000_000_000);
        assert_eq!(std::fs::metadata(out.join("sub")).unwrap().mtime(), 1_000_000_000);
        assert_eq!(std::fs::read_link(out.join("link")).unwrap(), Path::new("sub/f"));
    }

    #[test]
    fn garbage_is_a_failure_not_a_crash() {
        let dst = tempfile::tempdir().unwrap();
        assert!(unpack(&[7u8; 1024][..], dst.path()).is_err());
        assert!(pack(Path::new("/no/such/path"), Vec::new()).is_err());
    }
}
