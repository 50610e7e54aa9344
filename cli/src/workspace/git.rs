//! The git plumbing the workspace commands need, run as `git` itself (the host's git is the
//! authority on what is tracked, ignored and changed) and its NUL-separated output parsed here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use protocol::{Error, ErrorKind};

use crate::escape::escape;

/// `git -C top …`, deaf to the caller's GIT_DIR and friends, which would point it elsewhere.
fn git(top: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(top).stdin(Stdio::null());
    for var in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd`; its stdout, or an error quoting git's own words.
fn output(mut cmd: Command, what: &str) -> Result<Vec<u8>, Error> {
    let out: Output = cmd.output().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "install git on this host (apt-get install git)"
        } else {
            "check that git runs here: git --version"
        };
        Error::new(ErrorKind::Unavailable, format!("cannot run git to {what}: {e}")).with_hint(hint)
    })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("git failed to {what}: {}", escape(said.trim())),
        ));
    }
    Ok(out.stdout)
}

fn line(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The top of the checkout `dir` is in.
pub fn toplevel(dir: &Path) -> Result<PathBuf, Error> {
    let mut cmd = git(dir);
    cmd.args(["rev-parse", "--show-toplevel"]);
    let top = output(cmd, "find the repository").map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not in a git checkout", escape(&dir.display().to_string())),
        )
        .with_hint(format!(
            "a workspace is a git checkout: run `git init` there, or copy a plain tree with `banger vm cp`{}",
            if e.message.contains("safe.directory") { " (git refuses it: see safe.directory)" } else { "" }
        ))
    })?;
    Ok(PathBuf::from(OsStr::from_bytes(&top[..top.iter().rposition(|b| *b != b'\n').map_or(0, |i| i + 1)])))
}

/// Where this checkout's git data is: its own directory (HEAD, index) and the shared one
/// (objects, refs); the same but in a linked worktree.
pub fn git_dirs(top: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let mut cmd = git(top);
    cmd.args(["rev-parse", "--absolute-git-dir", "--git-common-dir"]);
    let text = String::from_utf8(output(cmd, "find the .git directory")?)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "the .git directory's path is not UTF-8"))?;
    let mut lines = text.lines();
    let own = PathBuf::from(lines.next().unwrap_or_default());
    let common = lines.next().map(PathBuf::from).unwrap_or_else(|| own.clone());
    // git prints the common directory relative to the checkout when it is not absolute.
    let common = if common.is_absolute() { common } else { top.join(common) };
    Ok((own, common))
}

/// `HEAD`'s commit, or `None` in a repository with no commit yet.
pub fn head(top: &Path) -> Option<String> {
    let mut cmd = git(top);
    cmd.args(["rev-parse", "-q", "--verify", "HEAD^{commit}"]);
    output(cmd, "read HEAD").ok().map(line).filter(|s| !s.is_empty())
}

/// The branch checked out (`main`), if one is.
pub fn current_branch(top: &Path) -> Option<String> {
    let mut cmd = git(top);
    cmd.args(["symbolic-ref", "-q", "--short", "HEAD"]);
    output(cmd, "read HEAD").ok().map(line).filter(|s| !s.is_empty())
}

/// Splits `a\0b\0` into paths; an empty field (a trailing NUL) is no path.
pub fn split_nul(bytes: &[u8]) -> Vec<PathBuf> {
    bytes.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| PathBuf::from(OsStr::from_bytes(p))).collect()
}

/// What goes: tracked files and untracked ones git does not ignore, each once (a conflicted
/// path is listed once per stage). Tracked files deleted from the work tree are listed too;
/// the packer skips what is not there.
pub fn files(top: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut cmd = git(top);
    cmd.args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
    let mut paths = split_nul(&output(cmd, "list the checkout's files")?);
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Untracked files git ignores, each one (not a directory for a whole ignored tree).
pub fn ignored(top: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut cmd = git(top);
    cmd.args(["ls-files", "-z", "--others", "--ignored", "--exclude-standard"]);
    Ok(split_nul(&output(cmd, "list the ignored files")?))
}

/// A tree id of the work tree as it is: tracked and untracked files, not ignored ones. Made in
/// a scratch index seeded from the real one (its stat cache spares re-reading unchanged
/// files); it writes blobs of new and changed files into the object store, as `git stash`
/// does, and never touches the work tree or the real index.
pub fn snapshot(top: &Path) -> Result<String, Error> {
    let (own, _) = git_dirs(top)?;
    let scratch = tempfile::tempdir()
        .map_err(|e| Error::internal(format!("cannot make a scratch directory for git's index: {e}")))?;
    let index = scratch.path().join("index");
    match std::fs::copy(own.join("index"), &index) {
        Ok(_) => {}
        // No index yet (a new repository): git makes one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(format!("cannot copy git's index: {e}"))),
    }
    let mut add = git(top);
    add.env("GIT_INDEX_FILE", &index).args(["add", "-A", "--", "."]);
    output(add, "record the work tree's state")?;
    let mut write = git(top);
    write.env("GIT_INDEX_FILE", &index).arg("write-tree");
    let tree = line(output(write, "record the work tree's state")?);
    if tree.is_empty() {
        return Err(Error::internal("git write-tree printed no tree id"));
    }
    Ok(tree)
}

/// What changed between two recorded states.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub modified: Vec<PathBuf>,
    pub added: Vec<PathBuf>,
    pub deleted: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.modified.is_empty() && self.added.is_empty() && self.deleted.is_empty()
    }
}

/// `git diff-tree -r --name-status -z old new`, with no rename detection: a rename is a
/// deletion and an addition, which is what the guest needs done.
pub fn diff(top: &Path, old: &str, new: &str) -> Result<Changes, Error> {
    let mut cmd = git(top);
    cmd.args(["diff-tree", "-r", "--name-status", "-z", "--no-renames", old, new]);
    parse_name_status(&output(cmd, "compare the work tree with the copy")?)
}

/// Parses `X\0path\0` records (`-z --name-status`): A added, D deleted, M and T (a type
/// change) modified.
pub fn parse_name_status(bytes: &[u8]) -> Result<Changes, Error> {
    let mut changes = Changes::default();
    let mut fields = bytes.split(|b| *b == 0);
    while let Some(status) = fields.next() {
        if status.is_empty() {
            continue;
        }
        let Some(path) = fields.next().filter(|p| !p.is_empty()) else {
            return Err(Error::protocol("git diff-tree printed a status without a path"));
        };
        let path = PathBuf::from(OsStr::from_bytes(path));
        match status.first() {
            Some(b'A') => changes.added.push(path),
            Some(b'D') => changes.deleted.push(path),
            Some(b'M' | b'T') => changes.modified.push(path),
            _ => {
                return Err(Error::protocol(format!(
                    "git diff-tree printed an unexpected status {:?}",
                    String::from_utf8_lossy(status)
                )));
            }
        }
    }
    Ok(changes)
}

/// Ignored files counted per directory (`.` for the top), sorted by directory.
pub fn count_by_dir(paths: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for p in paths {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        *counts.entry(dir.to_path_buf()).or_insert(0u64) += 1;
    }
    counts.into_iter().collect()
}

/// Imports `bundle`'s `HEAD` as `refs/heads/branch`; a branch that exists is only moved
/// forward. The work tree, the index and HEAD are not touched.
pub fn fetch_bundle(top: &Path, bundle: &Path, branch: &str) -> Result<(), Error> {
    let mut cmd = git(top);
    cmd.arg("fetch").arg("--quiet").arg("--no-tags").arg(bundle).arg(format!("HEAD:refs/heads/{branch}"));
    output(cmd, &format!("bring the commits in as branch {branch}")).map(drop).map_err(|e| {
        e.with_hint(format!(
            "if branch {branch} exists and the guest's history does not continue it, name another with --branch"
        ))
    })
}

/// Whether `name` may name a branch (`git check-ref-format --branch`).
pub fn valid_branch(top: &Path, name: &str) -> bool {
    let mut cmd = git(top);
    cmd.args(["check-ref-format", "--branch", name]);
    !name.starts_with('-') && output(cmd, "check the branch name").is_ok()
}

/// How many commits `bundle` holds beyond what this repository has (`git bundle list-heads`
/// names the tip; `rev-list --count` counts from it).
pub fn count_new(top: &Path, tip: &str, base: Option<&str>) -> Option<u64> {
    let mut cmd = git(top);
    cmd.args(["rev-list", "--count", tip]);
    if let Some(b) = base {
        cmd.arg(format!("^{b}"));
    }
    output(cmd, "count the commits").ok().and_then(|o| line(o).parse().ok())
}

/// The commit `refs/heads/branch` points at.
pub fn branch_tip(top: &Path, branch: &str) -> Option<String> {
    let mut cmd = git(top);
    cmd.args(["rev-parse", "-q", "--verify"]).arg(format!("refs/heads/{branch}^{{commit}}"));
    output(cmd, "read the branch").ok().map(line).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn name_status_records_parse_with_any_bytes_in_names() {
        let raw = b"M\0src/main.rs\0A\0new file\0D\0gone/\xff name\0T\0link\0";
        let c = parse_name_status(raw).unwrap();
        assert_eq!(c.modified, [PathBuf::from("src/main.rs"), PathBuf::from("link")]);
        assert_eq!(c.added, [PathBuf::from("new file")]);
        assert_eq!(c.deleted, [PathBuf::from(OsStr::from_bytes(b"gone/\xff name"))]);
        assert!(parse_name_status(b"").unwrap().is_empty());
        assert!(parse_name_status(b"M\0").is_err(), "a status without its path");
        assert!(parse_name_status(b"X\0a\0").is_err());
    }

    #[test]
    fn nul_lists_split_and_ignored_files_count_per_directory() {
        let paths = split_nul(b"a.o\0target/x.o\0target/debug/y\0target/debug/z\0");
        assert_eq!(paths.len(), 4);
        let counts = count_by_dir(&paths);
        assert_eq!(
            counts,
            [(PathBuf::from("."), 1), (PathBuf::from("target"), 1), (PathBuf::from("target/debug"), 2)]
        );
        assert!(split_nul(b"").is_empty());
    }

    /// A real repository: the snapshot sees an untracked file and a modification, not an
    /// ignored file, and leaves the real index alone.
    #[test]
    fn snapshots_follow_the_work_tree_and_leave_the_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        let run = |args: &[&str]| assert!(git(top).args(args).status().unwrap().success(), "{args:?}");
        run(&["init", "-q"]);
        std::fs::write(top.join(".gitignore"), "*.o\n").unwrap();
        std::fs::write(top.join("a"), "1").unwrap();
        run(&["add", "."]);
        run(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]);
        let index = std::fs::read(top.join(".git/index")).unwrap();
        let first = snapshot(top).unwrap();
        std::fs::write(top.join("x.o"), "ignored").unwrap();
        assert_eq!(snapshot(top).unwrap(), first, "an ignored file changes nothing");
        std::fs::write(top.join("a"), "2").unwrap();
        std::fs::write(top.join("new"), "n").unwrap();
        std::fs::remove_file(top.join(".gitignore")).unwrap();
        let second = snapshot(top).unwrap();
        let c = diff(top, &first, &second).unwrap();
        assert_eq!(c.modified, [PathBuf::from("a")]);
        assert_eq!(c.added, [PathBuf::from("new"), PathBuf::from("x.o")], "no longer ignored");
        assert_eq!(c.deleted, [PathBuf::from(".gitignore")]);
        assert_eq!(std::fs::read(top.join(".git/index")).unwrap(), index, "the real index is untouched");
        assert_eq!(
            files(top).unwrap(),
            [PathBuf::from(".gitignore"), "a".into(), "new".into(), "x.o".into()]
        );
    }
}
