//! `banger vm exec` against a fake daemon. With `-it` on a real pseudo-terminal: keys go out
//! one by one as typed, a resize follows SIGWINCH, the exit code comes back, and the
//! terminal's settings are restored however the exec ends. Without `-t`: signals to banger
//! are passed on, and a second Ctrl-C leaves.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::termios::{LocalFlags, tcgetattr};
use protocol::channel::{Channel, server_handshake};
use protocol::daemon::{Request, Response};
use protocol::exec::{ExecEvent, ExecInput, ExitStatus, OutputStream, WindowSize};
use protocol::handshake::{Hello, ServiceKind};
use tokio_seqpacket::UnixSeqpacketListener;

async fn accept(listener: &mut UnixSeqpacketListener) -> (Channel, Request) {
    let mut chan = Channel::new(listener.accept().await.unwrap());
    server_handshake(&mut chan, &Hello::new(ServiceKind::Daemon, "fake"), Ok(())).await.unwrap();
    let (request, _) = chan.recv().await.unwrap().unwrap();
    (chan, request)
}

async fn input(chan: &mut Channel) -> ExecInput {
    match chan.recv::<Request>().await.unwrap().unwrap().0 {
        Request::ExecInput(i) => i,
        other => panic!("{other:?}"),
    }
}

fn spawn_on_pty(socket: &Path, slave: &std::fs::File) -> Child {
    Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["--socket", socket.to_str().unwrap(), "vm", "exec", "-it", "web", "--", "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap()
}

fn pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    let size = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    (std::fs::File::from(pty.master), std::fs::File::from(pty.slave))
}

fn is_cooked(slave: &std::fs::File) -> bool {
    let t = tcgetattr(slave.as_fd()).unwrap();
    t.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO)
}

/// Waits for the child in a blocking thread, draining the pty so it never blocks on output;
/// the master comes back (closing it would end the slave's terminal).
async fn exit_code(mut child: Child, mut master: std::fs::File) -> (i32, String, std::fs::File) {
    tokio::task::spawn_blocking(move || {
        let fd = master.as_raw_fd();
        // SAFETY: F_SETFL on a descriptor this function owns; no memory is passed.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 1024];
            if let Ok(n) = master.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
            }
            if let Some(s) = child.try_wait().unwrap() {
                if let Ok(n) = master.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                }
                return (s.code().unwrap(), String::from_utf8_lossy(&seen).into_owned(), master);
            }
            assert!(Instant::now() < deadline, "banger did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap()
}

/// `banger vm exec -it` on a fresh pty of this size, connected to a fake daemon that has taken
/// its request.
struct TtyExec {
    _dir: tempfile::TempDir,
    master: std::fs::File,
    slave: std::fs::File,
    child: Child,
    chan: Channel,
    request: Request,
}

async fn tty_exec(rows: u16, cols: u16) -> TtyExec {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let mut listener = UnixSeqpacketListener::bind(&socket).unwrap();
    let (master, slave) = pty(rows, cols);
    assert!(is_cooked(&slave));
    let child = spawn_on_pty(&socket, &slave);
    let (chan, request) = accept(&mut listener).await;
    TtyExec { _dir: dir, master, slave, child, chan, request }
}

#[tokio::test]
async fn keys_stream_one_by_one_resizes_follow_and_the_terminal_is_restored() {
    let TtyExec { _dir, mut master, slave, child, mut chan, request } = tty_exec(30, 100).await;
    let Request::VmExec { spec, .. } = request else { panic!("{request:?}") };
    assert_eq!(spec.tty, Some(WindowSize { rows: 30, cols: 100 }));
    assert!(spec.stdin);
    chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
    // Each key is sent as it is typed, before the next exists.
    for key in [b'l', b's', b'\r'] {
        master.write_all(&[key]).unwrap();
        assert_eq!(input(&mut chan).await, ExecInput::Stdin(vec![key]));
    }
    assert!(!is_cooked(&slave), "the terminal is raw while the exec runs");
    let ws = libc::winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, valid for the call.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH).unwrap();
    assert_eq!(input(&mut chan).await, ExecInput::Resize(WindowSize { rows: 40, cols: 120 }));
    let out = ExecEvent::Output { stream: OutputStream::Stdout, data: b"listing\r\n".to_vec() };
    chan.send(&Response::Exec(out), true).await.unwrap();
    chan.send(&Response::Exec(ExecEvent::Exited(ExitStatus::Code(3))), false).await.unwrap();
    let (code, seen, _master) = exit_code(child, master).await;
    assert_eq!(code, 3);
    assert!(seen.contains("listing"), "{seen:?}");
    assert!(is_cooked(&slave), "the terminal's settings are restored");
}

#[tokio::test]
async fn a_failed_exec_restores_the_terminal_and_exits_with_its_code() {
    let TtyExec { _dir, master, slave, child, chan, .. } = tty_exec(24, 80).await;
    let failed = ExecEvent::Failed { code: 127, message: "sh: not found".into() };
    chan.send(&Response::Exec(failed), false).await.unwrap();
    let (code, seen, _master) = exit_code(child, master).await;
    assert_eq!(code, 127);
    assert!(seen.contains("banger: sh: not found"), "{seen:?}");
    assert!(is_cooked(&slave));
}

#[tokio::test]
async fn a_daemon_that_hangs_up_mid_exec_still_leaves_the_terminal_restored() {
    let TtyExec { _dir, master, slave, child, chan, .. } = tty_exec(24, 80).await;
    chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
    drop(chan);
    let (code, seen, _master) = exit_code(child, master).await;
    assert_eq!(code, 6, "Unavailable: {seen:?}");
    assert!(is_cooked(&slave));
}

#[tokio::test]
async fn signals_are_passed_on_and_a_second_ctrl_c_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let mut listener = UnixSeqpacketListener::bind(&socket).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["--socket", socket.to_str().unwrap(), "vm", "exec", "web", "--", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut chan, request) = accept(&mut listener).await;
    let Request::VmExec { spec, .. } = request else { panic!("{request:?}") };
    assert_eq!((spec.tty, spec.stdin), (None, false));
    chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    use nix::sys::signal::{Signal, kill};
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(input(&mut chan).await, ExecInput::Signal(libc::SIGTERM));
    kill(pid, Signal::SIGHUP).unwrap();
    assert_eq!(input(&mut chan).await, ExecInput::Signal(libc::SIGHUP));
    kill(pid, Signal::SIGINT).unwrap();
    assert_eq!(input(&mut chan).await, ExecInput::Signal(libc::SIGINT));
    kill(pid, Signal::SIGINT).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "a second Ctrl-C within a second leaves");
    // Leaving closed the connection: the daemon then kills the process.
    assert!(chan.recv::<Request>().await.unwrap().is_none());
}
