//! `banger image cache prune`: what it prints, that it waits for pulls in flight and holds new
//! ones back without blocking the daemon, and that prunes arriving together share one run.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::proxy::TestProxy;
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::{TestDaemon, banger, bin, capable, stderr, stdout};

fn registry_or_skip() -> Option<TestRegistry> {
    capable("registry", registry::available(), "docker-registry is not installed").then(TestRegistry::start)
}

#[tokio::test]
async fn prune_reports_what_it_frees_and_a_missing_cache_is_zero() {
    let d = TestDaemon::start().await;
    let cache = d.dir.path().join("cache/oci/blobs/sha256");
    let out = d.cli(&["image", "cache", "prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("would free 0 B across 0 blob(s) in {}\n", cache.display()));

    std::fs::create_dir_all(&cache).unwrap();
    for i in 0..47 {
        std::fs::write(cache.join(format!("{i:064x}")), vec![0u8; 1 << 20]).unwrap();
    }
    let out = d.cli(&["image", "cache", "prune", "--dry-run"]);
    assert_eq!(stdout(&out), format!("would free 47.0 MiB across 47 blob(s) in {}\n", cache.display()));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 47, "a dry run deletes nothing");
    let out = d.cli(&["image", "cache", "prune", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["freed_bytes"].as_u64(), v["blobs"].as_u64(), v["dry_run"].as_bool()),
        (Some(47 << 20), Some(47), Some(false))
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

#[tokio::test]
async fn prune_waits_for_inflight_pulls_and_concurrent_prunes_coalesce() {
    let Some(reg) = registry_or_skip() else { return };
    let layer = LayerTar::default().file("big", &vec![1u8; 6 << 20]).bytes();
    let image = oci::image(&[layer], Compression::None, Format::Oci, "amd64", &["/bin/sh"]);
    oci::push(&reg.addr, "prune/slow", Some("v1"), &image).await;
    let small = oci::image(
        &[LayerTar::default().file("s", b"s").bytes()],
        Compression::Gzip,
        Format::Oci,
        "amd64",
        &["/bin/sh"],
    );
    oci::push(&reg.addr, "prune/small", Some("v1"), &small).await;
    let proxy = TestProxy::start(&reg.addr);
    proxy.behaviour.rate.store(3 << 20, Ordering::SeqCst);
    let d = TestDaemon::start().await;
    let state = d.dir.path().to_path_buf();

    let spawn = |args: &[&str]| {
        Command::new(bin("banger"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let slow = spawn(&["image", "pull", &format!("{}/prune/slow:v1", proxy.addr)]);
    let started = Instant::now();
    while !d
        .status()
        .await
        .root
        .children
        .iter()
        .any(|c| c.detail.as_deref().is_some_and(|x| x.starts_with("1 pull(s) in flight")))
    {
        assert!(started.elapsed() < Duration::from_secs(10), "the pull never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let prunes: Vec<_> = (0..3).map(|_| spawn(&["image", "cache", "prune"])).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the prune waits, the daemon answers at once and says what is going on…
    let t = Instant::now();
    let status = d.status().await;
    let listed = d.cli(&["image", "ls"]);
    assert!(t.elapsed() < Duration::from_secs(1), "status and image ls answered in {:?}", t.elapsed());
    assert!(listed.status.success());
    let images = status.root.children.iter().find(|c| c.name == "images").unwrap();
    assert_eq!(images.detail.as_deref(), Some("1 pull(s) in flight, 0 held, prune waiting for pulls"));
    // …and a new pull is held back until the prune is done.
    let held = spawn(&["image", "pull", &format!("{}/prune/small:v1", reg.addr)]);

    let slow = slow.wait_with_output().unwrap();
    assert!(slow.status.success(), "{}", String::from_utf8_lossy(&slow.stderr));
    let reports: Vec<String> = prunes
        .into_iter()
        .map(|p| String::from_utf8(p.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    // One run served all three: each reports the slow pull's blobs, which only the first
    // deletion could have found.
    assert!(reports[0].starts_with("freed 6.0 MiB across 2 blob(s)"), "{reports:?}");
    assert!(reports.iter().all(|r| r == &reports[0]), "prunes arriving together share one run: {reports:?}");
    let held = held.wait_with_output().unwrap();
    assert!(held.status.success());
    assert!(
        String::from_utf8_lossy(&held.stderr).contains("waiting for a cache prune to finish"),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    assert!(
        stdout(&banger(&state, &["image", "ls"])).contains("slow"),
        "the image pulled before the prune is intact"
    );
}
