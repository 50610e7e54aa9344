//! Pulls from a real registry through the real daemon and CLI, compared against umoci.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::{TestDaemon, capable, stderr, stdout};

fn registry_or_skip() -> Option<TestRegistry> {
    capable(
        "registry",
        registry::available(),
        "docker-registry is not installed (scripts/dev setup installs it)",
    )
    .then(TestRegistry::start)
}

#[tokio::test]
async fn a_simple_image_pulls_and_lists() {
    let Some(reg) = registry_or_skip() else { return };
    let layer = LayerTar::default().dir("etc").file("etc/hello", b"hello from a layer\n").bytes();
    let image = oci::image(&[layer], Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "test/simple", Some("v1"), &image).await;
    let d = TestDaemon::start().await;
    let reference = format!("{}/test/simple:v1", reg.addr);
    let out = d.cli(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("pulled simple-v1 ("), "{}", stdout(&out));
    let list = stdout(&d.cli(&["image", "ls"]));
    assert!(list.contains("simple-v1"), "{list}");
}

use std::path::Path;
use std::process::Command;

use chaos_tests::oci::Entry;
use chaos_tests::tree::{self, Mounted};
use tar::EntryType;

/// Three layers exercising what a flattener must get right.
fn feature_layers() -> Vec<Vec<u8>> {
    let l1 = LayerTar::default()
        .dir("etc")
        .dir("bin")
        .dir("dev")
        .entry(Entry { mode: 0o1777, ..Entry::new("tmp", EntryType::Directory) })
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/gone", b"whited out later\n")
        .dir("etc/removed")
        .file("etc/removed/inner", b"x")
        .dir("opaque")
        .file("opaque/lower", b"hidden by an opaque marker\n")
        .entry(Entry { mode: 0o4755, data: b"#!/bin/sh\n", ..Entry::new("bin/su", EntryType::Regular) })
        .entry(Entry { mode: 0o2755, data: b"#!/bin/sh\n", ..Entry::new("bin/sgid", EntryType::Regular) })
        .entry(Entry {
            mode: 0o755,
            data: b"\x7fELF fake busybox",
            ..Entry::new("bin/busybox", EntryType::Regular)
        })
        .symlink("bin/sh", "busybox")
        .symlink("etc/alt", "/etc/passwd")
        .hardlink("bin/hard", "bin/busybox")
        .entry(Entry { mode: 0o666, device: (1, 3), ..Entry::new("dev/null", EntryType::Char) })
        .entry(Entry { mode: 0o660, gid: 6, device: (8, 0), ..Entry::new("dev/sda", EntryType::Block) })
        .entry(Entry { mode: 0o600, ..Entry::new("dev/initctl", EntryType::Fifo) })
        .entry(Entry { mode: 0o755, uid: 1000, gid: 1000, ..Entry::new("home", EntryType::Directory) })
        .entry(Entry { mode: 0o700, uid: 1000, gid: 1000, ..Entry::new("home/user", EntryType::Directory) })
        .entry(Entry {
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            data: b"mine\n",
            ..Entry::new("home/user/notes", EntryType::Regular)
        })
        .entry(Entry {
            data: b"tagged\n",
            xattrs: &[("user.banger", b"hello")],
            ..Entry::new("etc/tagged", EntryType::Regular)
        })
        .bytes();
    let l2 = LayerTar::default()
        .file("etc/.wh.gone", b"")
        .file("etc/.wh.removed", b"")
        .file("opaque/upper", b"from layer 2\n")
        .file("opaque/.wh..wh..opq", b"")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
        .file("./var/log/relative", b"a ./-prefixed path\n")
        .bytes();
    let l3 = LayerTar::default()
        .entry(Entry {
            mode: 0o755,
            data: b"#!/bin/sh\necho tool\n",
            ..Entry::new("/usr/bin/tool", EntryType::Regular)
        })
        .symlink("bin/sh", "/bin/busybox")
        .bytes();
    vec![l1, l2, l3]
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) {
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci unpack failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// umoci's flattening of the feature layers (as an OCI gzip image: umoci 0.4 reads no zstd and
/// no docker media types; the layers, and so the expected tree, are the same in every format).
fn umoci_reference() -> (tempfile::TempDir, std::collections::BTreeMap<std::path::PathBuf, tree::Node>) {
    let image = oci::image(&feature_layers(), Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci::write_layout(&layout, "ref", &image);
    let bundle = work.path().join("bundle");
    umoci_unpack(&layout, "ref", &bundle);
    let tree = tree::walk(&bundle.join("rootfs"));
    (work, tree)
}

async fn pull_and_compare(
    reg: &TestRegistry,
    d: &TestDaemon,
    reference: &std::collections::BTreeMap<std::path::PathBuf, tree::Node>,
    compression: Compression,
    format: Format,
    tag: &str,
) {
    let image = oci::image(&feature_layers(), compression, format, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "test/features", Some(tag), &image).await;
    let out = d.cli(&["image", "pull", &format!("{}/test/features:{tag}", reg.addr), "--name", tag]);
    assert!(out.status.success(), "{tag}: {}", stderr(&out));

    let rootfs = d.dir.path().join("images").join(tag).join("rootfs.ext4");
    let fsck = Command::new("e2fsck").arg("-fn").arg(&rootfs).output().unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let listing = Command::new("debugfs").args(["-R", "ls -p /bin"]).arg(&rootfs).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l.contains("/104755/0/0/su/")), "debugfs sees setuid su: {listing}");

    let mounted = Mounted::ext4(&rootfs);
    let mut ours = tree::walk(mounted.dir.path());
    ours.remove(Path::new("lost+found"));
    let diff = tree::diff(&ours, reference);
    assert!(diff.is_empty(), "{tag}: banger and umoci disagree:\n{}", diff.join("\n"));
    assert!(reference.len() > 20, "the comparison covered {} paths", reference.len());

    assert_eq!(
        xattr(&mounted.dir.path().join("etc/tagged"), "user.banger"),
        b"hello",
        "{tag}: xattr survives into ext4"
    );
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "no xattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
    buf[..len as usize].to_vec()
}

#[tokio::test]
async fn flattening_matches_umoci_for_every_format() {
    let Some(reg) = registry_or_skip() else { return };
    if !capable("root", chaos_tests::is_root(), "owners, devices and loop mounts need root") {
        return;
    }
    let d = TestDaemon::start().await;
    let (_work, reference) = umoci_reference();
    for (compression, format, tag) in [
        (Compression::Gzip, Format::Oci, "oci-gzip"),
        (Compression::Zstd, Format::Oci, "oci-zstd"),
        (Compression::None, Format::Oci, "oci-plain"),
        (Compression::Gzip, Format::Docker, "docker-v2"),
        (Compression::None, Format::Docker, "docker-v2-plain"),
    ] {
        pull_and_compare(&reg, &d, &reference, compression, format, tag).await;
    }
}

#[tokio::test]
async fn a_cached_pull_fetches_no_blobs() {
    let Some(reg) = registry_or_skip() else { return };
    let layers = vec![
        LayerTar::default().file("a", &[7; 100_000]).bytes(),
        LayerTar::default().file("b", b"b").bytes(),
    ];
    let image = oci::image(&layers, Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "test/cached", Some("v1"), &image).await;
    let d = TestDaemon::start().await;
    let reference = format!("{}/test/cached:v1", reg.addr);
    let before = reg.blob_gets();
    assert!(d.cli(&["image", "pull", &reference]).status.success());
    let first = reg.blob_gets() - before;
    assert_eq!(first, 3, "config and two layers fetched once each");
    let out = d.cli(&["image", "pull", &reference, "--name", "again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(reg.blob_gets() - before, first, "the second pull made no blob requests");
    assert!(stderr(&out).contains("2 cached"), "progress says the layers were cached: {}", stderr(&out));
}

#[tokio::test]
async fn a_multi_arch_index_resolves_to_this_host() {
    let Some(reg) = registry_or_skip() else { return };
    let (arch, other) = if cfg!(target_arch = "x86_64") { ("amd64", "arm64") } else { ("arm64", "amd64") };
    let mine = oci::image(
        &[LayerTar::default().file("arch", arch.as_bytes()).bytes()],
        Compression::Gzip,
        Format::Oci,
        arch,
        &["/bin/sh"],
    );
    let theirs = oci::image(
        &[LayerTar::default().file("arch", other.as_bytes()).bytes()],
        Compression::Gzip,
        Format::Oci,
        other,
        &["/bin/sh"],
    );
    oci::push_index(&reg.addr, "test/multi", "v1", &[(other, &theirs), (arch, &mine)]).await;
    oci::push_index(&reg.addr, "test/foreign", "v1", &[(other, &theirs)]).await;
    let d = TestDaemon::start().await;

    let out = d.cli(&["image", "pull", &format!("{}/test/multi:v1", reg.addr), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    let manifest = &last["image"]["source"]["Pulled"]["manifest_digest"];
    assert_eq!(manifest.as_str().unwrap(), oci::sha256(&mine.manifest), "the {arch} manifest was chosen");
    assert!(
        stdout(&out).lines().next().unwrap().starts_with("{\"event\":"),
        "--json streams events as JSON lines"
    );

    let out = d.cli(&["image", "pull", &format!("{}/test/foreign:v1", reg.addr)]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        stderr(&out).contains(&format!("has no image for linux/{arch}; it offers linux/{other}")),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&d.cli(&["image", "ls"])).contains("foreign"), "no image is listed after a failed pull");
}
