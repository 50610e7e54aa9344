//! Only the owner (and root, and a configured group) may use the daemon; only the owner uid may
//! use the helper. Checked twice: by the socket's mode and by SO_PEERCRED on every connection.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use chaos_tests::{DaemonOpts, TestDaemon, TestHelper, bin, capable, is_root, other_user, stderr, stdout};

fn as_other(program: &Path, args: &[&str]) -> Output {
    let (uid, gid) = other_user();
    Command::new(program).args(args).env("NO_COLOR", "1").uid(uid).gid(gid).output().unwrap()
}

fn banger_as_other(d: &TestDaemon, args: &[&str]) -> Output {
    let mut all = vec!["--state-dir", d.dir.path().to_str().unwrap()];
    all.extend(args);
    as_other(&bin("banger"), &all)
}

#[tokio::test]
async fn another_uid_is_refused_by_the_daemon() {
    if !capable("root", is_root(), "creating a second user and switching to it needs root") {
        return;
    }
    let d = TestDaemon::start().await;
    assert_eq!(std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777, 0o600);

    // The socket's mode stops them first; the CLI says what to do.
    let out = banger_as_other(&d, &["daemon", "status"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(stderr(&out).contains("error: permission denied on"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: "), "{}", stderr(&out));

    // A socket whose mode was loosened by mistake still refuses them, by SO_PEERCRED.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = banger_as_other(&d, &["daemon", "status"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(stderr(&out).contains("(banger-test-other) may not use this bangerd"), "{}", stderr(&out));
    let probe =
        as_other(Path::new(env!("CARGO_BIN_EXE_banger-probe")), &["daemon", d.socket.to_str().unwrap()]);
    assert!(stdout(&probe).contains("\"refused\":\"PermissionDenied\""), "{}", stdout(&probe));

    // The daemon keeps serving its owner.
    assert!(d.cli(&["daemon", "status"]).status.success());
}

#[tokio::test]
async fn members_of_the_configured_group_are_admitted() {
    if !capable("root", is_root(), "creating a second user and switching to it needs root") {
        return;
    }
    other_user();
    let opts =
        DaemonOpts { extra_args: vec!["--group".into(), "banger-test-other".into()], ..Default::default() };
    let d = TestDaemon::start_with(opts).await;
    assert_eq!(std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777, 0o660);
    let out = banger_as_other(&d, &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("daemon: bangerd"), "{}", stdout(&out));
    // A member uses the daemon; only its owner (or root) stops it.
    let out = banger_as_other(&d, &["daemon", "stop"]);
    assert!(!out.status.success(), "a member must not stop the daemon");
    assert!(stderr(&out).contains("only the daemon's owner or root may stop it"), "{}", stderr(&out));
    assert!(d.cli(&["daemon", "status"]).status.success(), "still serving");
}

#[tokio::test]
async fn another_uid_is_refused_by_the_helper() {
    if !capable("root", is_root(), "banger-helper runs as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = TestHelper::start(&dir.path().join("helper.sock"), 0).await;
    let probe = Path::new(env!("CARGO_BIN_EXE_banger-probe"));
    let out = as_other(probe, &["helper", h.socket.to_str().unwrap()]);
    assert!(stdout(&out).contains("Permission denied"), "the 0600 socket stops them: {}", stdout(&out));

    std::fs::set_permissions(&h.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_other(probe, &["helper", h.socket.to_str().unwrap()]);
    assert!(stdout(&out).contains("\"refused\":\"PermissionDenied\""), "{}", stdout(&out));
    assert!(stdout(&out).contains("serves only root (uid 0)"), "{}", stdout(&out));
    // The owner is still served.
    let out = Command::new(probe).args(["helper", h.socket.to_str().unwrap()]).output().unwrap();
    assert_eq!(stdout(&out).trim(), "{\"ok\":true}");
}
