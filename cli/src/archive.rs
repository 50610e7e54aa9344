//! Tar streams for `vm cp`: packing a local file or tree as it is (modes, numeric owners,
//! mtimes, symlinks as symlinks), and unpacking one that came from a guest, which is not
//! trusted: nothing lands outside the destination, whatever names, links or modes it holds.

use std::io::{Read, Write};
use std::path::{Component, Path};

use tar::{EntryType, HeaderMode};

/// Writes `src` into a tar stream on `out`, named by its last component (`dir/.` packs the
/// directory's contents instead). Symlinks stay symlinks, the top one included.
pub fn pack<W: Write>(src: &Path, out: W) -> std::io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    let contents_only = src.as_os_str().as_encoded_bytes().ends_with(b"/.");
    let meta = std::fs::symlink_metadata(src)?;
    if contents_only || (meta.is_dir() && src.file_name().is_none()) {
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!("{} is not a directory", src.display())));
        }
        builder.append_dir_all(".", src)?;
    } else {
        let name = src.file_name().ok_or_else(|| {
            std::io::Error::other(format!(
                "{} names no file; name the file or directory to copy",
                src.display()
            ))
        })?;
        if meta.is_dir() {
            builder.append_dir_all(name, src)?;
        } else {
            builder.append_path_with_name(src, name)?;
        }
    }
    builder.into_inner()
}

/// Why an unpack stopped.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the VM sent an unsafe entry {0:?} (absolute, or with ..); nothing was written for it")]
    Unsafe(String),
    #[error("cannot write {path}: {why}")]
    Write { path: String, why: String },
    #[error("the VM sent a bad tar stream: {0}")]
    Stream(std::io::Error),
}

/// What an unpack did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    /// Device nodes the guest sent; never made on the host.
    pub skipped_devices: Vec<String>,
}

/// An error with its causes: the tar crate's own message names the file but keeps the
/// reason (a full disk, a bad field) in its source.
fn describe(e: &std::io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A relative path with no `..`, root or prefix.
fn is_safe(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Unpacks a tar stream from a guest under `dest` (created if missing). Refuses absolute names
/// and `..`, never writes through a symlink out of `dest` (`Entry::unpack_in` checks every
/// parent), drops setuid, setgid and sticky bits, keeps owners only when running as root and
/// makes no device nodes.
pub fn unpack_untrusted<R: Read>(input: R, dest: &Path) -> Result<Unpacked, UnpackError> {
    let shown = |p: &Path| p.display().to_string();
    std::fs::create_dir_all(dest).map_err(|e| UnpackError::Write { path: shown(dest), why: describe(&e) })?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(nix::unistd::Uid::effective().is_root());
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(UnpackError::Stream)? {
        let mut entry = entry.map_err(UnpackError::Stream)?;
        let path = entry.path().map_err(UnpackError::Stream)?.into_owned();
        let name = path.to_string_lossy().into_owned();
        if !is_safe(&path) {
            return Err(UnpackError::Unsafe(name));
        }
        let kind = entry.header().entry_type();
        if kind == EntryType::Link {
            let target = entry.link_name().map_err(UnpackError::Stream)?;
            if !target.as_deref().is_some_and(is_safe) {
                return Err(UnpackError::Unsafe(format!(
                    "{name} (a hard link to {})",
                    target.map(|t| t.display().to_string()).unwrap_or_default()
                )));
            }
        }
        if matches!(kind, EntryType::Block | EntryType::Char) {
            done.skipped_devices.push(name);
            continue;
        }
        match entry.unpack_in(dest) {
            Ok(true) => done.entries += 1,
            // The tar crate's own refusal of a path it finds unsafe.
            Ok(false) => return Err(UnpackError::Unsafe(name)),
            // Its refusal to write through a symlink that leads out of `dest`.
            Err(e) if describe(&e).contains("outside of destination") => {
                return Err(UnpackError::Unsafe(format!(
                    "{name} (through a symlink out of the destination)"
                )));
            }
            Err(e) => return Err(UnpackError::Write { path: name, why: describe(&e) }),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("site");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        std::fs::write(top.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(top.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(top.join("sub/data"), b"data").unwrap();
        std::fs::set_permissions(top.join("sub/data"), std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink("../run.sh", top.join("sub/link")).unwrap();
        symlink("/nowhere/at/all", top.join("dangling")).unwrap();
        let old = nix::sys::time::TimeVal::new(1_600_000_000, 0);
        nix::sys::stat::utimes(&top.join("sub/data"), &old, &old).unwrap();
        dir
    }

    #[test]
    fn packing_keeps_modes_mtimes_owners_and_symlinks() {
        let dir = tree();
        let bytes = pack(&dir.path().join("site"), Vec::new()).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = std::collections::BTreeMap::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.insert(
                e.path().unwrap().display().to_string(),
                (h.entry_type(), h.mode().unwrap() & 0o7777, h.mtime().unwrap(), h.uid().unwrap(), link),
            );
        }
        let uid = nix::unistd::Uid::effective().as_raw() as u64;
        assert_eq!(seen["site/run.sh"].0, EntryType::Regular);
        assert_eq!(seen["site/run.sh"].1, 0o750);
        assert_eq!(seen["site/sub/data"].1, 0o600);
        assert_eq!(seen["site/sub/data"].2, 1_600_000_000);
        assert_eq!(seen["site/sub/data"].3, uid, "owners are numeric and kept");
        assert_eq!(seen["site/sub/link"].0, EntryType::Symlink);
        assert_eq!(seen["site/sub/link"].4.as_deref(), Some("../run.sh"));
        assert_eq!(seen["site/dangling"].4.as_deref(), Some("/nowhere/at/all"), "kept, not followed");
        assert!(seen.contains_key("site") || seen.contains_key("site/"), "{seen:?}");
    }

    #[test]
    fn a_packed_tree_unpacks_the_same() {
        let dir = tree();
        let bytes = pack(&dir.path().join("site"), Vec::new()).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack_untrusted(&bytes[..], &out.path().join("new")).unwrap();
        let got = out.path().join("new/site");
        assert_eq!(std::fs::read(got.join("sub/data")).unwrap(), b"data");
        let meta = std::fs::metadata(got.join("run.sh")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        assert_eq!(std::fs::metadata(got.join("sub/data")).unwrap().mtime(), 1_600_000_000);
        assert_eq!(std::fs::read_link(got.join("dangling")).unwrap(), Path::new("/nowhere/at/all"));
        assert_eq!(std::fs::read(got.join("sub/link")).unwrap(), b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn packing_a_directory_with_a_trailing_dot_packs_its_contents() {
        let dir = tree();
        let src = format!("{}/site/.", dir.path().display());
        let bytes = pack(Path::new(&src), Vec::new()).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack_untrusted(&bytes[..], out.path()).unwrap();
        assert!(out.path().join("run.sh").is_file());
    }

    /// A tar entry written verbatim: the tar crate refuses to write hostile names itself.
    fn raw(
        builder: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }

    fn hostile(entries: &[(&str, EntryType, u32, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode, link, data) in entries {
            raw(&mut b, name, *kind, *mode, link, data);
        }
        b.into_inner().unwrap()
    }

    fn refused(tar: &[u8]) -> (tempfile::TempDir, UnpackError) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("outside")).unwrap();
        let err = unpack_untrusted(tar, &root.path().join("dest")).unwrap_err();
        (root, err)
    }

    fn nothing_outside(root: &Path) {
        assert_eq!(
            std::fs::read_dir(root.join("outside")).unwrap().count(),
            0,
            "something was written outside"
        );
        let names: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| n == "outside" || n.to_string_lossy().starts_with("dest")), "{names:?}");
    }

    #[test]
    fn hostile_dotdot_entry_is_refused() {
        let tar = hostile(&[("../outside/x", EntryType::Regular, 0o644, "", b"pwned")]);
        let (root, err) = refused(&tar);
        assert!(matches!(err, UnpackError::Unsafe(ref n) if n.contains("..")), "{err}");
        nothing_outside(root.path());
    }

    #[test]
    fn hostile_absolute_entry_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("abs-target");
        let tar = hostile(&[(target.to_str().unwrap(), EntryType::Regular, 0o644, "", b"pwned")]);
        let err = unpack_untrusted(&tar[..], &root.path().join("dest")).unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe(_)), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn hostile_symlink_then_a_file_through_it_cannot_write_outside() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("outside")).unwrap();
        let outside = root.path().join("outside");
        let tar = hostile(&[
            ("evil", EntryType::Symlink, 0o777, outside.to_str().unwrap(), b""),
            ("evil/pwned", EntryType::Regular, 0o644, "", b"pwned"),
        ]);
        let err = unpack_untrusted(&tar[..], &root.path().join("dest")).unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe(_)), "{err}");
        nothing_outside(root.path());
        // And relative: `up -> ..`, then `up/outside/pwned`.
        let tar = hostile(&[
            ("up", EntryType::Symlink, 0o777, "..", b""),
            ("up/outside/pwned", EntryType::Regular, 0o644, "", b"pwned"),
        ]);
        assert!(unpack_untrusted(&tar[..], &root.path().join("dest2")).is_err());
        nothing_outside(root.path());
    }

    #[test]
    fn hostile_symlink_then_a_file_of_the_same_name_replaces_the_link_not_its_target() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tar = hostile(&[
            ("f", EntryType::Symlink, 0o777, victim.to_str().unwrap(), b""),
            ("f", EntryType::Regular, 0o644, "", b"pwned"),
        ]);
        unpack_untrusted(&tar[..], &root.path().join("dest")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(root.path().join("dest/f")).unwrap(), b"pwned");
    }

    #[test]
    fn hostile_hard_link_out_of_the_destination_is_refused() {
        let tar = hostile(&[("h", EntryType::Link, 0o644, "../outside/secret", b"")]);
        let (root, err) = refused(&tar);
        assert!(matches!(err, UnpackError::Unsafe(_)), "{err}");
        nothing_outside(root.path());
    }

    #[test]
    fn setuid_bits_and_devices_from_the_guest_are_dropped() {
        let tar = hostile(&[
            ("suid", EntryType::Regular, 0o4755, "", b"x"),
            ("sgid-dir", EntryType::Directory, 0o2775, "", b""),
            ("disk", EntryType::Block, 0o666, "", b""),
        ]);
        let out = tempfile::tempdir().unwrap();
        let done = unpack_untrusted(&tar[..], out.path()).unwrap();
        assert_eq!(std::fs::metadata(out.path().join("suid")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::metadata(out.path().join("sgid-dir")).unwrap().mode() & 0o7000, 0);
        assert_eq!(done.skipped_devices, ["disk"]);
        assert!(!out.path().join("disk").exists());
    }
}
