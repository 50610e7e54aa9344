//! File work beneath a directory descriptor, the helper's only way to touch files. The daemon's
//! owner owns the state dir and may rename, swap or plant anything in it at any moment, so a path
//! checked first and used later proves nothing. Every path is resolved from a descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no component may be a
//! symlink or lead outside. Files are created with `O_EXCL | O_NOFOLLOW`, changed through their
//! descriptor (`fchown`, `fchmod`), and trees are removed without crossing a symlink or a mount.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// How deep `remove_tree` goes: a jail is a few levels; an endless one is an attack (one open
/// descriptor per level).
const MAX_DEPTH: usize = 32;

/// A directory the helper reached without following a symlink.
#[derive(Debug)]
pub struct Dir(OwnedFd);

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn openat2(
    dir: BorrowedFd,
    path: &Path,
    flags: OFlag,
    mode: u32,
    extra: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(resolve() | extra);
    loop {
        // openat2 answers EAGAIN when a rename elsewhere raced the lookup: just look again.
        match nix::fcntl::openat2(dir, path, how) {
            Err(Errno::EAGAIN) => continue,
            other => return other,
        }
    }
}

/// Why a lookup failed, in words: ELOOP from `RESOLVE_NO_SYMLINKS` means a symlink was found.
pub fn explain(e: Errno) -> String {
    match e {
        Errno::ELOOP => "a symlink stands where banger expects a directory or file (refused)".into(),
        Errno::EXDEV => "it leads outside banger's directory or across a mount (refused)".into(),
        other => other.desc().to_lowercase(),
    }
}

/// `/proc/self/fd/N`: the path that names exactly the object `fd` holds, for calls that take
/// only paths (mount, umount2, the jailer's flags).
pub fn fd_path(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl Dir {
    /// Opens a directory named by the helper's own configuration (its flags, not a request); its
    /// last component must not be a symlink.
    pub fn open(path: &Path) -> nix::Result<Dir> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        nix::fcntl::open(path, flags, Mode::empty()).map(Dir)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub fn stat(&self) -> nix::Result<FileStat> {
        nix::sys::stat::fstat(&self.0)
    }

    /// The directory at `rel` beneath this one.
    pub fn dir(&self, rel: &Path) -> nix::Result<Dir> {
        openat2(self.fd(), rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0, ResolveFlag::empty())
            .map(Dir)
            .map_err(|e| if e == Errno::ENOTDIR && self.is_symlink(rel) { Errno::ELOOP } else { e })
    }

    fn is_symlink(&self, rel: &Path) -> bool {
        nix::sys::stat::fstatat(self.fd(), rel, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
    }

    /// The directory `name` here, made with `mode` if it is not there yet.
    pub fn make_dir(&self, name: &str, mode: u32) -> nix::Result<Dir> {
        match nix::sys::stat::mkdirat(self.fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => self.dir(Path::new(name)),
            Err(e) => Err(e),
        }
    }

    /// A new directory `name` here: it must not exist yet.
    pub fn new_dir(&self, name: &str, mode: u32) -> nix::Result<Dir> {
        nix::sys::stat::mkdirat(self.fd(), name, Mode::from_bits_truncate(mode))?;
        self.dir(Path::new(name))
    }

    /// A new file `name` here: it must not exist yet, as a file, a symlink or anything else.
    pub fn create(&self, name: &str, mode: u32) -> nix::Result<File> {
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
        openat2(self.fd(), Path::new(name), flags, mode, ResolveFlag::empty()).map(File::from)
    }

    /// A handle on the object at `rel` (any type, a symlink refused), to stat or mount.
    pub fn handle(&self, rel: &Path) -> nix::Result<OwnedFd> {
        let fd = openat2(self.fd(), rel, OFlag::O_PATH, 0, ResolveFlag::empty())?;
        // `O_PATH | O_NOFOLLOW` opens a final symlink itself rather than failing.
        let st = nix::sys::stat::fstat(&fd)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            return Err(Errno::ELOOP);
        }
        Ok(fd)
    }

    /// Reads the regular file `name` here, at most `max` bytes.
    pub fn read_small(&self, name: &str, max: u64) -> Result<String, String> {
        let fd =
            openat2(self.fd(), Path::new(name), OFlag::O_RDONLY, 0, ResolveFlag::empty()).map_err(explain)?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        let mut text = String::new();
        file.take(max).read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// Removes `name` here and everything beneath it. Symlinks are removed, never followed; a
    /// mount anywhere inside is refused (the caller unmounts what it mounted first). Absent is
    /// fine.
    pub fn remove_tree(&self, name: &str) -> Result<(), String> {
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{name}: more than {MAX_DEPTH} directories deep; refusing to go on"));
        }
        let st = match nix::sys::stat::fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(format!("{name}: {}", explain(e))),
        };
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            let here = self.stat().map_err(|e| e.to_string())?;
            if st.st_dev != here.st_dev {
                return Err(format!("{name} is a mount point; refusing to remove across it"));
            }
            let dir = openat2(
                self.fd(),
                Path::new(name),
                OFlag::O_DIRECTORY | OFlag::O_RDONLY,
                0,
                ResolveFlag::RESOLVE_NO_XDEV,
            )
            .map(Dir)
            .map_err(|e| format!("{name}: {}", explain(e)))?;
            // Taken back from whoever could write in it, so nothing is added while it is emptied
            // (fails harmlessly where the helper is not root, as in unit tests).
            let _ = nix::unistd::fchown(
                dir.fd(),
                Some(nix::unistd::Uid::from_raw(0)),
                Some(nix::unistd::Gid::from_raw(0)),
            );
            let _ = nix::sys::stat::fchmod(dir.fd(), Mode::from_bits_truncate(0o700));
            // Something may still be added while it is emptied: empty it again, a few times.
            for _ in 0..10 {
                for entry in dir.entries()? {
                    dir.remove_tree_at(&entry, depth + 1).map_err(|e| format!("{name}/{e}"))?;
                }
                match nix::unistd::unlinkat(self.fd(), name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                    Err(Errno::ENOTEMPTY) => continue,
                    Err(e) => return Err(format!("{name}: {}", e.desc())),
                }
            }
            return Err(format!("{name}: it keeps being filled while it is removed"));
        }
        let here = self.stat().map_err(|e| e.to_string())?;
        if st.st_dev != here.st_dev && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK
        {
            return Err(format!("{name} is a mount point; refusing to remove across it"));
        }
        match nix::unistd::unlinkat(self.fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("{name}: {}", e.desc())),
        }
    }

    /// The names in this directory, without `.` and `..`.
    pub fn entries(&self) -> Result<Vec<String>, String> {
        let dup = self.0.try_clone().map_err(|e| e.to_string())?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| e.to_string())?;
        let mut names = vec![];
        for entry in dir.iter() {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_refused_at_any_depth() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("a/b/out")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert!(d.dir(Path::new("a/b")).is_ok());
        assert_eq!(d.dir(Path::new("link/b")).unwrap_err(), Errno::ELOOP, "a symlinked directory");
        assert_eq!(d.handle(Path::new("a/b/out")).unwrap_err(), Errno::ELOOP, "a symlinked file");
        assert!(d.handle(Path::new("../x")).is_err(), "dot-dot out");
        assert!(d.handle(Path::new("/etc/passwd")).is_err(), "absolute");
        assert_eq!(d.read_small("a/b/f", 10).unwrap(), "x");
    }

    #[test]
    fn create_refuses_what_exists_and_remove_tree_never_follows() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("canary"), b"keep").unwrap();
        let d = Dir::open(t.path()).unwrap();
        let sub = d.make_dir("jail", 0o700).unwrap();
        std::os::unix::fs::symlink(outside.path().join("canary"), t.path().join("jail/planted")).unwrap();
        assert_eq!(sub.create("planted", 0o600).unwrap_err(), Errno::EEXIST, "no write through a symlink");
        std::os::unix::fs::symlink(outside.path(), t.path().join("jail/dirlink")).unwrap();
        sub.make_dir("deep", 0o700).unwrap().create("f", 0o600).unwrap();
        d.remove_tree("jail").unwrap();
        assert!(!t.path().join("jail").exists());
        assert_eq!(std::fs::read(outside.path().join("canary")).unwrap(), b"keep");
        d.remove_tree("jail").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("jail")).unwrap();
        assert_eq!(d.make_dir("jail", 0o700).unwrap_err(), Errno::ELOOP, "a symlinked jail is refused");
    }
}
