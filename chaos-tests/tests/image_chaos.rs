//! Pulls under faults: a daemon killed mid-pull, a registry link that drops, prunes racing
//! ten pulling clients, a full disk.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::proxy::TestProxy;
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::{DaemonOpts, TestDaemon, bin, capable, is_root, noise, stderr, stdout, verify_blob_cache};

fn registry_or_skip() -> Option<TestRegistry> {
    capable("registry", registry::available(), "docker-registry is not installed").then(TestRegistry::start)
}

async fn push_big(reg: &TestRegistry, repo: &str, mb: usize) -> oci::Image {
    let layer = LayerTar::default().file("big", &noise(mb << 20, mb as u64)).bytes();
    let image = oci::image(&[layer], Compression::None, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, repo, Some("v1"), &image).await;
    image
}

fn partial_bytes(state: &std::path::Path) -> u64 {
    std::fs::read_dir(state.join("cache/oci/blobs/sha256"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pull_killed_halfway_resumes_after_restart() {
    let Some(reg) = registry_or_skip() else { return };
    push_big(&reg, "chaos/resume", 8).await;
    let proxy = TestProxy::start(&reg.addr);
    proxy.behaviour.rate.store(2 << 20, Ordering::SeqCst);
    let mut d = TestDaemon::start().await;
    let reference = format!("{}/chaos/resume:v1", proxy.addr);

    let mut pulling = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while partial_bytes(d.dir.path()) < 2 << 20 {
        assert!(Instant::now() < deadline, "the download never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.kill9();
    let _ = pulling.wait();
    let kept = partial_bytes(d.dir.path());
    assert!((2 << 20..8 << 20).contains(&kept), "half a blob is on disk ({kept} bytes)");

    proxy.behaviour.rate.store(0, Ordering::SeqCst);
    d.restart().await;
    let out = d.cli(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed = proxy.ranges().iter().any(|r| {
        r.strip_prefix("bytes=")
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    });
    assert!(resumed, "the second pull asked for the rest with a Range request: {:?}", proxy.ranges());
    assert_eq!(verify_blob_cache(d.dir.path()), 2, "config and layer, both verified, nothing partial");
}

#[tokio::test]
async fn a_registry_that_cuts_connections_mid_blob_is_retried() {
    let Some(reg) = registry_or_skip() else { return };
    push_big(&reg, "chaos/cuts", 4).await;
    let proxy = TestProxy::start(&reg.addr);
    proxy.behaviour.cut_after.store(1 << 20, Ordering::SeqCst);
    proxy.behaviour.cuts_left.store(3, Ordering::SeqCst);
    let d = TestDaemon::start().await;
    let out = d.cli(&["image", "pull", &format!("{}/chaos/cuts:v1", proxy.addr)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("retrying"), "the retries are shown: {}", stderr(&out));
    assert_eq!(verify_blob_cache(d.dir.path()), 2);

    // A link that never holds: a clear error after the retries, no image, nothing half-written.
    push_big(&reg, "chaos/never", 2).await;
    proxy.behaviour.cut_after.store(64 << 10, Ordering::SeqCst);
    proxy.behaviour.cuts_left.store(usize::MAX, Ordering::SeqCst);
    let out = d.cli(&["image", "pull", &format!("{}/chaos/never:v1", proxy.addr)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("after 5 attempts"), "{}", stderr(&out));
    assert!(!d.dir.path().join("images/never").exists());
    // The earlier blobs and the new config are verified; the broken layer's bytes are kept, as a
    // partial, for the next pull to resume.
    assert_eq!(chaos_tests::verify_blob_cache_keeping_partials(d.dir.path()), (3, 1));
}

#[tokio::test]
async fn prune_racing_ten_pulling_clients_never_breaks_an_image() {
    let Some(reg) = registry_or_skip() else { return };
    let mut contents = vec![];
    for i in 0..3u64 {
        let data = noise(200_000, i + 7);
        let image = oci::image(
            &[LayerTar::default().file("data", &data).bytes()],
            Compression::Gzip,
            Format::Oci,
            "amd64",
            &["/bin/sh"],
        );
        oci::push(&reg.addr, &format!("race/img{i}"), Some("v1"), &image).await;
        contents.push(data);
    }
    let d = TestDaemon::start().await;
    let state = d.dir.path().to_path_buf();
    let rounds = 4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut prunes = 0;
            while !stop.load(Ordering::SeqCst) {
                let out = chaos_tests::banger(&state, &["image", "cache", "prune"]);
                assert!(out.status.success(), "prune failed: {}", stderr(&out));
                assert!(stdout(&out).starts_with("freed "), "{}", stdout(&out));
                prunes += 1;
            }
            prunes
        })
    };
    let clients: Vec<_> = (0..10)
        .map(|c| {
            let (state, addr) = (state.clone(), reg.addr.clone());
            std::thread::spawn(move || {
                let mut ok = vec![];
                for r in 0..rounds {
                    let i = (c + r) % 3;
                    let name = format!("c{c}-r{r}");
                    let out = chaos_tests::banger(
                        &state,
                        &["image", "pull", &format!("{addr}/race/img{i}:v1"), "--name", &name],
                    );
                    assert!(out.status.success(), "{name}: {}", stderr(&out));
                    ok.push((name, i));
                }
                ok
            })
        })
        .collect();
    let pulled: Vec<(String, usize)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::SeqCst);
    let prunes = pruner.join().unwrap();
    assert!(prunes >= 2, "prunes really raced the pulls ({prunes})");
    assert_eq!(pulled.len(), 10 * rounds);
    for (name, i) in pulled {
        let rootfs = state.join("images").join(&name).join("rootfs.ext4");
        let fsck = Command::new("e2fsck").arg("-fn").arg(&rootfs).output().unwrap();
        assert!(fsck.status.success(), "{name}: e2fsck failed");
        let cat = Command::new("debugfs").args(["-R", "cat /data"]).arg(&rootfs).output().unwrap();
        assert!(cat.stdout == contents[i], "{name}: content differs from img{i}");
    }
    verify_blob_cache(&state);
}

#[tokio::test]
async fn a_full_disk_fails_cleanly_and_keeps_existing_images() {
    let Some(reg) = registry_or_skip() else { return };
    if !capable("root", is_root(), "mounting a small tmpfs needs root") {
        return;
    }
    let small = LayerTar::default().file("hello", b"hi").bytes();
    let image = oci::image(&[small], Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "full/small", Some("v1"), &image).await;
    push_big(&reg, "full/big", 48).await;

    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96M", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let d = TestDaemon::start_in(dir, DaemonOpts::default()).await;
    let out = d.cli(&["image", "pull", &format!("{}/full/small:v1", reg.addr), "--name", "small"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // 48 MiB of blob, then 48 MiB of files, then an ext4 of ~120 MiB: it cannot fit in 96 MiB.
    let out = d.cli(&["image", "pull", &format!("{}/full/big:v1", reg.addr)]);
    assert!(!out.status.success(), "the pull must fail on a full disk");
    let err = stderr(&out);
    assert!(
        err.contains("No space left") || err.contains("no space left") || err.contains("larger --size"),
        "{err}"
    );
    let list = stdout(&d.cli(&["image", "ls"]));
    assert!(list.contains("small") && !list.contains("big"), "{list}");
    let leftovers: Vec<_> =
        std::fs::read_dir(d.dir.path().join("images")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec!["small"], "no half-written image or staging dir");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(d.dir.path().join("images/small/rootfs.ext4"))
        .output()
        .unwrap();
    assert!(fsck.status.success(), "the existing image is intact");
}
