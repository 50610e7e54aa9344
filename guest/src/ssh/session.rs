//! One SSH session channel of the built-in server: its requests (pty, env, exec, shell, the
//! sftp subsystem) arrive in order on the channel, then the process runs with the channel
//! as its terminal or pipes until it exits; its exit status or signal goes back.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::exec::WindowSize;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::users::Passwd;

/// After the process exits, its output is read until end-of-file, or until nothing came for
/// this long (a background child holding it open must not hold the session).
const IDLE_AFTER_EXIT: Duration = Duration::from_millis(100);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which `env` requests are taken: the locale and the terminal's, as OpenSSH's `AcceptEnv`
/// usually allows. Anything else (LD_PRELOAD, PATH…) is refused.
pub fn env_allowed(name: &str, value: &str) -> bool {
    let name_ok = matches!(name, "LANG" | "LANGUAGE" | "TERM" | "COLORTERM" | "TZ")
        || name.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        });
    name_ok && value.len() <= 1024 && !value.contains('\0')
}

enum Start {
    Command(Vec<u8>),
    Shell,
    Sftp,
}

/// Serves the channel until its process (or sftp) ends, or the client closes it.
pub async fn run(mut channel: Channel<Msg>, handle: Handle, account: Passwd) {
    let mut pty: Option<(String, WindowSize)> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let start = loop {
        match channel.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                pty = Some((term, size(col_width, row_height)));
            }
            Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                if let Some((_, s)) = pty.as_mut() {
                    *s = size(col_width, row_height);
                }
            }
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. }) => {
                if env_allowed(&variable_name, &variable_value) {
                    env.push((variable_name, variable_value));
                }
            }
            Some(ChannelMsg::Exec { command, .. }) => break Start::Command(command),
            Some(ChannelMsg::RequestShell { .. }) => break Start::Shell,
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Start::Sftp,
            Some(_) => {}
        }
    };
    let id = channel.id();
    if let Start::Sftp = start {
        let mut stream = channel.into_stream();
        super::sftp::serve(&mut stream, &account.home).await;
        // The client's end-of-file ended it: as sshd, report success (scp exits with it).
        let _ = handle.exit_status_request(id, 0).await;
        let _ = handle.eof(id).await;
        let _ = handle.close(id).await;
        return;
    }
    let mut proc = match spawn(&account, &start, pty.as_ref(), &env) {
        Ok(p) => p,
        Err(message) => {
            let mut err = channel.make_writer_ext(Some(1));
            let _ = err.write_all(format!("banger-agent: {message}\r\n").as_bytes()).await;
            let _ = err.flush().await;
            let _ = channel.exit_status(127).await;
            let _ = channel.eof().await;
            let _ = channel.close().await;
            return;
        }
    };
    let (exited_tx, exited) = watch::channel(false);
    let out = tokio::spawn(pump(proc.stdout, channel.make_writer(), exited.clone()));
    let err = proc.stderr.map(|e| tokio::spawn(pump(e, channel.make_writer_ext(Some(1)), exited.clone())));
    let group = Pid::from_raw(-proc.pid);
    let status = loop {
        tokio::select! {
            status = proc.child.wait() => break status,
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(w) = proc.stdin.as_mut()
                        && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                    {
                        proc.stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    if let (Some(w), true) = (proc.stdin.as_mut(), proc.master.is_some()) {
                        let _ = w.write_all(&[4]).await; // ^D: end-of-file on a terminal
                    }
                    proc.stdin = None;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(master) = &proc.master {
                        let _ = crate::exec::resize(master.get_ref(), size(col_width, row_height));
                    }
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(signal) = signal_of(&signal) {
                        let _ = kill(group, signal);
                    }
                }
                None | Some(ChannelMsg::Close) => {
                    // The client is gone: as sshd does, hang up on the session.
                    let _ = kill(group, Signal::SIGHUP);
                    return;
                }
                Some(_) => {}
            }
        }
    };
    let _ = exited_tx.send(true);
    let _ = out.await;
    if let Some(err) = err {
        let _ = err.await;
    }
    match status {
        Ok(s) => match s.signal() {
            Some(n) => {
                let _ = handle
                    .exit_signal_request(id, sig_of(n), s.core_dumped(), String::new(), String::new())
                    .await;
            }
            None => {
                let _ = channel.exit_status(s.code().unwrap_or(255).unsigned_abs()).await;
            }
        },
        Err(_) => {
            let _ = channel.exit_status(255).await;
        }
    }
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

fn size(cols: u32, rows: u32) -> WindowSize {
    let clamp = |v: u32, default: u16| if v == 0 { default } else { u16::try_from(v).unwrap_or(u16::MAX) };
    WindowSize { rows: clamp(rows, 24), cols: clamp(cols, 80) }
}

/// Copies the process's output to the channel (within the channel's window).
async fn pump(
    mut from: Box<dyn AsyncRead + Unpin + Send>,
    mut to: impl AsyncWrite + Unpin,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut done = *exited.borrow();
    loop {
        let read = if done {
            match tokio::time::timeout(IDLE_AFTER_EXIT, from.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = from.read(&mut buf) => r,
                changed = exited.changed() => {
                    done = changed.is_err() || *exited.borrow();
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// A started process and its ends.
struct Proc {
    child: tokio::process::Child,
    pid: i32,
    stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    stdout: Box<dyn AsyncRead + Unpin + Send>,
    stderr: Option<Box<dyn AsyncRead + Unpin + Send>>,
    master: Option<Arc<AsyncFd<OwnedFd>>>,
}

/// The login environment (as sshd gives it), then what the client was allowed to set.
fn environment(account: &Passwd, term: Option<&str>, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_string(), account.home.clone()),
        ("USER".into(), account.name.clone()),
        ("LOGNAME".into(), account.name.clone()),
        ("SHELL".into(), account.shell.clone()),
        ("PATH".into(), PATH.into()),
    ];
    if let Some(term) = term {
        env.push(("TERM".into(), term.into()));
    }
    for (k, v) in extra {
        // The pty's TERM wins over an env request's.
        if !(k == "TERM" && term.is_some()) {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
    }
    env
}

fn spawn(
    account: &Passwd,
    start: &Start,
    pty: Option<&(String, WindowSize)>,
    extra: &[(String, String)],
) -> Result<Proc, String> {
    let shell = &account.shell;
    let base = shell.rsplit('/').next().unwrap_or(shell);
    let mut cmd = tokio::process::Command::new(shell);
    match start {
        Start::Command(command) => {
            cmd.arg0(base).arg("-c").arg(OsStr::from_bytes(command));
        }
        // A login shell, as sshd starts it: argv[0] begins with '-'.
        _ => {
            cmd.arg0(format!("-{base}"));
        }
    }
    cmd.env_clear().envs(environment(account, pty.map(|(t, _)| t.as_str()), extra));
    let home = std::path::Path::new(&account.home);
    cmd.current_dir(if home.is_dir() { home } else { std::path::Path::new("/") });
    let tty = pty.is_some();
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (setsid,
    // ioctl) on the child's own descriptors.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.kill_on_drop(false);
    let failed = |e: io::Error| format!("cannot run the shell {shell}: {e}");
    match pty {
        Some((_, size)) => {
            let (master, slave) =
                crate::exec::open_pty(*size).map_err(|e| format!("cannot open a terminal: {e}"))?;
            let dup = |fd: &OwnedFd| {
                fd.try_clone().map(Stdio::from).map_err(|e| format!("cannot open a terminal: {e}"))
            };
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(dup(&slave)?);
            let child = cmd.spawn().map_err(failed)?;
            drop(slave);
            set_nonblocking(&master);
            // SAFETY: the AsyncFd owns the descriptor: it stays open, and the same, for its life.
            let master = unsafe { AsyncFd::register(master) };
            let master = Arc::new(master.map_err(|e| format!("cannot watch the terminal: {e}"))?);
            Ok(Proc {
                pid: child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
                child,
                stdin: Some(Box::new(PtyIo(master.clone()))),
                stdout: Box::new(PtyIo(master.clone())),
                stderr: None,
                master: Some(master),
            })
        }
        None => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(failed)?;
            let missing = || "the process's pipes are missing".to_string();
            let stdin = child.stdin.take().ok_or_else(missing)?;
            let stdout = child.stdout.take().ok_or_else(missing)?;
            let stderr = child.stderr.take().ok_or_else(missing)?;
            Ok(Proc {
                pid: child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
                child,
                stdin: Some(Box::new(stdin)),
                stdout: Box::new(stdout),
                stderr: Some(Box::new(stderr)),
                master: None,
            })
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// A terminal's master side, read and written without blocking a worker.
struct PtyIo(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PtyIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave descriptor is closed: the terminal's end-of-file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The signal a client names (RFC 4254 names, without "SIG").
fn signal_of(sig: &Sig) -> Option<Signal> {
    let name = match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    format!("SIG{name}").parse().ok()
}

/// The name a client expects for a signal that ended the process.
fn sig_of(n: i32) -> Sig {
    match Signal::try_from(n) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").into()),
        Err(_) => Sig::Custom(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_locale_and_terminal_variables_are_taken() {
        for ok in ["LANG", "LC_ALL", "LC_CTYPE", "TERM", "LANGUAGE", "TZ"] {
            assert!(env_allowed(ok, "C.UTF-8"), "{ok}");
        }
        for bad in ["LD_PRELOAD", "PATH", "HOME", "LC_", "LC_all", "BASH_ENV", "SHELL"] {
            assert!(!env_allowed(bad, "x"), "{bad}");
        }
        assert!(!env_allowed("LANG", "a\0b"));
        assert!(!env_allowed("LANG", &"x".repeat(2000)));
    }

    #[test]
    fn the_login_environment_is_sshd_s() {
        let account =
            Passwd { name: "root".into(), uid: 0, gid: 0, home: "/root".into(), shell: "/bin/bash".into() };
        let env = environment(
            &account,
            Some("xterm"),
            &[("TERM".into(), "dumb".into()), ("LANG".into(), "C".into())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/root"));
        assert_eq!(get("USER"), Some("root"));
        assert_eq!(get("SHELL"), Some("/bin/bash"));
        assert_eq!(get("TERM"), Some("xterm"), "the pty's TERM wins");
        assert_eq!(get("LANG"), Some("C"));
        assert!(get("PATH").is_some_and(|p| p.contains("/usr/bin")));
        let env = environment(&account, None, &[]);
        assert!(!env.iter().any(|(k, _)| k == "TERM"), "no terminal, no TERM");
    }

    #[test]
    fn signals_map_both_ways() {
        assert_eq!(signal_of(&Sig::INT), Some(Signal::SIGINT));
        assert_eq!(signal_of(&Sig::Custom("USR2".into())), Some(Signal::SIGUSR2));
        assert_eq!(signal_of(&Sig::Custom("NOPE".into())), None);
        assert!(matches!(sig_of(15), Sig::TERM));
        assert!(matches!(sig_of(12), Sig::Custom(n) if n == "USR2"));
    }
}
