//! A filesystem tree reduced to what an image flattener must get right, for comparing banger's
//! result with a reference one: type, permission bits, owner, size, content hash, link target
//! and device numbers of every path.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
}

pub fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk_into(root, Path::new(""), &mut out);
    out
}

fn walk_into(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path).expect("lstat");
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    let node = Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if ft.is_file() { meta.len() } else { 0 },
        sha256: ft.is_file().then(|| crate::oci::sha256(&std::fs::read(&path).expect("read"))),
        link: ft.is_symlink().then(|| std::fs::read_link(&path).expect("readlink")),
        rdev: if ft.is_char_device() || ft.is_block_device() { meta.rdev() } else { 0 },
    };
    out.insert(rel.to_path_buf(), node);
    if ft.is_dir() {
        let mut names: Vec<_> =
            std::fs::read_dir(&path).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        for n in names {
            walk_into(root, &rel.join(n), out);
        }
    }
}

/// Every difference between two trees, one line each; empty when they match.
pub fn diff(ours: &BTreeMap<PathBuf, Node>, reference: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut lines = vec![];
    for (p, r) in reference {
        match ours.get(p) {
            None => lines.push(format!("missing {}: {r:?}", p.display())),
            Some(o) if o != r => {
                lines.push(format!("differs {}:\n   ours {o:?}\n   ref  {r:?}", p.display()))
            }
            Some(_) => {}
        }
    }
    for p in ours.keys().filter(|p| !reference.contains_key(*p)) {
        lines.push(format!("extra {}", p.display()));
    }
    lines
}

/// An ext4 image mounted read-only on a temp dir; unmounted when dropped.
pub struct Mounted {
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn ext4(image: &Path) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount failed: {}", String::from_utf8_lossy(&out.stderr));
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
