//! The guest agent's protocol, against the real static binary run as a host process over a
//! unix socket: hostile input, the exec semantics users rely on, flow control, copies.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::agent::{TestAgent, spec};
use chaos_tests::protocol::agent::{AgentEvent, AgentRequest, MAX_EXECS, WINDOW};
use chaos_tests::protocol::exec::{ExecEvent, ExecInput, ExitStatus, OutputStream, WindowSize};
use chaos_tests::protocol::frame::MAX_DATAGRAM;
use chaos_tests::protocol::handshake::{Hello, PROTOCOL_MAX, PROTOCOL_MIN, ServerHello, ServiceKind};
use chaos_tests::protocol::stream::encode;
use chaos_tests::protocol::{Error, ErrorKind};
use chaos_tests::{capable, is_root};

const T: Duration = Duration::from_secs(10);

/// Sends `bytes` as the first thing on a new connection: the agent refuses with a
/// `ServerHello` carrying an error of `kind`, then closes.
fn refused_at_handshake(agent: &TestAgent, bytes: &[u8], kind: ErrorKind) -> Error {
    let mut c = agent.raw();
    c.send_raw(bytes);
    let reply: ServerHello = c.recv_as(T).expect("a handshake reply");
    let err = reply.result.expect_err("the handshake is refused");
    assert_eq!(err.kind, kind, "{err:?}");
    assert!(c.recv_as::<ServerHello>(T).is_none(), "the connection is closed after a refusal");
    err
}

/// After a good handshake, sends `bytes`: a protocol `Error`, then the session closes.
fn refused_after_handshake(agent: &TestAgent, bytes: &[u8]) -> Error {
    let mut c = agent.connect();
    c.send_raw(bytes);
    let error = match c.recv(T) {
        Some(AgentEvent::Error { id: None, error }) => error,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert_eq!(error.kind, ErrorKind::Protocol, "{error:?}");
    assert!(c.recv(T).is_none(), "the session closes after a protocol error");
    error
}

fn ping_works(agent: &TestAgent) {
    let mut c = agent.connect();
    c.send(&AgentRequest::Ping { nonce: 42 });
    assert_eq!(c.recv(T), Some(AgentEvent::Pong { nonce: 42 }));
}

#[test]
fn wrong_magic_and_wrong_version_are_refused_clearly() {
    let agent = TestAgent::start();
    let mut hello = Hello::new(ServiceKind::Agent, "hostile");
    hello.magic = *b"NOTBANGR";
    let err = refused_at_handshake(&agent, &encode(&hello).unwrap(), ErrorKind::Protocol);
    assert!(err.message.contains("magic"), "{err:?}");

    let mut hello = Hello::new(ServiceKind::Agent, "banger 99.0.0");
    hello.min_version = 99;
    hello.max_version = 100;
    let err = refused_at_handshake(&agent, &encode(&hello).unwrap(), ErrorKind::VersionMismatch);
    let ours = format!("{PROTOCOL_MIN}..={PROTOCOL_MAX}");
    assert!(err.message.contains("99..=100") && err.message.contains(&ours), "names both ranges: {err:?}");
    assert!(err.hint.is_some_and(|h| h.starts_with("upgrade ")), "says which side to upgrade");

    let err = refused_at_handshake(
        &agent,
        &encode(&Hello::new(ServiceKind::Daemon, "x")).unwrap(),
        ErrorKind::Protocol,
    );
    assert!(err.message.contains("belongs to banger-agent"), "{err:?}");
    // Not even a frame: an HTTP request.
    refused_at_handshake(&agent, b"GET / HTTP/1.1\r\n\r\n", ErrorKind::Protocol);
    ping_works(&agent);
}

#[test]
fn bad_frames_end_the_session_and_the_agent_serves_the_next() {
    let agent = TestAgent::start();
    // A length prefix past the datagram limit: refused before anything is buffered.
    let err = refused_after_handshake(&agent, &((MAX_DATAGRAM as u32) + 1).to_le_bytes());
    assert!(err.message.contains("larger than"), "{err:?}");
    // A well-framed message that is no request.
    let mut garbage = vec![6, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff, 0xee, 0xdd, 0xcc, 0xbb]);
    refused_after_handshake(&agent, &garbage);
    // An empty frame, unknown flag bits.
    refused_after_handshake(&agent, &[0, 0, 0, 0]);
    refused_after_handshake(&agent, &[2, 0, 0, 0, 0x80, 1]);
    // A request with trailing bytes.
    let mut trailing = encode(&AgentRequest::Ping { nonce: 1 }).unwrap();
    trailing[0] += 3;
    trailing.extend_from_slice(&[1, 2, 3]);
    refused_after_handshake(&agent, &trailing);
    ping_works(&agent);
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_deadline() {
    let agent = TestAgent::start();
    let mut c = agent.raw();
    let started = Instant::now();
    let reply: ServerHello = c.recv_as(T).expect("a refusal");
    assert!(reply.result.is_err_and(|e| e.message.contains("no Hello")));
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
    ping_works(&agent);
}

#[test]
fn exit_codes_come_back_exactly() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let d = c.run(1, spec(&["sh", "-c", "exit 7"]));
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(7))));
    let d = c.run(2, spec(&["sh", "-c", "kill -9 $$"]));
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Signal(9))));
    assert_eq!(ExitStatus::Signal(9).code(), 137);
    let d = c.run(3, spec(&["sh", "-c", "echo out; echo err >&2"]));
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))));
    assert_eq!(d.stdout_text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&d.stderr), "err\n");
    assert!(d.pid.is_some_and(|p| p > 1));
    // argv, env and cwd arrive as given.
    let mut s = spec(&["sh", "-c", "echo \"$1|$FOO|$(pwd)\"", "sh", "a b"]);
    s.env.push("FOO=bar baz".into());
    s.cwd = Some("/tmp".into());
    assert_eq!(c.run(4, s).stdout_text(), "a b|bar baz|/tmp\n");
}

#[test]
fn a_missing_command_fails_at_once_and_bad_cwd_or_user_with_126() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let started = Instant::now();
    let d = c.run(1, spec(&["no-such-command-banger"]));
    let Some(ExecEvent::Failed { code: 127, message }) = &d.end else { panic!("{d:?}") };
    assert!(message.contains("not found"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(d.pid.is_none(), "never started");
    let d = c.run(2, spec(&["/no/such/file"]));
    assert!(
        matches!(&d.end, Some(ExecEvent::Failed { code: 127, message }) if message.contains("not found")),
        "{d:?}"
    );

    let mut s = spec(&["true"]);
    s.cwd = Some("/no/such/dir".into());
    let d = c.run(3, s);
    let Some(ExecEvent::Failed { code: 126, message }) = &d.end else { panic!("{d:?}") };
    assert!(message.contains("/no/such/dir") && message.contains("No such file"), "{message}");

    let mut s = spec(&["true"]);
    s.user = Some("no-such-user-banger".into());
    let d = c.run(4, s);
    assert!(
        matches!(&d.end, Some(ExecEvent::Failed { code: 126, message }) if message.contains("no-such-user-banger")),
        "{d:?}"
    );

    // A file that is not executable.
    let f = agent.dir.path().join("script");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    // (Even root cannot exec a file without an x bit.)
    let d = c.run(5, spec(&[f.to_str().unwrap()]));
    assert!(matches!(&d.end, Some(ExecEvent::Failed { code: 126, .. })), "{d:?}");
}

#[test]
fn a_user_by_name_or_uid_runs_as_that_user() {
    if !capable("root", is_root(), "switching users needs root") {
        return;
    }
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let mut s = spec(&["id", "-u"]);
    s.user = Some("nobody".into());
    let d = c.run(1, s);
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))), "{d:?}");
    assert_eq!(d.stdout_text().trim(), "65534");
    let mut s = spec(&["sh", "-c", "echo $(id -u):$(id -g)"]);
    s.user = Some("4321:77".into());
    assert_eq!(c.run(2, s).stdout_text().trim(), "4321:77");
}

#[test]
fn stdin_is_piped_through_cat_with_acks() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let mut s = spec(&["cat"]);
    s.stdin = true;
    c.exec(1, s);
    let data = chaos_tests::noise(3 * WINDOW as usize / 2, 7);
    // Send within the window: wait for StdinAcks before overrunning it.
    let (mut sent, mut acked, mut out) = (0usize, 0usize, Vec::new());
    let mut end = None;
    while end.is_none() {
        while sent < data.len() && sent - acked < WINDOW as usize {
            let n = (data.len() - sent).min(16 * 1024).min(WINDOW as usize - (sent - acked));
            c.send(&AgentRequest::Input { id: 1, input: ExecInput::Stdin(data[sent..sent + n].to_vec()) });
            sent += n;
            if sent == data.len() {
                c.send(&AgentRequest::Input { id: 1, input: ExecInput::CloseStdin });
            }
        }
        match c.recv(T).expect("session open") {
            AgentEvent::StdinAck { id: 1, bytes } => acked += bytes as usize,
            AgentEvent::Exec { id: 1, event: ExecEvent::Output { data, .. } } => {
                c.send(&AgentRequest::OutputAck { id: 1, bytes: data.len() as u64 });
                out.extend(data);
            }
            AgentEvent::Exec { id: 1, event: ExecEvent::Started { .. } } => {}
            AgentEvent::Exec { id: 1, event } => end = Some(event),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(end, Some(ExecEvent::Exited(ExitStatus::Code(0))));
    assert_eq!(acked, data.len(), "every stdin byte is acked");
    assert!(out == data, "cat gave back {} of {} bytes, equal: false", out.len(), data.len());
}

#[test]
fn output_never_runs_more_than_a_window_ahead() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let total = 4 * WINDOW;
    c.exec(1, spec(&["head", "-c", &total.to_string(), "/dev/zero"]));
    let mut got = 0u64;
    // Without acks, the agent stops at the window.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        match c.recv(Duration::from_secs(5)) {
            Some(AgentEvent::Exec { event: ExecEvent::Output { data, .. }, .. }) => got += data.len() as u64,
            Some(AgentEvent::Exec { event: ExecEvent::Started { .. }, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        if got >= WINDOW {
            break;
        }
    }
    assert_eq!(got, WINDOW, "exactly a window is sent unacknowledged");
    std::thread::sleep(Duration::from_millis(300));
    c.send(&AgentRequest::Ping { nonce: 9 });
    assert_eq!(c.recv(T), Some(AgentEvent::Pong { nonce: 9 }), "nothing more came without an ack");
    // Acks release the rest.
    c.send(&AgentRequest::OutputAck { id: 1, bytes: got });
    let rest = c.collect(&[1], T).remove(&1).unwrap();
    assert_eq!(rest.end, Some(ExecEvent::Exited(ExitStatus::Code(0))));
    assert_eq!(got + rest.stdout.len() as u64, total);
}

#[test]
fn a_tty_exec_sees_its_resize() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let mut s = spec(&["sh", "-c", "stty size; read line; stty size; test -t 0 && echo tty"]);
    s.tty = Some(WindowSize { rows: 24, cols: 80 });
    s.stdin = true;
    c.exec(1, s);
    // Wait for the first size, then resize and let it go on.
    let mut out = String::new();
    while !out.contains("24 80") {
        match c.recv(T).expect("open") {
            AgentEvent::Exec { event: ExecEvent::Output { stream, data }, .. } => {
                assert_eq!(stream, OutputStream::Stdout, "a tty has one stream");
                c.send(&AgentRequest::OutputAck { id: 1, bytes: data.len() as u64 });
                out.push_str(&String::from_utf8_lossy(&data));
            }
            AgentEvent::Exec { event: ExecEvent::Started { .. }, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    c.send(&AgentRequest::Input { id: 1, input: ExecInput::Resize(WindowSize { rows: 33, cols: 101 }) });
    // Key by key, as a terminal sends them.
    for key in [b'o', b'k', b'\r'] {
        c.send(&AgentRequest::Input { id: 1, input: ExecInput::Stdin(vec![key]) });
    }
    let d = c.collect(&[1], T).remove(&1).unwrap();
    let rest = d.stdout_text();
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))), "{out}{rest}");
    assert!(rest.contains("33 101"), "stty saw the resize: {rest:?}");
    assert!(rest.contains("tty"), "{rest:?}");
}

#[test]
fn a_background_child_holding_stdout_does_not_hold_the_exec() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let started = Instant::now();
    let d = c.run(1, spec(&["sh", "-c", "sleep 30 & echo hi"]));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))));
    assert_eq!(d.stdout_text(), "hi\n");
}

#[test]
fn two_execs_run_at_once_and_signals_reach_them() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let started = Instant::now();
    c.exec(1, spec(&["sh", "-c", "sleep 1; echo one"]));
    c.exec(2, spec(&["sh", "-c", "sleep 1; echo two"]));
    c.exec(3, spec(&["sleep", "30"]));
    // Wait for 3 to start, then SIGTERM it.
    let mut done = std::collections::HashMap::new();
    loop {
        match c.recv(T).expect("open") {
            AgentEvent::Exec { id: 3, event: ExecEvent::Started { .. } } => break,
            AgentEvent::Exec { id, event } => {
                done.entry(id).or_insert_with(Vec::new).push(event);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.send(&AgentRequest::Input { id: 3, input: ExecInput::Signal(15) });
    let mut rest = c.collect(&[1, 2, 3], T);
    for (id, events) in done {
        for e in events {
            match e {
                ExecEvent::Output { data, .. } => {
                    rest.get_mut(&id).unwrap().stdout.splice(0..0, data).for_each(drop)
                }
                ExecEvent::Started { pid } => rest.get_mut(&id).unwrap().pid = Some(pid),
                other => rest.get_mut(&id).unwrap().end = Some(other),
            }
        }
    }
    assert_eq!(rest[&1].stdout_text(), "one\n");
    assert_eq!(rest[&2].stdout_text(), "two\n");
    assert_eq!(rest[&3].end, Some(ExecEvent::Exited(ExitStatus::Signal(15))));
    assert!(started.elapsed() < Duration::from_millis(1900), "in parallel: {:?}", started.elapsed());
}

#[test]
fn a_flood_of_execs_is_capped_and_ids_are_checked() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    for id in 0..1000u32 {
        c.exec(id, spec(&["sleep", "3"]));
    }
    let (mut started, mut refused, mut exited) = (0, 0, 0);
    while exited + refused < 1000 {
        match c.recv(Duration::from_secs(60)).expect("open") {
            AgentEvent::Exec { event: ExecEvent::Started { .. }, .. } => started += 1,
            AgentEvent::Exec { event: ExecEvent::Exited(ExitStatus::Code(0)), .. } => exited += 1,
            AgentEvent::Error { id: Some(_), error } => {
                assert!(error.message.contains("too many"), "{error:?}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, MAX_EXECS, "exactly MAX_EXECS run at once");
    assert_eq!(refused, 1000 - MAX_EXECS);
    assert_eq!(exited, MAX_EXECS);
    // A duplicate id is refused; the first exec is untouched.
    c.exec(5000, spec(&["sleep", "0.5"]));
    c.exec(5000, spec(&["true"]));
    let mut dup = false;
    let mut end = None;
    while end.is_none() {
        match c.recv(T).expect("open") {
            AgentEvent::Error { id: Some(5000), error } => dup = error.message.contains("already in use"),
            AgentEvent::Exec { id: 5000, event: ExecEvent::Started { .. } } => {}
            AgentEvent::Exec { id: 5000, event } => end = Some(event),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(dup, "the duplicate id was refused");
    assert_eq!(end, Some(ExecEvent::Exited(ExitStatus::Code(0))));
}

#[test]
fn a_disconnect_kills_its_execs_and_the_next_session_is_served() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    c.exec(1, spec(&["sh", "-c", "sleep 30 & sleep 31"]));
    let pid = match c.recv(T) {
        Some(AgentEvent::Exec { event: ExecEvent::Started { pid }, .. }) => pid,
        other => panic!("{other:?}"),
    };
    std::thread::sleep(Duration::from_millis(100));
    let group: Vec<String> =
        chaos_tests::processes("sleep", "sleep 3").into_iter().map(|(p, _)| p.to_string()).collect();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists()
        || group.iter().any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "the exec outlived its session");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = agent.connect();
    assert_eq!(
        c.run(1, spec(&["true"])).end,
        Some(ExecEvent::Exited(ExitStatus::Code(0))),
        "id 1 is free again"
    );
}

fn copy_out(c: &mut chaos_tests::agent::AgentConn, id: u32, path: &Path) -> Vec<u8> {
    c.send(&AgentRequest::CopyOut { id, path: path.to_str().unwrap().into() });
    let d = c.collect(&[id], T).remove(&id).unwrap();
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))), "{d:?}");
    d.stdout
}

fn copy_in(c: &mut chaos_tests::agent::AgentConn, id: u32, path: &Path, tar: &[u8]) -> ExecEvent {
    c.send(&AgentRequest::CopyIn { id, path: path.to_str().unwrap().into() });
    let (mut sent, mut acked) = (0usize, 0usize);
    loop {
        while sent < tar.len() && sent - acked < WINDOW as usize {
            let n = (tar.len() - sent).min(60 * 1024).min(WINDOW as usize - (sent - acked));
            c.send(&AgentRequest::Input { id, input: ExecInput::Stdin(tar[sent..sent + n].to_vec()) });
            sent += n;
            if sent == tar.len() {
                c.send(&AgentRequest::Input { id, input: ExecInput::CloseStdin });
            }
        }
        match c.recv(T).expect("open") {
            AgentEvent::StdinAck { bytes, .. } => acked += bytes as usize,
            AgentEvent::Exec { event: ExecEvent::Started { .. }, .. } => {}
            AgentEvent::Exec { event, .. } => return event,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn copy_out_then_in_keeps_modes_symlinks_mtimes_and_owners() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("sub/script"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(tree.join("big"), chaos_tests::noise(3 << 20, 3)).unwrap();
    std::os::unix::fs::symlink("sub/script", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("abs-link")).unwrap();
    std::fs::set_permissions(tree.join("sub/deeper"), std::fs::Permissions::from_mode(0o710)).unwrap();
    if is_root() {
        nix::unistd::chown(&tree.join("sub/script"), Some(1234.into()), Some(5678.into())).unwrap();
    }
    // After the chown, which clears set-id bits.
    std::fs::set_permissions(tree.join("sub/script"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_234_567_890, 0);
    for p in ["sub/script", "sub/deeper", "sub", "big"] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &tree.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let tar = copy_out(&mut c, 1, &tree);
    assert!(tar.len() > 3 << 20, "the tar holds the big file ({} bytes)", tar.len());

    let dst = tempfile::tempdir().unwrap();
    let into = dst.path().join("new/place");
    assert_eq!(copy_in(&mut c, 2, &into, &tar), ExecEvent::Exited(ExitStatus::Code(0)));
    let out = into.join("tree");
    assert_eq!(std::fs::read(out.join("big")).unwrap(), std::fs::read(tree.join("big")).unwrap());
    let m = std::fs::symlink_metadata(out.join("sub/script")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4751);
    assert_eq!(m.mtime(), 1_234_567_890);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "owners kept");
    }
    assert_eq!(std::fs::symlink_metadata(out.join("sub/deeper")).unwrap().mode() & 0o7777, 0o710);
    assert_eq!(std::fs::symlink_metadata(out.join("sub")).unwrap().mtime(), 1_234_567_890, "dir mtime kept");
    assert_eq!(std::fs::read_link(out.join("link")).unwrap(), Path::new("sub/script"));
    assert_eq!(std::fs::read_link(out.join("abs-link")).unwrap(), Path::new("/etc/passwd"));

    // Failures are reported, not crashes.
    let end = copy_in(&mut c, 3, &dst.path().join("x"), &[0x42; 4096]);
    assert!(matches!(&end, ExecEvent::Failed { code: 1, .. }), "{end:?}");
    c.send(&AgentRequest::CopyOut { id: 4, path: "/no/such/path".into() });
    let d = c.collect(&[4], T).remove(&4).unwrap();
    assert!(
        matches!(&d.end, Some(ExecEvent::Failed { code: 1, message }) if message.contains("/no/such/path")),
        "{d:?}"
    );
}

#[test]
fn power_off_answers_ok_then_the_host_process_exits() {
    let mut agent = TestAgent::start();
    let mut c = agent.connect();
    c.exec(1, spec(&["sleep", "30"]));
    assert!(matches!(c.recv(T), Some(AgentEvent::Exec { event: ExecEvent::Started { .. }, .. })));
    c.send(&AgentRequest::PowerOff);
    assert_eq!(c.recv(T), Some(AgentEvent::Ok));
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.alive() {
        assert!(Instant::now() < deadline, "the agent did not exit after PowerOff");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(chaos_tests::processes("sleep", "sleep 30").iter().all(|(p, _)| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| !s.contains(&format!(" {} ", agent.pid())))
    }));
}

/// A loopback listener whose every connection is served by `serve` on its own thread.
fn tcp_server(serve: fn(std::net::TcpStream)) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

/// Echoes until end-of-file, then ends its own side (a half-close both ways).
fn echo(conn: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut reader = conn.try_clone().unwrap();
    let mut writer = conn;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

/// Sends `data` as connection `id`'s input within the window, then closes it; returns what
/// came back and how the connection ended.
fn pump(c: &mut chaos_tests::agent::AgentConn, id: u32, data: &[u8]) -> (Vec<u8>, ExecEvent, Option<u32>) {
    let (mut sent, mut acked, mut out, mut pid) = (0usize, 0usize, Vec::new(), None);
    if data.is_empty() {
        c.send(&AgentRequest::Input { id, input: ExecInput::CloseStdin });
    }
    loop {
        while sent < data.len() && sent - acked < WINDOW as usize {
            let n = (data.len() - sent).min(16 * 1024).min(WINDOW as usize - (sent - acked));
            c.send(&AgentRequest::Input { id, input: ExecInput::Stdin(data[sent..sent + n].to_vec()) });
            sent += n;
            if sent == data.len() {
                c.send(&AgentRequest::Input { id, input: ExecInput::CloseStdin });
            }
        }
        match c.recv(T).expect("session open") {
            AgentEvent::StdinAck { id: i, bytes } if i == id => acked += bytes as usize,
            AgentEvent::Exec { id: i, event: ExecEvent::Output { stream, data } } if i == id => {
                assert_eq!(stream, OutputStream::Stdout);
                c.send(&AgentRequest::OutputAck { id, bytes: data.len() as u64 });
                out.extend(data);
            }
            AgentEvent::Exec { id: i, event: ExecEvent::Started { pid: p } } if i == id => pid = Some(p),
            AgentEvent::Exec { id: i, event } if i == id => return (out, event, pid),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn connect_carries_bytes_both_ways_and_half_closes() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let port = tcp_server(echo);
    c.send(&AgentRequest::Connect { id: 1, port });
    // More than a window each way: acks and StdinAcks pace it.
    let data = chaos_tests::noise(5 * WINDOW as usize / 2, 11);
    let (out, end, pid) = pump(&mut c, 1, &data);
    assert_eq!(pid, Some(0), "a connection is no process");
    assert_eq!(end, ExecEvent::Exited(ExitStatus::Code(0)), "the guest side's end-of-file ends it");
    assert!(out == data, "echoed {} of {} bytes, equal: false", out.len(), data.len());

    // The guest side closing first ends it even while the host's side is still open.
    let port = tcp_server(|mut conn| {
        use std::io::Write;
        conn.write_all(b"bye\n").unwrap();
    });
    c.send(&AgentRequest::Connect { id: 2, port });
    let d = c.collect(&[2], T).remove(&2).unwrap();
    assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))), "{d:?}");
    assert_eq!(d.stdout_text(), "bye\n");

    // Only the write side closes: the server still answers after seeing end-of-file.
    let port = tcp_server(|mut conn| {
        use std::io::{Read, Write};
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(format!("got {} bytes", got.len()).as_bytes()).unwrap();
    });
    c.send(&AgentRequest::Connect { id: 3, port });
    let (out, end, _) = pump(&mut c, 3, b"12345");
    assert_eq!(end, ExecEvent::Exited(ExitStatus::Code(0)));
    assert_eq!(String::from_utf8_lossy(&out), "got 5 bytes");
}

#[test]
fn connect_to_a_port_nobody_listens_on_fails_with_the_reason() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    c.send(&AgentRequest::Connect { id: 7, port });
    let d = c.collect(&[7], T).remove(&7).unwrap();
    assert_eq!(
        d.end,
        Some(ExecEvent::Failed {
            code: 1,
            message: format!("connection refused: nothing listens on port {port} in the guest")
        })
    );
    assert!(d.pid.is_none(), "never started: {d:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // The id is free again, and the session goes on.
    let port = tcp_server(echo);
    c.send(&AgentRequest::Connect { id: 7, port });
    let (out, end, _) = pump(&mut c, 7, b"again");
    assert_eq!((out, end), (b"again".to_vec(), ExecEvent::Exited(ExitStatus::Code(0))));
}

#[test]
fn many_connections_at_once_each_stop_at_their_window() {
    const N: u32 = 16;
    let agent = TestAgent::start();
    let mut c = agent.connect();
    // Each connection's server sends two windows, then closes.
    let port = tcp_server(|mut conn| {
        use std::io::Write;
        let _ = conn.write_all(&chaos_tests::noise(2 * WINDOW as usize, 5));
    });
    for id in 1..=N {
        c.send(&AgentRequest::Connect { id, port });
    }
    let mut got = std::collections::HashMap::<u32, Vec<u8>>::new();
    while got.len() < N as usize || got.values().any(|g| (g.len() as u64) < WINDOW) {
        match c.recv(T).expect("open") {
            AgentEvent::Exec { id, event: ExecEvent::Output { data, .. } } => {
                got.entry(id).or_default().extend(data)
            }
            AgentEvent::Exec { event: ExecEvent::Started { pid: 0 }, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Without acks, nothing more comes: every connection is held at exactly its window.
    std::thread::sleep(Duration::from_millis(300));
    c.send(&AgentRequest::Ping { nonce: 3 });
    assert_eq!(c.recv(T), Some(AgentEvent::Pong { nonce: 3 }), "no output past the windows");
    assert!(got.values().all(|g| g.len() as u64 == WINDOW));
    for (&id, g) in &got {
        c.send(&AgentRequest::OutputAck { id, bytes: g.len() as u64 });
    }
    let ids: Vec<u32> = (1..=N).collect();
    let rest = c.collect(&ids, Duration::from_secs(30));
    let expected = chaos_tests::noise(2 * WINDOW as usize, 5);
    for id in ids {
        let d = &rest[&id];
        assert_eq!(d.end, Some(ExecEvent::Exited(ExitStatus::Code(0))), "connection {id}: {d:?}");
        let mut all = got[&id].clone();
        all.extend(&d.stdout);
        assert!(all == expected, "connection {id}: {} bytes, equal: false", all.len());
    }
}
