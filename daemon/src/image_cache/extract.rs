//! Applies image layers to a staging directory without ever leaving it.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` against the staging root, so a
//! symlink planted by an earlier entry or layer (`etc -> /etc`) resolves inside the root, not on
//! the host. The final component is created with `*at` calls that do not follow it, after
//! removing whatever was there. `..` components are refused outright; absolute paths are taken
//! relative to the root. Content is capped across all layers.
//!
//! OCI whiteouts: `.wh.NAME` deletes NAME from lower layers; `.wh..wh..opq` empties its
//! directory of everything lower layers put there. Both spare what the current layer created.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

/// Bounds on what a set of layers may put on disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of regular-file content, all layers together.
    pub max_bytes: u64,
    /// Entries, all layers together.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 64 << 30, max_entries: 1_000_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer {layer}: entry {path:?} {why}")]
    Refused { layer: usize, path: String, why: String },
    #[error(
        "layer {layer}: the uncompressed content exceeds the {limit}-byte limit set by \
         max_image_bytes in bangerd.toml's [images] (or --max-image-bytes)"
    )]
    TooLarge { layer: usize, limit: u64 },
    #[error(
        "layer {layer}: more than {limit} entries (files, directories, links), the limit set by \
         max_image_entries in bangerd.toml's [images]; each one costs an inode and mkfs time"
    )]
    TooManyEntries { layer: usize, limit: u64 },
    #[error("layer {layer}: cannot read the archive: {source}")]
    Archive { layer: usize, source: std::io::Error },
    #[error("layer {layer}: {path:?}: {op}: {errno}")]
    Io { layer: usize, path: String, op: &'static str, errno: Errno },
}

/// What the extraction wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub content_bytes: u64,
    /// Device nodes skipped because this process may not create them (not root).
    pub skipped_devices: u64,
}

pub struct Extractor {
    root: OwnedFd,
    limits: Limits,
    privileged: bool,
    stats: Stats,
    /// Directory mtimes, applied last: adding children changes them.
    dir_times: Vec<(PathBuf, TimeSpec)>,
}

/// Ownership and times from the header, with PAX records taking precedence.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Extractor {
    pub fn new(root: &Path, limits: Limits) -> std::io::Result<Self> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Extractor {
            root,
            limits,
            privileged: Uid::effective().is_root(),
            stats: Stats::default(),
            dir_times: vec![],
        })
    }

    /// Applies one uncompressed layer tar. `layer` is its 1-based index, for errors.
    pub fn apply_layer(&mut self, tar: impl Read, layer: usize) -> Result<(), ExtractError> {
        let mut archive = tar::Archive::new(tar);
        let mut created: HashSet<PathBuf> = HashSet::new();
        let archive_err = |source| ExtractError::Archive { layer, source };
        for entry in archive.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries { layer, limit: self.limits.max_entries });
            }
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let refuse =
                |why: &str| ExtractError::Refused { layer, path: shown.clone(), why: why.to_string() };
            let rel = normalize(Path::new(OsStr::from_bytes(&raw)))
                .ok_or_else(|| refuse("leaves the root (..)"))?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
                continue;
            }
            let meta = read_meta(&mut entry).map_err(archive_err)?;
            let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
                // The root itself ("./"): only its metadata applies.
                self.set_root_meta(&meta, layer)?;
                continue;
            };
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let name_bytes = name.as_bytes();
            if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
                if hidden == b".wh..opq" {
                    self.opaque(&parent_rel, &created, layer)?;
                } else {
                    self.whiteout(&parent_rel, OsStr::from_bytes(hidden), &created, layer)?;
                }
                continue;
            }
            let ctx = Ctx { layer, path: &shown };
            let parent = self.dir(&parent_rel, true).map_err(|e| ctx.io("open parent", e))?;
            let name = name.as_os_str();
            if kind.is_dir() {
                self.directory(parent.as_fd(), name, &meta, &ctx)?;
                self.dir_times.push((rel.clone(), meta.mtime));
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let size = entry.header().size().map_err(archive_err)?;
                if self.stats.content_bytes + size > self.limits.max_bytes {
                    return Err(ExtractError::TooLarge { layer, limit: self.limits.max_bytes });
                }
                self.regular(parent.as_fd(), name, &meta, &mut entry, &ctx)?;
            } else if kind.is_symlink() {
                let target =
                    entry.link_name_bytes().ok_or_else(|| refuse("is a symlink without a target"))?;
                remove_at(parent.as_fd(), name).map_err(|e| ctx.io("replace", e))?;
                symlinkat(OsStr::from_bytes(&target), parent.as_fd(), name)
                    .map_err(|e| ctx.io("symlink", e))?;
                self.owner(parent.as_fd(), name, &meta, &ctx)?;
                utimensat(parent.as_fd(), name, &meta.mtime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| ctx.io("set times", e))?;
            } else if kind.is_hard_link() {
                let target =
                    entry.link_name_bytes().ok_or_else(|| refuse("is a hard link without a target"))?;
                let target = normalize(Path::new(OsStr::from_bytes(&target)))
                    .ok_or_else(|| refuse("is a hard link that leaves the root (..)"))?;
                let (tparent, tname) = match (target.parent(), target.file_name()) {
                    (Some(p), Some(n)) => (p.to_path_buf(), n.to_os_string()),
                    _ => return Err(refuse("is a hard link to the root")),
                };
                let tdir = self.dir(&tparent, false).map_err(|e| ctx.io("find link target", e))?;
                remove_at(parent.as_fd(), name).map_err(|e| ctx.io("replace", e))?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, never its target.
                linkat(tdir.as_fd(), tname.as_os_str(), parent.as_fd(), name, AtFlags::empty())
                    .map_err(|e| ctx.io("hard link", e))?;
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                self.special(parent.as_fd(), name, kind, &meta, &entry, &ctx)?;
            } else {
                // Sparse files, GNU volume headers and other rarities: refuse rather than guess.
                return Err(refuse(&format!("has an unsupported type ({kind:?})")));
            }
            created.insert(rel);
        }
        Ok(())
    }

    /// Sets directory mtimes (children changed them while extracting) and reports totals.
    pub fn finish(self) -> Result<Stats, ExtractError> {
        for (rel, mtime) in self.dir_times.iter().rev() {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { continue };
            if let Ok(dir) = self.dir(parent, false) {
                // A directory a later layer whited out is simply gone.
                let _ = utimensat(dir.as_fd(), name, mtime, mtime, UtimensatFlags::NoFollowSymlink);
            }
        }
        Ok(self.stats)
    }

    /// Opens a directory inside the root, creating missing ones (0755, root-owned) when asked.
    fn dir(&self, rel: &Path, create: bool) -> Result<OwnedFd, Errno> {
        let target = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        match openat2(self.root.as_fd(), target, in_root()) {
            Err(Errno::ENOENT) if create => self.make_dirs(rel, 0),
            other => other,
        }
    }

    /// `mkdir -p` inside the root. Each prefix is resolved from the root, so a symlink among
    /// them is followed inside it; a dangling one gets its target created (inside the root).
    fn make_dirs(&self, rel: &Path, depth: u32) -> Result<OwnedFd, Errno> {
        if depth > 40 {
            return Err(Errno::ELOOP);
        }
        let parts: Vec<&OsStr> = rel.iter().collect();
        let mut at = openat2(self.root.as_fd(), ".", in_root())?;
        for (i, part) in parts.iter().enumerate() {
            let prefix: PathBuf = parts[..=i].iter().collect();
            at = match openat2(self.root.as_fd(), &prefix, in_root()) {
                Err(Errno::ENOENT) => match mkdirat(at.as_fd(), *part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => openat2(self.root.as_fd(), &prefix, in_root())?,
                    Err(Errno::EEXIST) => {
                        let link = nix::fcntl::readlinkat(at.as_fd(), *part)?;
                        let base = if Path::new(&link).is_absolute() {
                            PathBuf::new()
                        } else {
                            prefix.parent().unwrap_or(Path::new("")).to_path_buf()
                        };
                        let rest: PathBuf = parts[i + 1..].iter().collect();
                        return self.make_dirs(&clamp(&base.join(link).join(rest)), depth + 1);
                    }
                    Err(e) => return Err(e),
                },
                other => other?,
            };
        }
        Ok(at)
    }

    fn set_root_meta(&self, meta: &Meta, layer: usize) -> Result<(), ExtractError> {
        let ctx = Ctx { layer, path: "/" };
        let dot = Path::new(".");
        let root = self.dir(Path::new(""), false).map_err(|e| ctx.io("open root", e))?;
        if self.privileged {
            fchownat(
                root.as_fd(),
                dot,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::empty(),
            )
            .map_err(|e| ctx.io("chown", e))?;
        }
        fchmodat(root.as_fd(), dot, mode(meta.mode), FchmodatFlags::FollowSymlink)
            .map_err(|e| ctx.io("chmod", e))
    }

    fn directory(
        &mut self,
        parent: BorrowedFd,
        name: &OsStr,
        meta: &Meta,
        ctx: &Ctx,
    ) -> Result<(), ExtractError> {
        // An existing directory is merged into (its lower contents stay); anything else is replaced.
        let is_dir = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
        if !is_dir {
            remove_at(parent, name).map_err(|e| ctx.io("replace", e))?;
            mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(|e| ctx.io("mkdir", e))?;
        }
        let dir = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ctx.io("open", e))?;
        self.finish_fd(&dir, meta, ctx)
    }

    fn regular(
        &mut self,
        parent: BorrowedFd,
        name: &OsStr,
        meta: &Meta,
        content: &mut impl Read,
        ctx: &Ctx,
    ) -> Result<(), ExtractError> {
        remove_at(parent, name).map_err(|e| ctx.io("replace", e))?;
        let fd = openat(
            parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| ctx.io("create", e))?;
        let mut file = File::from(fd);
        let copied = std::io::copy(content, &mut file)
            .map_err(|e| ExtractError::Archive { layer: ctx.layer, source: e })?;
        file.flush().map_err(|e| ExtractError::Archive { layer: ctx.layer, source: e })?;
        self.stats.content_bytes += copied;
        self.finish_fd(&OwnedFd::from(file), meta, ctx)
    }

    fn special(
        &mut self,
        parent: BorrowedFd,
        name: &OsStr,
        kind: tar::EntryType,
        meta: &Meta,
        entry: &tar::Entry<impl Read>,
        ctx: &Ctx,
    ) -> Result<(), ExtractError> {
        let header = entry.header();
        let (major, minor) = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let sflag = if kind.is_fifo() {
            SFlag::S_IFIFO
        } else if kind.is_block_special() {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        remove_at(parent, name).map_err(|e| ctx.io("replace", e))?;
        match mknodat(
            parent,
            name,
            sflag,
            Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major.into(), minor.into()),
        ) {
            Ok(()) => {}
            Err(Errno::EPERM) if !self.privileged && !kind.is_fifo() => {
                self.stats.skipped_devices += 1;
                return Ok(());
            }
            Err(e) => return Err(ctx.io("mknod", e)),
        }
        self.owner(parent, name, meta, ctx)?;
        // After chown: chown clears setuid/setgid bits.
        fchmodat(parent, name, mode(meta.mode), FchmodatFlags::FollowSymlink)
            .map_err(|e| ctx.io("chmod", e))?;
        utimensat(parent, name, &meta.mtime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| ctx.io("set times", e))
    }

    fn owner(&self, parent: BorrowedFd, name: &OsStr, meta: &Meta, ctx: &Ctx) -> Result<(), ExtractError> {
        if !self.privileged {
            return Ok(());
        }
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ctx.io("chown", e))
    }

    /// Owner, xattrs, mode (after chown, which clears set-id bits) and mtime of an open file.
    fn finish_fd(&self, fd: &OwnedFd, meta: &Meta, ctx: &Ctx) -> Result<(), ExtractError> {
        if self.privileged {
            nix::unistd::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(|e| ctx.io("chown", e))?;
        }
        for (key, value) in &meta.xattrs {
            // SAFETY: fd is open; key is NUL-terminated; value outlives the call.
            let rc = unsafe {
                libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            };
            if rc != 0 {
                let errno = Errno::last();
                // A filesystem without xattrs, or a namespace this user may not write: not fatal.
                if !matches!(errno, Errno::ENOTSUP | Errno::EPERM) {
                    return Err(ctx.io("set xattr", errno));
                }
            }
        }
        nix::sys::stat::fchmod(fd, mode(meta.mode)).map_err(|e| ctx.io("chmod", e))?;
        nix::sys::stat::futimens(fd, &meta.mtime, &meta.mtime).map_err(|e| ctx.io("set times", e))
    }

    fn whiteout(
        &self,
        parent_rel: &Path,
        hidden: &OsStr,
        created: &HashSet<PathBuf>,
        layer: usize,
    ) -> Result<(), ExtractError> {
        if created.contains(&parent_rel.join(hidden)) {
            return Ok(());
        }
        let shown = parent_rel.join(hidden).display().to_string();
        let ctx = Ctx { layer, path: &shown };
        match self.dir(parent_rel, false) {
            Ok(parent) => remove_at(parent.as_fd(), hidden).map_err(|e| ctx.io("whiteout", e)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(()),
            Err(e) => Err(ctx.io("whiteout", e)),
        }
    }

    fn opaque(&self, dir_rel: &Path, created: &HashSet<PathBuf>, layer: usize) -> Result<(), ExtractError> {
        let shown = dir_rel.display().to_string();
        let ctx = Ctx { layer, path: &shown };
        let dir = match self.dir(dir_rel, true) {
            Ok(d) => d,
            Err(e) => return Err(ctx.io("opaque", e)),
        };
        clear_lower(dir.as_fd(), dir_rel, created).map_err(|e| ctx.io("opaque", e))
    }
}

/// Removes from `dir` everything the current layer did not create, recursing into the
/// directories it did create.
fn clear_lower(dir: BorrowedFd, rel: &Path, created: &HashSet<PathBuf>) -> Result<(), Errno> {
    for name in children(dir)? {
        let child = rel.join(&name);
        if !created.contains(&child) {
            remove_at(dir, name.as_os_str())?;
        } else if let Ok(sub) = openat(
            dir,
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            clear_lower(sub.as_fd(), &child, created)?;
        }
    }
    Ok(())
}

fn children(dir: BorrowedFd) -> Result<Vec<std::ffi::OsString>, Errno> {
    let fd = openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    Ok(d.iter()
        .filter_map(|e| e.ok())
        .map(|e| std::ffi::OsString::from(OsStr::from_bytes(e.file_name().to_bytes())))
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Removes `name` in `dir` whatever it is, without following it; absent is fine.
fn remove_at(dir: BorrowedFd, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => {
            let sub = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            for child in children(sub.as_fd())? {
                remove_at(sub.as_fd(), &child)?;
            }
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
        Err(e) => Err(e),
    }
}

fn in_root() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Lexical resolution with `..` stopping at the root, as the kernel does under RESOLVE_IN_ROOT.
fn clamp(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// `/a/./b` → `a/b`; `None` for any `..`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
            Component::Normal(p) => out.push(p),
        }
    }
    Some(out)
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits & 0o7777)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> std::io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()?,
        uid: h.uid()? as u32,
        gid: h.gid()? as u32,
        mtime: TimeSpec::new(h.mtime()? as i64, 0),
        xattrs: vec![],
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else { continue };
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => meta.uid = text.parse().unwrap_or(meta.uid),
                "gid" => meta.gid = text.parse().unwrap_or(meta.gid),
                "mtime" => {
                    let (secs, frac) = text.split_once('.').unwrap_or((text, "0"));
                    let nanos = format!("{frac:0<9}").get(..9).and_then(|n| n.parse().ok()).unwrap_or(0);
                    if let Ok(secs) = secs.parse() {
                        meta.mtime = TimeSpec::new(secs, nanos);
                    }
                }
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                        && let Ok(name) = CString::new(name)
                    {
                        meta.xattrs.push((name, value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

struct Ctx<'a> {
    layer: usize,
    path: &'a str,
}

impl Ctx<'_> {
    fn io(&self, op: &'static str, errno: Errno) -> ExtractError {
        ExtractError::Io { layer: self.layer, path: self.path.to_string(), op, errno }
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
