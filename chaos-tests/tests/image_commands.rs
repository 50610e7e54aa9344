//! `image import`, `inspect`, `rm`, and registry credentials from the user's docker config.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};

use chaos_tests::oci::{self, Compression, Format, LayerTar};
use chaos_tests::registry::{self, TestRegistry};
use chaos_tests::{TestDaemon, bin, capable, stderr, stdout};

fn rootfs_tar() -> Vec<u8> {
    LayerTar::default()
        .dir("etc")
        .file("etc/os-release", b"ID=banger-test\n")
        .symlink("etc/alias", "os-release")
        .bytes()
}

fn debugfs_cat(image: &std::path::Path, path: &str) -> Vec<u8> {
    Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(image).output().unwrap().stdout
}

#[tokio::test]
async fn import_from_a_file_and_from_stdin() {
    let d = TestDaemon::start().await;
    let file = d.dir.path().join("rootfs.tar");
    std::fs::write(&file, rootfs_tar()).unwrap();
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "from-file"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("imported from-file ("), "{}", stdout(&out));
    let rootfs = d.dir.path().join("images/from-file/rootfs.ext4");
    assert_eq!(debugfs_cat(&rootfs, "/etc/os-release"), b"ID=banger-test\n");

    // A gzip tar through a pipe: nothing to seek, the compression told by its magic.
    let mut child = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(["image", "import", "-", "--name", "from-stdin", "--size", "64M", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&oci::compress(&rootfs_tar(), Compression::Gzip)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let last: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["image"]["rootfs_bytes"], 64 << 20, "--size is honoured");
    assert_eq!(last["image"]["source"]["Imported"]["file"], "stdin");
    let rootfs = d.dir.path().join("images/from-stdin/rootfs.ext4");
    assert_eq!(debugfs_cat(&rootfs, "/etc/os-release"), b"ID=banger-test\n");
}

#[tokio::test]
async fn a_hostile_import_is_refused_and_leaves_nothing() {
    let d = TestDaemon::start().await;
    let file = d.dir.path().join("evil.tar");
    std::fs::write(&file, LayerTar::default().file("../../../../etc/evil", b"x").bytes()).unwrap();
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "evil"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("leaves the root"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(d.dir.path().join("images")).unwrap().count(), 0);
    let out = d.cli(&["image", "import", "/nonexistent.tar", "--name", "x"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot open /nonexistent.tar"), "{}", stderr(&out));
    let out = d.cli(&["image", "import", file.to_str().unwrap(), "--name", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid image name"), "{}", stderr(&out));
}

#[tokio::test]
async fn inspect_and_rm() {
    let d = TestDaemon::start().await;
    let file = d.dir.path().join("rootfs.tar");
    std::fs::write(&file, rootfs_tar()).unwrap();
    assert!(d.cli(&["image", "import", file.to_str().unwrap(), "--name", "keep"]).status.success());
    assert!(d.cli(&["image", "import", file.to_str().unwrap(), "--name", "drop"]).status.success());
    let out = d.cli(&["image", "inspect", "keep"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "keep");
    assert!(v["rootfs_bytes"].as_u64().unwrap() >= 64 << 20);

    let out = d.cli(&["image", "rm", "drop"]);
    assert_eq!(stdout(&out), "removed drop\n");
    let out = d.cli(&["image", "inspect", "drop"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no image named \"drop\"")
            && stderr(&out).contains("hint: see `banger image ls`")
    );
    let out = d.cli(&["image", "rm", "drop"]);
    assert_eq!(out.status.code(), Some(3), "removing twice says it is gone");
    let names: Vec<String> =
        serde_json::from_slice::<Vec<serde_json::Value>>(&d.cli(&["image", "ls", "--json"]).stdout)
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(names, ["keep"]);
}

/// A registry that wants a password: docker config `auths`, a `credHelpers` entry and a
/// `credsStore` each get the CLI in; without them the error says to log in.
#[tokio::test]
async fn credentials_come_from_the_docker_config() {
    if !capable("registry", registry::available(), "docker-registry is not installed") {
        return;
    }
    let reg = TestRegistry::start_with_password("tester", "s3cret");
    let image = oci::image(
        &[LayerTar::default().file("x", b"x").bytes()],
        Compression::Gzip,
        Format::Oci,
        "amd64",
        &["/bin/sh"],
    );
    oci::push_with_auth(&reg.addr, "private/app", "v1", &image, ("tester", "s3cret")).await;
    let d = TestDaemon::start().await;
    let reference = format!("{}/private/app:v1", reg.addr);
    let docker = tempfile::tempdir().unwrap();
    let pull = |name: &str, path: &str| {
        Command::new(bin("banger"))
            .arg("--state-dir")
            .arg(d.dir.path())
            .args(["image", "pull", &reference, "--name", name])
            .env("DOCKER_CONFIG", docker.path())
            .env("PATH", path)
            .output()
            .unwrap()
    };
    let path = format!("{}:{}", docker.path().display(), std::env::var("PATH").unwrap_or_default());

    let out = pull("anon", &path);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(stderr(&out).contains("hint: log in first"), "{}", stderr(&out));

    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let config = |body: &str| std::fs::write(docker.path().join("config.json"), body).unwrap();
    config(&format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, encode(b"tester:s3cret")));
    let out = pull("with-auths", &path);
    assert!(out.status.success(), "auths: {}", stderr(&out));

    // A credential helper on PATH, speaking the docker-credential protocol.
    let helper = docker.path().join("docker-credential-banger-test");
    std::fs::write(&helper, "#!/bin/sh\nread reg\necho '{\"ServerURL\":\"'$reg'\",\"Username\":\"tester\",\"Secret\":\"s3cret\"}'\n").unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config(&format!(r#"{{"credHelpers":{{"{}":"banger-test"}}}}"#, reg.addr));
    let out = pull("with-helper", &path);
    assert!(out.status.success(), "credHelpers: {}", stderr(&out));
    config(r#"{"credsStore":"banger-test"}"#);
    let out = pull("with-store", &path);
    assert!(out.status.success(), "credsStore: {}", stderr(&out));

    config(r#"{"credsStore":"missing-helper"}"#);
    let out = pull("broken", &path);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stderr(&out).contains("credential helper docker-credential-missing-helper failed"),
        "{}",
        stderr(&out)
    );
}
