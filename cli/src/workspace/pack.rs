//! What a workspace copy sends, and the tar stream of it: files as git lists them plus the
//! `.git` directory, modes, mtimes and symlinks kept, owned by root in the guest (commands run
//! as root there, and git refuses a repository another user owns).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use protocol::Error;
use tar::{EntryType, Header};

use super::git;

/// How deep submodules and nested repositories are followed.
const MAX_NESTING: usize = 8;

/// One entry of the stream: `name` in the guest (relative to its workspace), `src` here.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: PathBuf,
    pub src: PathBuf,
    pub kind: Kind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Symlink,
    Dir,
}

/// What a copy sends.
#[derive(Debug, Default)]
pub struct Plan {
    /// The work tree's files (and the contents of checked-out submodules).
    pub files: Vec<Item>,
    /// The `.git` directory (for a linked worktree: the shared one with this worktree's HEAD,
    /// index and logs over it).
    pub git: Vec<Item>,
}

impl Plan {
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.git.iter().chain(&self.files)
    }

    pub fn bytes(items: &[Item]) -> u64 {
        items.iter().map(|i| i.size).sum()
    }

    /// About what the tar stream will weigh: a header and padded data per entry.
    pub fn tar_bytes(&self) -> u64 {
        self.items().map(|i| 512 + i.size.div_ceil(512) * 512).sum::<u64>() + 1024
    }
}

fn item(name: PathBuf, src: PathBuf) -> std::io::Result<Option<Item>> {
    let meta = match std::fs::symlink_metadata(&src) {
        Ok(m) => m,
        // Deleted from the work tree but still tracked: not copied.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = if meta.file_type().is_symlink() {
        Kind::Symlink
    } else if meta.is_dir() {
        Kind::Dir
    } else if meta.is_file() {
        Kind::File
    } else {
        // A socket or fifo that git lists as untracked: nothing to copy.
        return Ok(None);
    };
    let size = if kind == Kind::File { meta.len() } else { 0 };
    Ok(Some(Item { name, src, kind, size }))
}

/// The work tree's items for `paths` (relative to `top`, as git lists them). A directory is a
/// submodule or a nested repository: what its own git lists goes, and its `.git`.
pub fn work_tree(top: &Path, paths: &[PathBuf], into: &mut Vec<Item>) -> Result<(), Error> {
    walk_listed(top, Path::new(""), paths, into, 0)
}

fn walk_listed(
    top: &Path,
    prefix: &Path,
    paths: &[PathBuf],
    into: &mut Vec<Item>,
    depth: usize,
) -> Result<(), Error> {
    let read = |p: &Path, e: std::io::Error| Error::internal(format!("cannot read {}: {e}", p.display()));
    for rel in paths {
        // `ls-files` writes an untracked nested repository as `dir/`.
        let rel = rel.components().as_path();
        let src = top.join(rel);
        let Some(it) = item(prefix.join(rel), src.clone()).map_err(|e| read(&src, e))? else { continue };
        if it.kind != Kind::Dir {
            into.push(it);
            continue;
        }
        if depth >= MAX_NESTING {
            continue;
        }
        // A submodule not checked out is an empty directory: git lists nothing in it.
        let Ok(inner) = git::files(&src) else { continue };
        if git::toplevel(&src).ok().as_deref() != Some(src.as_path()) {
            continue;
        }
        let dot_git = src.join(".git");
        if let Some(g) =
            item(prefix.join(rel).join(".git"), dot_git.clone()).map_err(|e| read(&dot_git, e))?
        {
            match g.kind {
                // A submodule's `.git` is a file naming the superproject's `.git/modules/…`.
                Kind::File => into.push(g),
                _ => tree(&dot_git, &prefix.join(rel).join(".git"), None, into)
                    .map_err(|e| read(&dot_git, e))?,
            }
        }
        walk_listed(&src, &prefix.join(rel), &inner, into, depth + 1)?;
    }
    Ok(())
}

/// Every file, symlink and directory under `dir` (itself included), named under `name`;
/// with `since`, only files and symlinks changed at or after that time (unix seconds).
pub fn tree(dir: &Path, name: &Path, since: Option<i64>, into: &mut Vec<Item>) -> std::io::Result<()> {
    tree_skipping(dir, name, since, &[], into)
}

fn tree_skipping(
    dir: &Path,
    name: &Path,
    since: Option<i64>,
    skip: &[&str],
    into: &mut Vec<Item>,
) -> std::io::Result<()> {
    if since.is_none() {
        into.push(Item { name: name.to_path_buf(), src: dir.to_path_buf(), kind: Kind::Dir, size: 0 });
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if skip.iter().any(|s| e.file_name() == *s) {
            continue;
        }
        let (src, child) = (e.path(), name.join(e.file_name()));
        let meta = match std::fs::symlink_metadata(&src) {
            Ok(m) => m,
            // git removes lock and temporary files as it goes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            tree_skipping(&src, &child, since, &[], into)?;
        } else if since.is_none_or(|t| meta.mtime() >= t || meta.ctime() >= t)
            && let Some(it) = item(child, src)?
        {
            into.push(it);
        }
    }
    Ok(())
}

/// The `.git` items: all of it, or (with `since`) what changed since. In a linked worktree the
/// shared directory goes (not its other worktrees), with this worktree's own files over it.
pub fn git_dir(top: &Path, since: Option<i64>) -> Result<Vec<Item>, Error> {
    let (own, common) = git::git_dirs(top)?;
    let read = |p: &Path, e: std::io::Error| Error::internal(format!("cannot read {}: {e}", p.display()));
    let mut items = vec![];
    let name = Path::new(".git");
    if own == common {
        tree(&own, name, since, &mut items).map_err(|e| read(&own, e))?;
        return Ok(items);
    }
    tree_skipping(&common, name, since, &["worktrees"], &mut items).map_err(|e| read(&common, e))?;
    let mut over = vec![];
    tree_skipping(&own, name, since, &["commondir", "gitdir", "locked"], &mut over)
        .map_err(|e| read(&own, e))?;
    let names: std::collections::HashSet<_> = over.iter().map(|i| i.name.clone()).collect();
    items.retain(|i| !names.contains(&i.name));
    items.extend(over);
    Ok(items)
}

/// A file's bytes, exactly `size` of them: one that shrinks under us is padded with zeros and
/// one that grows is cut, so the stream stays a valid tar (a later sync sends it again).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes `items` as one tar stream, read as it goes (never the whole tree in memory).
pub fn write(items: &[&Item], out: &mut dyn Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    for it in items {
        let meta = match std::fs::symlink_metadata(&it.src) {
            Ok(m) => m,
            // Gone since it was listed (git's own temporary files): nothing to send.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", it.src.display()))),
        };
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        let at = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", it.src.display()));
        if meta.file_type().is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            h.set_size(0);
            let target = std::fs::read_link(&it.src).map_err(at)?;
            b.append_link(&mut h, &it.name, target)?;
        } else if meta.is_dir() {
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &it.name, std::io::empty())?;
        } else if meta.is_file() {
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            let f = match std::fs::File::open(&it.src) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(e)),
            };
            b.append_data(&mut h, &it.name, Exact { inner: f, left: meta.len() })?;
        }
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_file_that_changes_size_under_the_packer_still_makes_a_valid_entry() {
        let mut short = Vec::new();
        Exact { inner: &b"abc"[..], left: 5 }.read_to_end(&mut short).unwrap();
        assert_eq!(short, b"abc\0\0");
        let mut long = Vec::new();
        Exact { inner: &b"abcdef"[..], left: 2 }.read_to_end(&mut long).unwrap();
        assert_eq!(long, b"ab");
    }
}
