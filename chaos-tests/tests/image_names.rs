//! Image names are taken one operation at a time and replaced only when asked: a second import
//! of a name while the first stalls is refused (so the first cannot overwrite it later), an
//! existing name needs `--replace`, and not even that replaces an image VMs were made from.
//! What comes from outside (file names, entries) is printed escaped.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chaos_tests::hostile_registry::HostileRegistry;
use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::vms::VmHost;
use chaos_tests::{TestDaemon, bin, stderr, stdout, wait_until};

fn rootfs_tar(marker: &str) -> Vec<u8> {
    LayerTar::default().dir("etc").file("etc/marker", marker.as_bytes()).bytes()
}

#[tokio::test]
async fn a_second_import_of_a_name_is_refused_while_the_first_stalls() {
    let d = TestDaemon::start().await;
    // The first import reads from a pipe that sends nothing for now.
    let mut first = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(["image", "import", "-", "--name", "racy"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the first import to start", || async {
        (!d.staging_dirs().is_empty()).then_some(())
    })
    .await;

    let file = d.dir.path().join("second.tar");
    std::fs::write(&file, rootfs_tar("second")).unwrap();
    let second = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "racy"]);
    assert_eq!(second.status.code(), Some(4), "refused as a conflict: {}", stderr(&second));
    assert!(stderr(&second).contains("an import of racy is in progress"), "{}", stderr(&second));
    assert!(stderr(&second).contains("hint: wait for it to finish"), "{}", stderr(&second));
    assert!(!d.dir.path().join("images/racy").exists(), "the second made nothing");

    // The first finishes with its own content; nothing of the second is there to overwrite.
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(&rootfs_tar("first")).unwrap();
    drop(stdin);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&d.cli(&["image", "ls"])).contains("import of stdin"));

    // Now the name is taken: another import needs --replace.
    let again = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "racy"]);
    assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
    assert!(stderr(&again).contains("an image named \"racy\" exists already"), "{}", stderr(&again));
    assert!(stderr(&again).contains("--replace"), "the hint names the flag: {}", stderr(&again));
    let replaced = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "racy", "--replace"]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert!(stdout(&d.cli(&["image", "ls"])).contains("second.tar"));
}

#[tokio::test]
async fn a_pull_over_an_existing_name_needs_replace() {
    // The double serves a well-formed image here: no lie needed, and no registry install.
    let reg = HostileRegistry::start();
    let image = oci::image(&[rootfs_tar("pulled")], Compression::Gzip, Format::Oci, "amd64", &["/bin/sh"]);
    reg.image("team/app", "v1", &image.manifest, &image.blobs);
    let d = TestDaemon::start().await;
    let file = d.dir.path().join("local.tar");
    std::fs::write(&file, rootfs_tar("local")).unwrap();
    assert!(d.cli(&["image", "import", file.to_str().unwrap(), "--name", "app"]).status.success());

    let reference = format!("{}/team/app:v1", reg.addr);
    let out = d.cli(&["image", "pull", &reference, "--name", "app"]);
    assert_eq!(out.status.code(), Some(4), "refused as a conflict: {}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(reg.blob_hits("team/app"), 0, "refused before any download");
    assert!(stdout(&d.cli(&["image", "ls"])).contains("import of"), "the imported image is kept");

    let out = d.cli(&["image", "pull", &reference, "--name", "app", "--replace"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&d.cli(&["image", "ls"])).contains(&reference));
}

#[tokio::test]
async fn replace_refuses_an_image_a_vm_was_made_from() {
    let Some(host) = VmHost::start().await else { return };
    host.create("user", "wait");
    let file = host.daemon.dir.path().join("new.tar");
    std::fs::write(&file, rootfs_tar("new")).unwrap();
    let out = host.cli(&["image", "import", file.to_str().unwrap(), "--name", "base", "--replace"]);
    assert_eq!(out.status.code(), Some(4), "refused as a conflict: {}", stderr(&out));
    assert!(stderr(&out).contains("image base is used by VM(s) user"), "{}", stderr(&out));
    let out = host.cli(&["image", "import", file.to_str().unwrap(), "--name", "base"]);
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&host.ok(&["image", "inspect", "base"])).unwrap();
    assert!(
        info["source"].to_string().contains("rootfs.tar"),
        "the image is the one the VM came from: {info}"
    );
}

#[tokio::test]
async fn names_from_outside_print_escaped() {
    let d = TestDaemon::start().await;
    // A file name that would retitle the terminal and forge a line of the listing.
    let hostile = "evil\x1b]0;pwned\x07\nforged  1 MiB.tar";
    let file = d.dir.path().join(hostile);
    std::fs::write(&file, rootfs_tar("x")).unwrap();
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "evil"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for out in [&out, &d.cli(&["image", "ls"])] {
        let text = stdout(out);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "no raw control characters: {text:?}");
        assert!(text.contains("evil\\x1b]0;pwned\\x07\\nforged"), "shown escaped: {text}");
        assert_eq!(text.lines().filter(|l| l.contains("forged")).count(), 1, "no forged line: {text}");
    }
    // JSON escapes by itself, and keeps the name whole.
    let json: serde_json::Value = serde_json::from_str(&stdout(&d.cli(&["image", "ls", "--json"]))).unwrap();
    assert!(json[0]["source"]["Imported"]["file"].as_str().unwrap().ends_with(hostile));

    // An entry of a layer that is refused: its name comes back in the error, escaped.
    let tar = LayerTar::default().file("../\x1b[2J\x1b[31mgotcha", b"x").bytes();
    let bad = d.dir.path().join("bad.tar");
    std::fs::write(&bad, tar).unwrap();
    let out = d.cli(&["image", "import", bad.to_str().unwrap(), "--name", "bad"]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains('\x1b'), "no raw escape in the error: {:?}", stderr(&out));
    assert!(stderr(&out).contains("gotcha"), "{}", stderr(&out));
}
