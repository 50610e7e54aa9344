//! Work nobody waits for stops: a tar with an absurd number of entries is refused before mkfs
//! by a limit the error names; a client that hangs up mid-import cancels it (mkfs killed,
//! staging removed); and a `kill -9` of bangerd during mkfs leaves no mkfs running on.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::oci::LayerTar;
use chaos_tests::{DaemonOpts, TestDaemon, bin, processes, stderr, wait_until};

/// A tar of `n` empty files: cheap to send, slow for mkfs.ext4 -d.
fn many_files(n: usize) -> Vec<u8> {
    let mut tar = LayerTar::default().dir("d");
    for i in 0..n {
        tar = tar.file(&format!("d/f{i}"), b"");
    }
    tar.bytes()
}

fn mkfs_of(d: &TestDaemon) -> Vec<(u32, String)> {
    processes("mkfs.ext4", d.dir.path().to_str().unwrap())
}

/// Starts `banger image import FILE --name NAME` and waits until its mkfs.ext4 runs.
async fn import_until_mkfs(d: &TestDaemon, name: &str) -> Child {
    let file = d.dir.path().join(format!("{name}.tar"));
    std::fs::write(&file, many_files(20_000)).unwrap();
    let child = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(["image", "import", file.to_str().unwrap(), "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(120), "mkfs.ext4 to start", || async {
        (!mkfs_of(d).is_empty()).then_some(())
    })
    .await;
    child
}

#[tokio::test]
async fn a_tar_of_too_many_entries_is_refused_before_mkfs() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("bangerd.toml");
    std::fs::write(&settings, "[images]\nmax_image_entries = 1000\n").unwrap();
    let opts = DaemonOpts {
        extra_args: vec!["--config".into(), settings.to_str().unwrap().into()],
        ..Default::default()
    };
    let d = TestDaemon::start_with(opts).await;
    let file = d.dir.path().join("many.tar");
    std::fs::write(&file, many_files(100_000)).unwrap();
    let started = Instant::now();
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "many"]);
    assert_eq!(out.status.code(), Some(2), "refused as invalid input: {}", stderr(&out));
    assert!(stderr(&out).contains("more than 1000 entries"), "the error names the limit: {}", stderr(&out));
    assert!(stderr(&out).contains("max_image_entries"), "and the setting: {}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30), "refused quickly: {:?}", started.elapsed());
    assert!(!d.log_text().contains("building ext4") && mkfs_of(&d).is_empty(), "mkfs never ran");
    assert!(d.staging_dirs().is_empty(), "no staging left: {:?}", d.staging_dirs());
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_import() {
    let d = TestDaemon::start().await;

    // During mkfs: mkfs is killed, the staging dir goes, no image appears.
    let mut client = import_until_mkfs(&d, "slow").await;
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until(Duration::from_secs(15), "mkfs.ext4 to be killed", || async {
        mkfs_of(&d).is_empty().then_some(())
    })
    .await;
    wait_until(Duration::from_secs(15), "the staging dir to go", || async {
        d.staging_dirs().is_empty().then_some(())
    })
    .await;
    assert!(!d.dir.path().join("images/slow").exists());

    // While reading a pipe that sends nothing: the read stops, the staging dir goes, and the
    // name is free again.
    let mut stalled = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(["image", "import", "-", "--name", "slow"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the import to start", || async {
        (!d.staging_dirs().is_empty()).then_some(())
    })
    .await;
    // The pipe's write end stays open in `stalled.stdin`: only the hang-up can end this import.
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    wait_until(Duration::from_secs(15), "the staging dir to go", || async {
        d.staging_dirs().is_empty().then_some(())
    })
    .await;
    let file = d.dir.path().join("small.tar");
    std::fs::write(&file, LayerTar::default().dir("etc").bytes()).unwrap();
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "slow"]);
    assert!(out.status.success(), "the name is free again: {}", stderr(&out));
    assert!(d.log_text().contains("import cancelled: the client went away"), "{}", d.log_text());
}

#[tokio::test]
async fn kill_9_of_bangerd_during_mkfs_leaves_no_mkfs_running() {
    let mut d = TestDaemon::start().await;
    let mut client = import_until_mkfs(&d, "orphan").await;
    d.kill9();
    wait_until(Duration::from_secs(5), "mkfs.ext4 to die with bangerd", || async {
        mkfs_of(&d).is_empty().then_some(())
    })
    .await;
    let _ = client.kill();
    let _ = client.wait();
    // The next daemon removes the staging dir the crash left.
    d.restart().await;
    wait_until(Duration::from_secs(10), "the leftover staging dir to go", || async {
        d.staging_dirs().is_empty().then_some(())
    })
    .await;
}
