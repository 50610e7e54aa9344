//! Hostile layers pulled through the real daemon: each escape attempt is refused with a clear
//! error or confined to the image, no image is listed after a refusal, and a canary file outside
//! the image is never touched.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::MetadataExt;

use chaos_tests::oci::{self, Compression, Entry, Format, LayerTar};
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::tree::Mounted;
use chaos_tests::{DaemonOpts, TestDaemon, capable, is_root, stderr};

struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("canary"), b"untouched").unwrap();
        Canary { dir }
    }
    fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
    fn path(&self) -> String {
        format!("{}/canary", self.dir())
    }
    fn assert_untouched(&self) {
        let p = self.dir.path().join("canary");
        assert_eq!(std::fs::read(&p).unwrap(), b"untouched");
        assert_eq!(std::fs::metadata(&p).unwrap().nlink(), 1);
        assert_eq!(
            std::fs::read_dir(self.dir.path()).unwrap().count(),
            1,
            "nothing appeared beside the canary"
        );
    }
}

struct Setup {
    reg: TestRegistry,
    d: TestDaemon,
}

async fn setup() -> Option<Setup> {
    if !capable("registry", registry::available(), "docker-registry is not installed") {
        return None;
    }
    let opts =
        DaemonOpts { extra_args: vec!["--max-image-bytes".into(), "1000000".into()], ..Default::default() };
    Some(Setup { reg: TestRegistry::start(), d: TestDaemon::start_with(opts).await })
}

impl Setup {
    async fn pull(&self, name: &str, layers: Vec<Vec<u8>>) -> std::process::Output {
        let image = oci::image(&layers, Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
        oci::push(&self.reg.addr, &format!("hostile/{name}"), Some("v1"), &image).await;
        self.d.cli(&["image", "pull", &format!("{}/hostile/{name}:v1", self.reg.addr), "--name", name])
    }

    fn assert_refused(&self, out: &std::process::Output, name: &str, says: &str) {
        assert_eq!(out.status.code(), Some(2), "refused as invalid input: {out:?}");
        assert!(stderr(out).contains(says), "{}", stderr(out));
        assert!(!self.d.dir.path().join("images").join(name).exists(), "no image {name} after a refusal");
        let leftovers: Vec<_> = std::fs::read_dir(self.d.dir.path().join("images")).unwrap().collect();
        assert!(leftovers.is_empty(), "no staging dir is left behind: {leftovers:?}");
    }

    /// Pulls, then checks `rel` inside the mounted image holds `content`.
    fn assert_confined(&self, out: &std::process::Output, name: &str, rel: &str, content: &[u8]) {
        assert!(out.status.success(), "{}", stderr(out));
        if !capable("root", is_root(), "looking inside the ext4 needs a loop mount (root)") {
            return;
        }
        let m = Mounted::ext4(&self.d.dir.path().join("images").join(name).join("rootfs.ext4"));
        assert_eq!(std::fs::read(m.dir.path().join(rel)).unwrap(), content);
    }
}

#[tokio::test]
async fn hostile_dotdot_entry_is_refused() {
    let Some(s) = setup().await else { return };
    let canary = Canary::new();
    let evil = format!("../../../../../../../..{}", canary.path());
    let out = s.pull("dotdot", vec![LayerTar::default().file(&evil, b"pwned").bytes()]).await;
    s.assert_refused(&out, "dotdot", "leaves the root (..)");
    canary.assert_untouched();
}

#[tokio::test]
async fn hostile_absolute_path_is_confined_to_the_image() {
    let Some(s) = setup().await else { return };
    let canary = Canary::new();
    let out = s.pull("absolute", vec![LayerTar::default().file(&canary.path(), b"pwned").bytes()]).await;
    s.assert_confined(&out, "absolute", canary.path().trim_start_matches('/'), b"pwned");
    canary.assert_untouched();
}

#[tokio::test]
async fn hostile_symlink_layer_cannot_write_outside_root() {
    let Some(s) = setup().await else { return };
    let canary = Canary::new();
    let lower = LayerTar::default().symlink("escape", canary.dir()).bytes();
    let upper = LayerTar::default().file("escape/canary", b"pwned").bytes();
    let out = s.pull("symlink", vec![lower, upper]).await;
    s.assert_confined(&out, "symlink", &format!("{}/canary", canary.dir().trim_start_matches('/')), b"pwned");
    canary.assert_untouched();
}

#[tokio::test]
async fn hostile_hardlink_outside_the_root_is_refused() {
    let Some(s) = setup().await else { return };
    let canary = Canary::new();
    let out = s
        .pull(
            "hardlink",
            vec![LayerTar::default().hardlink("evil", &format!("../../../..{}", canary.path())).bytes()],
        )
        .await;
    s.assert_refused(&out, "hardlink", "hard link that leaves the root");
    canary.assert_untouched();
}

#[tokio::test]
async fn hostile_oversized_content_is_refused() {
    let Some(s) = setup().await else { return };
    // 2 MB of zeros compresses to almost nothing: only the uncompressed size gives it away.
    let bomb = vec![0u8; 2_000_000];
    let layer = LayerTar::default()
        .entry(Entry { data: &bomb, ..Entry::new("bomb", tar::EntryType::Regular) })
        .bytes();
    let out = s.pull("bomb", vec![layer]).await;
    s.assert_refused(&out, "bomb", "exceeds the 1000000-byte limit");
}
