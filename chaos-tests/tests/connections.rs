//! Holding the daemon's connections as an attack: thousands of connections that never say
//! hello or say it and then sit idle, from the owner's uid or another's, never lock the owner
//! out; a silent peer is dropped at the handshake deadline; an idle connection is closed after
//! the configured timeout (and says why when used) while a long stream is not.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::protocol::channel::{Channel, Client, Daemon, Helper};
use chaos_tests::protocol::daemon::{ChaosAction, Request, Response};
use chaos_tests::protocol::handshake::ServerHello;
use chaos_tests::protocol::{Error, ErrorKind};
use chaos_tests::vms::VmHost;
use chaos_tests::{
    DaemonOpts, TestDaemon, TestHelper, bin, capable, is_root, other_user, raise_nofile, stderr, stdout,
};
use tokio_seqpacket::UnixSeqpacket;

const FLOOD: usize = 2000;
/// The daemon's seats, and those only its owner may take (daemon/src/connection/seats.rs).
const MAX_CONNECTIONS: usize = 1024;
const OWNER_RESERVED: usize = 64;
const DEFAULT_PER_UID: usize = 64;
/// "Promptly", for a CLI process on a loaded two-core machine.
const PROMPT: Duration = Duration::from_secs(2);

/// `banger version` as the owner: it must succeed; returns how long it took.
fn owner_version(d: &TestDaemon, while_: &str) -> Duration {
    let t = Instant::now();
    let out = d.cli(&["version"]);
    let took = t.elapsed();
    assert!(out.status.success(), "the owner is served {while_}: {}", stderr(&out));
    assert!(stdout(&out).contains("daemon: bangerd"), "{}", stdout(&out));
    eprintln!("owner's `banger version` {while_}: {:.0} ms", took.as_secs_f64() * 1e3);
    assert!(took < PROMPT, "the owner waited {took:?} {while_}");
    took
}

fn opts_with(settings: &str, mut extra_args: Vec<String>) -> (tempfile::TempDir, DaemonOpts) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bangerd.toml");
    std::fs::write(&path, settings).unwrap();
    extra_args.extend(["--config".to_string(), path.to_str().unwrap().to_string()]);
    (dir, DaemonOpts { extra_args, ..Default::default() })
}

#[tokio::test]
async fn the_owner_is_served_past_2000_connections_that_never_say_hello() {
    raise_nofile();
    let d = TestDaemon::start().await;
    let t = Instant::now();
    let mut silent = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        silent.push(UnixSeqpacket::connect(&d.socket).await.unwrap());
    }
    eprintln!("{FLOOD} silent connections opened in {:?}", t.elapsed());
    owner_version(&d, &format!("with {FLOOD} silent connections just opened"));
    // And with the daemon's table full of them again.
    silent.clear();
    for _ in 0..MAX_CONNECTIONS {
        silent.push(UnixSeqpacket::connect(&d.socket).await.unwrap());
    }
    owner_version(&d, &format!("with {MAX_CONNECTIONS} silent connections held"));
}

#[tokio::test]
async fn the_owner_is_served_past_2000_idle_connections() {
    raise_nofile();
    let d = TestDaemon::start().await;
    let t = Instant::now();
    let mut idle = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let c = Client::<Daemon>::connect(&d.socket, "idle").await;
        idle.push(c.unwrap_or_else(|e| panic!("the owner's connection {i} is refused: {e}")));
    }
    eprintln!("{FLOOD} idle connections opened in {:?}", t.elapsed());
    owner_version(&d, &format!("with {FLOOD} idle connections opened"));
    // The oldest made room; used, it says why it was closed.
    let e = farewell(&mut idle[0]).await;
    assert!(e.message.contains("to make room for its owner"), "{e:?}");
    // The newest are served.
    assert_eq!(idle.last_mut().unwrap().call(&Request::Ping).await.unwrap(), Response::Pong);
}

/// Uses a connection the daemon has closed: its answer is the daemon's reason.
async fn farewell(c: &mut Client<Daemon>) -> Error {
    match c.call(&Request::Ping).await {
        Ok(Response::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
            assert!(e.hint.is_some(), "{e:?}");
            e
        }
        other => panic!("expected the daemon's reason for closing, got {other:?}"),
    }
}

/// Connects and says nothing; returns how long until the server refuses and closes.
async fn silent_until_dropped(socket: &Path) -> Duration {
    let mut c = Channel::new(UnixSeqpacket::connect(socket).await.unwrap());
    let t = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(10), c.recv::<ServerHello>()).await;
    let took = t.elapsed();
    let (reply, _) = reply.expect("dropped within 10 s").unwrap().expect("a refusal before closing");
    let e = reply.result.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Protocol, "{e:?}");
    assert!(e.message.contains("no handshake within 1.5 s"), "{e:?}");
    assert!(c.recv::<ServerHello>().await.unwrap().is_none(), "then closed");
    took
}

#[tokio::test]
async fn a_peer_that_never_says_hello_is_dropped_at_the_deadline() {
    let d = TestDaemon::start().await;
    let took = silent_until_dropped(&d.socket).await;
    eprintln!("bangerd dropped a silent peer after {:.0} ms", took.as_secs_f64() * 1e3);
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(2500), "{took:?}");

    if !capable("root", is_root(), "banger-helper runs as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = TestHelper::start(&dir.path().join("helper.sock"), 0).await;
    let took = silent_until_dropped(&h.socket).await;
    eprintln!("banger-helper dropped a silent peer after {:.0} ms", took.as_secs_f64() * 1e3);
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(2500), "{took:?}");
    // It still serves its owner.
    Client::<Helper>::connect(&h.socket, "test").await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_timeout_and_a_stream_is_not() {
    let (_settings, opts) = opts_with("[connections]\nidle_timeout_secs = 1\n", vec![]);
    let d = TestDaemon::start_with(opts).await;

    // A long stream, read slowly: 300 frames of 16 KiB, one every 10 ms, so the daemon is busy
    // sending for three times the idle timeout.
    let mut streaming = d.client().await;
    let stream = tokio::spawn(async move {
        let echo = ChaosAction::Echo { payload: vec![7; 16 << 10], repeat: 300 };
        streaming.send(&Request::Chaos(echo)).await.unwrap();
        let t = Instant::now();
        let mut frames = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match streaming.next().await.unwrap() {
                Some((Response::Echo(p), more)) => {
                    assert_eq!(p.len(), 16 << 10);
                    frames += 1;
                    if !more {
                        break;
                    }
                }
                other => panic!("the stream was cut after {frames} frames: {other:?}"),
            }
        }
        assert_eq!(frames, 300);
        // Busy, then idle again: the timer starts over and it is still usable.
        assert_eq!(streaming.call(&Request::Ping).await.unwrap(), Response::Pong);
        t.elapsed()
    });

    // Says hello, then nothing: closed after the timeout, with the reason first.
    let mut quiet = d.client().await.into_channel();
    let t = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), quiet.recv::<Response>()).await;
    let took = t.elapsed();
    let Some((Response::Error(e), false)) = reason.expect("closed within 5 s").unwrap() else {
        panic!("expected the reason for closing")
    };
    eprintln!("an idle connection was closed after {:.0} ms (timeout 1 s)", took.as_secs_f64() * 1e3);
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(2000), "{took:?}");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("closed this connection after 1 s without a request"), "{e:?}");
    assert!(quiet.recv::<Response>().await.unwrap().is_none(), "then closed");

    // Idle past the timeout, then used: the reason is the answer.
    let mut late = d.client().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = farewell(&mut late).await;
    assert!(e.message.contains("without a request"), "{e:?}");
    assert!(e.hint.as_deref().unwrap().contains("idle_timeout_secs"), "{e:?}");

    let streamed = stream.await.unwrap();
    eprintln!("a stream ran {:.1} s across a 1 s idle timeout", streamed.as_secs_f64());
    assert!(streamed > Duration::from_secs(2), "{streamed:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_loses_its_connection() {
    let (_settings, opts) = opts_with("[connections]\nidle_timeout_secs = 1\n", vec![]);
    let d = TestDaemon::start_with(opts).await;
    // Asks for 16 MiB in 1000 frames and reads none: the daemon's send waits on it.
    let mut stalled = d.client().await;
    let echo = ChaosAction::Echo { payload: vec![7; 16 << 10], repeat: 1000 };
    stalled.send(&Request::Chaos(echo)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // What the socket buffered is still there to read; then the connection ends, cut short.
    let mut frames = 0;
    let ended = loop {
        match stalled.next().await {
            Ok(Some((Response::Echo(_), true))) => frames += 1,
            other => break other,
        }
    };
    eprintln!("a stalled stream was cut after {frames} of 1000 frames: {:?}", ended.as_ref().map(|_| ()));
    assert!(frames < 1000, "the stream was not cut");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    let status = d.cli(&["daemon", "status"]);
    assert!(stdout(&status).contains("  1 open, "), "only the status connection: {}", stdout(&status));
}

#[tokio::test]
async fn vm_logs_follow_outlives_the_idle_timeout() {
    let Some(host) = VmHost::start_configured("[connections]\nidle_timeout_secs = 1\n").await else { return };
    host.create("quiet", "wait");
    host.ok(&["vm", "start", "quiet"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.ok(&["vm", "logs", "quiet"]).contains("waiting for ctrl-alt-del") {
        assert!(Instant::now() < deadline, "the test kernel never said it waits");
        std::thread::sleep(Duration::from_millis(50));
    }
    let follower = Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(host.daemon.dir.path())
        .args(["vm", "logs", "-f", "quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The console is silent now: three idle timeouts with nothing to stream.
    std::thread::sleep(Duration::from_secs(3));
    host.ok(&["vm", "stop", "quiet"]);
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("waiting for ctrl-alt-del") && text.contains("got ctrl-alt-del"), "{text}");
}

/// banger-probe holding connections as the other test user; killed when dropped.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `n` connections as the other user (`mode`: "hello" or "raw") and keeps them open;
/// returns the probe and its report.
fn hold_as_other(socket: &Path, n: usize, mode: &str) -> (Holder, serde_json::Value) {
    let (uid, gid) = other_user();
    let mut child = Command::new(env!("CARGO_BIN_EXE_banger-probe"))
        .args(["hold", socket.to_str().unwrap(), &n.to_string(), mode])
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    eprintln!("another uid, {n} {mode} connections: {report}");
    (Holder(child), report)
}

fn banger_as_other(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    let (uid, gid) = other_user();
    Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(d.dir.path())
        .args(args)
        .env("NO_COLOR", "1")
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

#[tokio::test]
async fn another_uid_cannot_take_the_owners_seats() {
    if !capable("root", is_root(), "creating a second user and switching to it needs root") {
        return;
    }
    raise_nofile();
    other_user();
    let group = || vec!["--group".to_string(), "banger-test-other".to_string()];

    // A member of the daemon's group: held to its own limit, told so, and the owner is served.
    let d = TestDaemon::start_with(DaemonOpts { extra_args: group(), ..Default::default() }).await;
    let (holder, report) = hold_as_other(&d.socket, FLOOD, "hello");
    assert_eq!(report["held"], DEFAULT_PER_UID, "{report}");
    assert_eq!(report["refused"], FLOOD - DEFAULT_PER_UID, "{report}");
    assert_eq!(report["refusal"]["kind"], "Unavailable", "{report}");
    let limit = format!("already holds {DEFAULT_PER_UID} connections to bangerd, its limit");
    assert!(report["refusal"]["message"].as_str().unwrap().contains(&limit), "{report}");
    owner_version(&d, &format!("with another uid holding {DEFAULT_PER_UID} connections, the rest refused"));
    // Its CLI says what happened and what to do.
    let out = banger_as_other(&d, &["version"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(stderr(&out).contains(&format!("error: uid {} {limit}", other_user().0)), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: close idle banger clients"), "{}", stderr(&out));
    drop(holder);

    // With no limit per uid to speak of, the shared seats run out before the owner's do.
    let (_settings, opts) = opts_with("[connections]\nmax_per_uid = 100000\n", group());
    let d = TestDaemon::start_with(opts).await;
    let (holder, report) = hold_as_other(&d.socket, FLOOD, "hello");
    assert_eq!(report["held"], MAX_CONNECTIONS - OWNER_RESERVED, "{report}");
    assert!(report["refusal"]["message"].as_str().unwrap().contains("kept for its owner"), "{report}");
    let mut mine = Vec::new();
    for i in 0..OWNER_RESERVED {
        let c = Client::<Daemon>::connect(&d.socket, "owner").await;
        mine.push(c.unwrap_or_else(|e| panic!("the owner's connection {i} is refused: {e}")));
    }
    owner_version(&d, "with every shared seat held by another uid and the reserve by idle owners");
    drop(holder);

    // A uid the daemon refuses, on a socket whose mode was loosened by mistake: its silent
    // connections count against it from accept, before any handshake.
    let d = TestDaemon::start().await;
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (holder, report) = hold_as_other(&d.socket, FLOOD, "raw");
    assert!(report["held"].as_u64().unwrap() <= DEFAULT_PER_UID as u64, "{report}");
    assert!(report["refused"].as_u64().unwrap() > 0, "{report}");
    assert!(report["refusal"]["message"].as_str().unwrap().contains(&limit), "{report}");
    owner_version(&d, "with a refused uid flooding a loosened socket");
    drop(holder);
}
