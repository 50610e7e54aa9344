//! Layer semantics and containment of hostile layers, on real files. The canary lives in its
//! own temp dir outside the staging root and must never change.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// Builds a tar in memory, writing names verbatim (the tar crate refuses `..` on its own path).
struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
}

impl Tar {
    fn entry(mut self, name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        let bytes = h.as_old_mut();
        bytes.name = [0; 100];
        bytes.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            bytes.linkname = [0; 100];
            bytes.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o644, data, None)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, 0o755, b"", None)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, b"", Some(target))
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, 0o644, b"", Some(target))
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

struct Fixture {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture { root: tempfile::tempdir().unwrap(), outside: tempfile::tempdir().unwrap() };
        std::fs::write(f.canary(), b"untouched").unwrap();
        f
    }
    fn canary(&self) -> std::path::PathBuf {
        self.outside.path().join("canary")
    }
    fn canary_dir(&self) -> &str {
        self.outside.path().to_str().unwrap()
    }
    fn apply(&self, layers: &[Vec<u8>]) -> Result<Stats, ExtractError> {
        self.apply_limited(layers, Limits::default())
    }
    fn apply_limited(&self, layers: &[Vec<u8>], limits: Limits) -> Result<Stats, ExtractError> {
        let mut x = Extractor::new(self.root.path(), limits).unwrap();
        for (i, l) in layers.iter().enumerate() {
            x.apply_layer(&l[..], i + 1)?;
        }
        x.finish()
    }
    fn at(&self, rel: &str) -> std::path::PathBuf {
        self.root.path().join(rel)
    }
    fn assert_canary_untouched(&self) {
        assert_eq!(std::fs::read(self.canary()).unwrap(), b"untouched");
        assert_eq!(std::fs::metadata(self.canary()).unwrap().nlink(), 1, "nothing links to the canary");
        let names: Vec<_> =
            std::fs::read_dir(self.outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["canary"], "nothing was created beside the canary");
    }
}

#[test]
fn dotdot_entries_are_refused() {
    let f = Fixture::new();
    let evil = format!("../../../../../../..{}/canary", f.canary_dir());
    let err = f.apply(&[Tar::default().file(&evil, b"pwned").bytes()]).unwrap_err();
    assert!(matches!(err, ExtractError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("leaves the root"), "{err}");
    f.assert_canary_untouched();
}

#[test]
fn absolute_paths_are_confined_to_the_root() {
    let f = Fixture::new();
    let abs = format!("{}/canary", f.canary_dir());
    f.apply(&[Tar::default().file(&abs, b"pwned").bytes()]).unwrap();
    assert_eq!(std::fs::read(f.at(abs.trim_start_matches('/'))).unwrap(), b"pwned");
    f.assert_canary_untouched();
}

#[test]
fn writes_through_a_symlink_from_the_same_layer_stay_inside() {
    let f = Fixture::new();
    let layer = Tar::default().symlink("escape", f.canary_dir()).file("escape/canary", b"pwned").bytes();
    f.apply(&[layer]).unwrap();
    // The link resolved as if the root were `/`: the write landed at <root><canary dir>/canary.
    let inside = f.at(f.canary_dir().trim_start_matches('/')).join("canary");
    assert_eq!(std::fs::read(inside).unwrap(), b"pwned");
    f.assert_canary_untouched();
}

#[test]
fn writes_through_a_symlink_from_an_earlier_layer_stay_inside() {
    let f = Fixture::new();
    let relative_escape = "../../../../../../../../..".to_string() + f.canary_dir();
    let lower = Tar::default().symlink("a", &relative_escape).symlink("b", f.canary_dir()).bytes();
    let upper = Tar::default().file("a/canary", b"pwned-a").file("b/canary", b"pwned-b").bytes();
    f.apply(&[lower, upper]).unwrap();
    f.assert_canary_untouched();
}

#[test]
fn a_symlink_as_the_final_component_is_replaced_not_followed() {
    let f = Fixture::new();
    let lower = Tar::default().symlink("etc-passwd", &f.canary().display().to_string()).bytes();
    let upper = Tar::default().file("etc-passwd", b"pwned").bytes();
    f.apply(&[lower, upper]).unwrap();
    assert_eq!(std::fs::read(f.at("etc-passwd")).unwrap(), b"pwned");
    assert!(!std::fs::symlink_metadata(f.at("etc-passwd")).unwrap().file_type().is_symlink());
    f.assert_canary_untouched();
}

#[test]
fn hardlinks_cannot_reach_outside_the_root() {
    let f = Fixture::new();
    let canary = f.canary().display().to_string();
    // Absolute target: resolved inside the root, where it does not exist.
    let err = f.apply(&[Tar::default().hardlink("evil", &canary).bytes()]).unwrap_err();
    assert!(
        matches!(
            err,
            ExtractError::Io { op: "find link target", .. } | ExtractError::Io { op: "hard link", .. }
        ),
        "{err}"
    );
    // Through `..`: refused.
    let err = f.apply(&[Tar::default().hardlink("evil2", &format!("../../..{canary}")).bytes()]).unwrap_err();
    assert!(err.to_string().contains("leaves the root"), "{err}");
    // Through a symlink: the link is to the symlink itself, never to what it points at.
    let layer = Tar::default().symlink("s", &canary).hardlink("h", "s").bytes();
    f.apply(&[layer]).unwrap();
    assert!(std::fs::symlink_metadata(f.at("h")).unwrap().file_type().is_symlink());
    f.assert_canary_untouched();
}

#[test]
fn content_over_the_limit_is_refused() {
    let f = Fixture::new();
    let layer = Tar::default().file("a", &[1; 600]).file("b", &[2; 600]).bytes();
    let limits = Limits { max_bytes: 1000, max_entries: 100 };
    let err = f.apply_limited(&[layer], limits).unwrap_err();
    assert!(matches!(err, ExtractError::TooLarge { limit: 1000, .. }), "{err}");
    assert!(!f.at("b").exists(), "nothing past the limit is written");
    let many = (0..20).fold(Tar::default(), |t, i| t.file(&format!("f{i}"), b"x")).bytes();
    let err = f.apply_limited(&[many], Limits { max_bytes: 1 << 20, max_entries: 10 }).unwrap_err();
    assert!(matches!(err, ExtractError::TooManyEntries { .. }), "{err}");
}

#[test]
fn whiteouts_remove_lower_entries_and_spare_the_same_layer() {
    let f = Fixture::new();
    let lower = Tar::default()
        .dir("d")
        .file("d/gone", b"1")
        .file("d/kept", b"2")
        .dir("tree")
        .file("tree/x", b"3")
        .bytes();
    let upper = Tar::default()
        .file("d/.wh.gone", b"")
        .file("new", b"n")
        .file(".wh.new", b"")
        .file(".wh.tree", b"")
        .bytes();
    f.apply(&[lower, upper]).unwrap();
    assert!(!f.at("d/gone").exists());
    assert!(f.at("d/kept").exists());
    assert!(!f.at("tree").exists(), "a whiteout removes a whole directory");
    assert!(f.at("new").exists(), "a whiteout never removes what its own layer created");
    assert!(!f.at("d/.wh.gone").exists() && !f.at(".wh.new").exists(), "whiteout markers are not extracted");
}

#[test]
fn opaque_directories_hide_lower_content_only() {
    let f = Fixture::new();
    let lower = Tar::default().dir("o").file("o/lower", b"1").dir("o/sub").file("o/sub/deep", b"2").bytes();
    // The marker comes after an entry of its own layer: that entry must survive.
    let upper =
        Tar::default().dir("o").file("o/upper", b"3").dir("o/sub").file("o/.wh..wh..opq", b"").bytes();
    f.apply(&[lower, upper]).unwrap();
    assert!(!f.at("o/lower").exists());
    assert!(f.at("o/upper").exists());
    assert!(f.at("o/sub").is_dir(), "re-declared in this layer");
    assert!(!f.at("o/sub/deep").exists(), "lower content under a re-declared directory is hidden too");
}

#[test]
fn modes_setuid_and_directory_mtimes_survive() {
    let f = Fixture::new();
    let layer = Tar::default()
        .dir("bin")
        .entry("bin/su", tar::EntryType::Regular, 0o4755, b"#!", None)
        .entry("tmp", tar::EntryType::Directory, 0o1777, b"", None)
        .file("bin/other", b"x")
        .bytes();
    f.apply(&[layer]).unwrap();
    assert_eq!(std::fs::metadata(f.at("bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(f.at("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::metadata(f.at("bin")).unwrap().mtime(), 1_700_000_000, "set after its children");
}

#[test]
fn a_file_replaces_a_directory_and_a_directory_merges() {
    let f = Fixture::new();
    let lower = Tar::default().dir("x").file("x/inner", b"1").dir("m").file("m/a", b"a").bytes();
    let upper = Tar::default().file("x", b"now a file").dir("m").file("m/b", b"b").bytes();
    f.apply(&[lower, upper]).unwrap();
    assert_eq!(std::fs::read(f.at("x")).unwrap(), b"now a file");
    assert!(f.at("m/a").exists() && f.at("m/b").exists());
    let _ = Path::new("");
}
