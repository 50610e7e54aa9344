//! The real `banger` binary against a real daemon: versions, the status tree, daemon start and
//! stop without systemd, advice on failure, completions and unit files.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::protocol::handshake::{PROTOCOL_MAX, PROTOCOL_MIN};
use chaos_tests::{TestDaemon, banger, capable, is_root, stderr, stdout};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test]
async fn version_reports_client_and_daemon() {
    let d = TestDaemon::start().await;
    let out = d.cli(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("client: banger 0.1.0 (protocol {PROTOCOL_MIN}..={PROTOCOL_MAX})")),
        "{text}"
    );
    assert!(text.contains(&format!("daemon: bangerd 0.1.0 (protocol {PROTOCOL_MAX}")), "{text}");
    let v = json(&d.cli(&["version", "--json"]));
    assert_eq!(v["client"]["software"], "banger 0.1.0");
    assert_eq!(v["daemon"]["protocol"], PROTOCOL_MAX);
}

#[test]
fn without_a_daemon_the_cli_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = banger(dir.path(), &["daemon", "status"]);
    assert_eq!(out.status.code(), Some(6), "Unavailable exits 6");
    let err = stderr(&out);
    assert!(err.starts_with("error: bangerd is not running (nothing answers on "), "{err}");
    assert!(err.contains("hint: start it with `banger daemon start`"), "{err}");
    let out = banger(dir.path(), &["version", "--json"]);
    assert_eq!(out.status.code(), Some(6));
    let v = json(&out);
    assert_eq!(v["client"]["software"], "banger 0.1.0");
    assert_eq!(v["daemon"]["error"]["kind"], "Unavailable");
}

#[tokio::test]
async fn status_shows_the_actor_tree() {
    let d = TestDaemon::start().await;
    let out = d.cli(&["daemon", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in
        ["supervisor running", "├─ store      running", "├─ helper     running", "└─ api        running"]
    {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains(&format!("pid {}", d.pid())), "{text}");
    assert!(!text.contains('\x1b'), "no colour without a terminal");
    let v = json(&d.cli(&["daemon", "status", "--json"]));
    let names: Vec<&str> =
        v["root"]["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["store", "helper", "images", "kernels", "network", "vms", "api"]);
    assert_eq!(v["root"]["children"][0]["state"], "Running");
    assert_eq!(v["pid"], d.pid());
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops whatever a test started with `daemon start`, even when the test fails.
struct StopOnDrop<'a>(&'a Path);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = banger(self.0, &["daemon", "stop"]);
    }
}

fn started_pid(out: &std::process::Output) -> u32 {
    assert!(out.status.success(), "start failed: {}", stderr(out));
    let v = json(out);
    v["pid"].as_u64().unwrap() as u32
}

#[test]
fn daemon_start_and_stop_without_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _stop = StopOnDrop(state);
    let pid = started_pid(&banger(state, &["daemon", "start", "--json"]));
    assert!(alive(pid));
    let again = banger(state, &["daemon", "start"]);
    assert!(stdout(&again).contains(&format!("bangerd is already running (pid {pid}")), "{}", stdout(&again));

    let helper_pid = std::fs::read_to_string(state.join("run/helper.pid")).ok();
    if capable("root", is_root(), "`daemon start` starts banger-helper only as root") {
        let status = stdout(&banger(state, &["daemon", "status"]));
        assert!(status.contains("connected to banger-helper"), "{status}");
        assert!(helper_pid.is_some(), "the helper wrote its pid file");
    }

    if is_root() {
        // A helper that died is started again by `daemon start`; the daemon reconnects to it.
        let old = helper_pid.as_deref().unwrap().trim().parse::<i32>().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_dead(old as u32);
        let again = banger(state, &["daemon", "start"]);
        assert!(stdout(&again).contains("already running"), "{}", stdout(&again));
        let new = std::fs::read_to_string(state.join("run/helper.pid")).unwrap();
        assert_ne!(new.trim(), old.to_string(), "a new helper runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stdout(&banger(state, &["daemon", "status"])).contains("connected to banger-helper") {
            assert!(Instant::now() < deadline, "the daemon did not reconnect to the new helper");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let restarted = banger(state, &["daemon", "restart", "--json"]);
    let new_pid = started_pid(&restarted);
    assert_ne!(new_pid, pid);
    wait_dead(pid);

    let out = banger(state, &["daemon", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "bangerd stopped");
    wait_dead(new_pid);
    assert!(!state.join("run/bangerd.sock").exists(), "socket removed");
    assert!(!state.join("run/helper.pid").exists(), "helper stopped and its pid file removed");
    let out = banger(state, &["daemon", "stop"]);
    assert_eq!(stdout(&out).trim(), "bangerd was not running");
}

#[test]
fn a_daemon_that_cannot_start_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("x".repeat(120));
    let out = banger(dir.path(), &["daemon", "start", "--no-helper", "--socket", long.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("error: bangerd did not start: it exited"), "{err}");
    assert!(err.contains("--- last lines of "), "{err}");
    assert!(err.contains("bad socket path"), "the log tail shows bangerd's own complaint: {err}");
    assert!(err.contains("hint: see the whole log in "), "{err}");
}

#[test]
fn completion_scripts_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = banger(dir.path(), &["completion", shell]);
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(text.contains("banger") && text.contains("daemon"), "{shell}: {text}");
    }
}

#[test]
fn install_writes_notify_units_and_uninstall_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    let unit_dir = units.to_str().unwrap();
    // The system daemon runs as an existing non-root user (`system install` makes `banger`).
    let out =
        banger(dir.path(), &["daemon", "install", "--unit-dir", unit_dir, "--service-user", "bgt-none"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stderr(&out).contains("`sudo banger system install` creates it"), "{}", stderr(&out));
    let out = banger(dir.path(), &["daemon", "install", "--unit-dir", unit_dir, "--service-user", "root"]);
    assert!(stderr(&out).contains("must not run as root"), "{}", stderr(&out));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
    let out = banger(
        dir.path(),
        &["daemon", "install", "--unit-dir", unit_dir, "--group", "banger", "--service-user", "nobody"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let daemon = std::fs::read_to_string(units.join("bangerd.service")).unwrap();
    assert!(daemon.contains("Type=notify\n") && daemon.contains("WatchdogSec=30s\n"), "{daemon}");
    let exec = daemon.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let program = exec.split(' ').next().unwrap();
    assert!(Path::new(program).is_file(), "ExecStart names a real binary: {exec}");
    assert!(
        exec.ends_with("--system --helper-socket /run/banger-helper/helper.sock --group banger"),
        "{exec}"
    );
    assert!(daemon.contains("\nUser=nobody\n"), "{daemon}");
    let helper = std::fs::read_to_string(units.join("banger-helper.service")).unwrap();
    assert!(helper.contains(&format!("--owner-uid {} ", nobody.uid)), "{helper}");

    let out = banger(dir.path(), &["daemon", "uninstall", "--unit-dir", units.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!units.join("bangerd.service").exists() && !units.join("banger-helper.service").exists());

    let out = banger(dir.path(), &["daemon", "install", "--user", "--unit-dir", units.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(units.join("bangerd.service").exists() && !units.join("banger-helper.service").exists());
}

/// A FAKE daemon from a future release: the one fault that cannot be produced with the real
/// binaries of one build. It answers the handshake as a bangerd that speaks only protocol 7..=9.
#[tokio::test]
async fn a_version_mismatch_says_which_side_to_upgrade() {
    use chaos_tests::protocol::channel::{Channel, server_handshake};
    use chaos_tests::protocol::handshake::{Hello, ServiceKind};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/bangerd.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let mut listener = tokio_seqpacket::UnixSeqpacketListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        let mut future = Hello::new(ServiceKind::Daemon, "bangerd");
        future.software = "bangerd 9.0.0".into();
        future.min_version = 7;
        future.max_version = 9;
        let mut chan = Channel::new(listener.accept().await.unwrap());
        server_handshake(&mut chan, &future, Ok(())).await
    });
    let state = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || banger(&state, &["daemon", "status"])).await.unwrap();
    assert_eq!(out.status.code(), Some(7), "VersionMismatch exits 7: {out:?}");
    let err = stderr(&out);
    let speaks = format!("banger 0.1.0 speaks {PROTOCOL_MIN}..={PROTOCOL_MAX}, bangerd 9.0.0 speaks 7..=9");
    assert!(err.contains(&speaks), "{err}");
    assert!(err.contains("hint: upgrade banger 0.1.0 to match bangerd 9.0.0"), "{err}");
    assert!(server.await.unwrap().is_err(), "the fake server saw the refusal too");
}

#[tokio::test]
async fn vm_defaults_come_from_the_settings_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bangerd.toml"),
        "[vm]\ncpus = 1\nmemory_mib = 64\ndisk_bytes = 100663296\n",
    )
    .unwrap();
    let d = chaos_tests::TestDaemon::start_in(dir, chaos_tests::DaemonOpts::default()).await;
    let ok = |args: &[&str]| {
        let out = d.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&["kernel", "import", chaos_tests::TEST_KERNEL, "--name", "default"]);
    let tar = d.dir.path().join("rootfs.tar");
    std::fs::write(&tar, chaos_tests::oci::LayerTar::default().file("x", b"x").bytes()).unwrap();
    ok(&["image", "import", tar.to_str().unwrap(), "--name", "base"]);
    let line = ok(&["vm", "create", "a", "--image", "base", "--no-net"]);
    assert_eq!(line.trim(), "vm a: 1 vCPU, 64 MiB, 96.0 MiB disk, image base, kernel default, no network");
    let line = ok(&["vm", "create", "b", "--image", "base", "--no-net", "--cpus", "2"]);
    assert!(line.starts_with("vm b: 2 vCPU, 64 MiB"), "a flag wins over the file: {line}");

    // A mistyped key is an error at start, not a silently ignored setting.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("bangerd.toml"), "[vm]\ncpu = 1\n").unwrap();
    let out = std::process::Command::new(chaos_tests::bin("bangerd"))
        .arg("--state-dir")
        .arg(bad.path())
        .arg("--no-helper")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown field `cpu`"), "{}", stderr(&out));
}
