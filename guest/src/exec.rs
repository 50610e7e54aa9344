//! Running execs: one thread per exec streams its output (within the host's window), feeds its
//! stdin (acknowledging what the process took), and reports how it ended. The session's reader
//! only queues stdin, acks, signals and resizes here: it never blocks on an exec.
//!
//! An exec ends when its process has exited and its output is drained: to end-of-file, or, if
//! a background child still holds the output open, to what the pipe held when the process
//! exited, waiting at most [`GRACE`] for more. Then `Exited` is sent.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::Error;
use protocol::agent::{AgentEvent, MAX_EXECS, WINDOW};
use protocol::exec::{ExecEvent, ExecInput, ExecSpec, ExitStatus, OutputStream, WindowSize};

use crate::outbox::Outbox;
use crate::reaper::Reaper;
use crate::spawn::{ChildStdio, Prepared, SpawnError};

/// How long output is still read after the process exits, when something else holds it open.
pub const GRACE: Duration = Duration::from_millis(100);
/// What a pipe holds: after the exit, at most this much is the process's own output.
const PIPE_CAPACITY: usize = 64 * 1024;
const CHUNK: usize = 32 * 1024;

/// A session's execs (and copies), by id.
pub type Execs = Arc<Mutex<HashMap<u32, Handle>>>;

/// What a session needs to run execs.
#[derive(Clone)]
pub struct Ctx {
    pub outbox: Outbox,
    pub execs: Execs,
    pub reaper: Arc<Reaper>,
    /// PID 1 in a guest (children get their priority and OOM score reset).
    pub guest: bool,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How an exec (or copy) ended.
pub enum Outcome {
    Exited(ExitStatus),
    Failed(String),
}

/// The exec's state shared between its thread, the reader and the reaper.
pub struct Shared {
    wake: OwnedFd,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    outcome: Option<(Outcome, Instant)>,
    stdin: VecDeque<Vec<u8>>,
    stdin_queued: u64,
    stdin_closed: bool,
    unacked: u64,
    cancelled: bool,
}

impl Shared {
    fn new() -> Result<(Arc<Shared>, OwnedFd), SpawnError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| SpawnError::cannot_run(format!("cannot create a pipe: {e}")))?;
        Ok((Arc::new(Shared { wake: w, state: Mutex::default() }), r))
    }

    fn wake(&self) {
        let _ = nix::unistd::write(&self.wake, &[1]);
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.wake();
        r
    }

    /// Records how it ended (the first report wins).
    pub fn finish(&self, outcome: Outcome) {
        self.with(|s| {
            if s.outcome.is_none() {
                s.outcome = Some((outcome, Instant::now()));
            }
        });
    }
}

/// The table's entry for one exec.
pub struct Handle {
    shared: Arc<Shared>,
    /// The process (and its process group); `None` for a copy.
    pid: Option<Pid>,
    tty: Option<Arc<OwnedFd>>,
    stdin: bool,
}

/// The exec thread's descriptors.
pub struct Io {
    pub outputs: Vec<(OwnedFd, OutputStream)>,
    pub stdin: Option<OwnedFd>,
    /// Stdin is a terminal: closing it sends end-of-file (^D) instead.
    pub stdin_is_tty: bool,
    /// A TCP connection (`Connect`) is both stdin and the output: closing stdin shuts its
    /// write side, and the exec ends once the output reaches end-of-file.
    pub socket: bool,
}

/// What starting an exec produced.
pub struct Started {
    pub pid: Option<Pid>,
    pub io: Io,
    pub tty: Option<Arc<OwnedFd>>,
}

fn error(id: u32, message: impl Into<String>) -> AgentEvent {
    AgentEvent::Error { id: Some(id), error: Error::new(protocol::ErrorKind::InvalidInput, message) }
}

fn event(id: u32, event: ExecEvent) -> AgentEvent {
    AgentEvent::Exec { id, event }
}

/// Starts exec (or copy) `id`: checks the id, runs `start` with the session's table locked,
/// answers `Started` (or `Failed`), and runs the exec's thread.
pub fn begin(
    ctx: &Ctx,
    id: u32,
    stdin: bool,
    start: impl FnOnce(&Arc<Shared>) -> Result<Started, SpawnError>,
) {
    let mut table = lock(&ctx.execs);
    if table.contains_key(&id) {
        return ctx.outbox.send(&error(id, format!("exec id {id} is already in use")));
    }
    if table.len() >= MAX_EXECS {
        return ctx
            .outbox
            .send(&error(id, format!("too many execs at once (at most {MAX_EXECS} per session)")));
    }
    let (shared, wake) = match Shared::new() {
        Ok(s) => s,
        Err(e) => return ctx.outbox.send(&event(id, ExecEvent::Failed { code: e.code, message: e.message })),
    };
    let started = match start(&shared) {
        Ok(s) => s,
        Err(e) => return ctx.outbox.send(&event(id, ExecEvent::Failed { code: e.code, message: e.message })),
    };
    let pid = started.pid;
    // A copy runs in the agent's own process; a connection in none.
    let reported = match (pid, started.io.socket) {
        (Some(p), _) => p.as_raw().unsigned_abs(),
        (None, true) => 0,
        (None, false) => std::process::id(),
    };
    ctx.outbox.send(&event(id, ExecEvent::Started { pid: reported }));
    table.insert(id, Handle { shared: shared.clone(), pid, tty: started.tty, stdin });
    drop(table);
    let c = ctx.clone();
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .stack_size(128 * 1024)
        .spawn(move || run(&c, id, &s, &wake, started.io));
    if let Err(e) = thread {
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        }
        lock(&ctx.execs).remove(&id);
        ctx.outbox.send(&event(
            id,
            ExecEvent::Failed { code: 126, message: format!("cannot start a thread: {e}") },
        ));
    }
}

/// `AgentRequest::Exec`.
pub fn start(ctx: &Ctx, id: u32, spec: &ExecSpec) {
    begin(ctx, id, spec.stdin, |shared| {
        let identity = match &spec.user {
            Some(u) => Some((
                u.clone(),
                crate::users::resolve(std::path::Path::new("/"), Some(u)).map_err(SpawnError::cannot_run)?,
            )),
            None => None,
        };
        let prepared = Prepared::new(spec, identity, ctx.guest)?;
        let (child, io, tty) = match spec.tty {
            Some(size) => {
                let (master, slave) = open_pty(size)
                    .map_err(|e| SpawnError::cannot_run(format!("cannot open a terminal: {e}")))?;
                let stdin = if spec.stdin { Some(dup(&master)?) } else { None };
                let io = Io {
                    outputs: vec![(dup(&master)?, OutputStream::Stdout)],
                    stdin,
                    stdin_is_tty: true,
                    socket: false,
                };
                (ChildStdio::Tty(slave), io, Some(Arc::new(master)))
            }
            None => {
                let (in_r, in_w) = pipe()?;
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                let io = Io {
                    outputs: vec![(out_r, OutputStream::Stdout), (err_r, OutputStream::Stderr)],
                    stdin: spec.stdin.then_some(in_w),
                    stdin_is_tty: false,
                    socket: false,
                };
                (ChildStdio::Pipes { stdin: in_r, stdout: out_w, stderr: err_w }, io, None)
            }
        };
        let s = shared.clone();
        let pid =
            prepared.spawn(&ctx.reaper, child, Box::new(move |status| s.finish(Outcome::Exited(status))))?;
        Ok(Started { pid: Some(pid), io, tty })
    });
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::cannot_run(format!("cannot create a pipe: {e}")))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, SpawnError> {
    fd.try_clone().map_err(|e| SpawnError::cannot_run(format!("cannot duplicate a descriptor: {e}")))
}

/// A new pseudo-terminal of `size`: (master, slave), both close-on-exec.
pub(crate) fn open_pty(size: WindowSize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int we own, on a ptmx descriptor we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let slave = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    resize(&master, size)?;
    Ok((master, slave))
}

pub(crate) fn resize(master: &OwnedFd, size: WindowSize) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own, on a terminal descriptor we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `AgentRequest::Input`. Stdin for an exec that has ended is dropped without a word (it
/// crossed the exec's end on the wire); signals and resizes for an unknown id are errors.
pub fn input(ctx: &Ctx, id: u32, input: ExecInput) {
    let found = lock(&ctx.execs).get(&id).map(|h| (h.shared.clone(), h.pid, h.tty.clone(), h.stdin));
    let Some((shared, pid, tty, has_stdin)) = found else {
        if matches!(input, ExecInput::Signal(_) | ExecInput::Resize(_)) {
            ctx.outbox.send(&error(id, format!("no exec {id}")));
        }
        return;
    };
    let refused = match input {
        ExecInput::Stdin(data) if !has_stdin => {
            Some(format!("exec {id} was started without stdin ({} bytes dropped)", data.len()))
        }
        ExecInput::Stdin(data) => shared.with(|s| {
            let len = data.len() as u64;
            if s.stdin_closed {
                Some(format!("stdin of exec {id} is closed"))
            } else if s.stdin_queued + len > WINDOW {
                Some(format!("stdin of exec {id} overran its window of {WINDOW} bytes"))
            } else {
                if len > 0 {
                    s.stdin_queued += len;
                    s.stdin.push_back(data);
                }
                None
            }
        }),
        ExecInput::CloseStdin => shared.with(|s| {
            s.stdin_closed = true;
            None
        }),
        ExecInput::Signal(n) => match (Signal::try_from(n), pid) {
            (Err(_), _) => Some(format!("{n} is not a signal")),
            (Ok(_), None) => Some(format!("exec {id} is a copy, not a process")),
            (Ok(signal), Some(pid)) => {
                // A tty's signals go to its process group, as the terminal's would; SIGKILL
                // (the host ending the exec) takes the whole group, background children too.
                let group = tty.is_some() || signal == Signal::SIGKILL;
                let target = if group { Pid::from_raw(-pid.as_raw()) } else { pid };
                // Not once it has been reaped: the pid may already be someone else's.
                let exited = shared.with(|s| s.outcome.is_some());
                if !exited {
                    let _ = kill(target, signal);
                }
                None
            }
        },
        ExecInput::Resize(size) => match tty {
            None => Some(format!("exec {id} has no terminal")),
            Some(master) => resize(&master, size).err().map(|e| format!("cannot resize: {e}")),
        },
    };
    if let Some(message) = refused {
        ctx.outbox.send(&error(id, message));
    }
}

/// `AgentRequest::OutputAck` (an ack for an exec that has ended is ignored).
pub fn ack(ctx: &Ctx, id: u32, bytes: u64) {
    if let Some(shared) = lock(&ctx.execs).get(&id).map(|h| h.shared.clone()) {
        shared.with(|s| s.unacked = s.unacked.saturating_sub(bytes));
    }
}

/// The session is gone: kill every exec's process group and stop every exec thread.
pub fn cancel_all(execs: &Execs) {
    for handle in lock(execs).values() {
        handle.shared.with(|s| s.cancelled = true);
        if let Some(pid) = handle.pid {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
    }
}

struct Output {
    fd: Option<OwnedFd>,
    stream: OutputStream,
    /// Bytes read since the process exited.
    drained: usize,
    /// The last poll found nothing to read.
    idle: bool,
}

/// The exec's thread.
fn run(ctx: &Ctx, id: u32, shared: &Arc<Shared>, wake: &OwnedFd, io: Io) {
    let mut outputs: Vec<Output> = io
        .outputs
        .into_iter()
        .map(|(fd, stream)| Output { fd: Some(fd), stream, drained: 0, idle: false })
        .collect();
    let mut stdin = io.stdin;
    for fd in outputs.iter().filter_map(|o| o.fd.as_ref()).chain(stdin.as_ref()) {
        set_nonblocking(fd);
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let (outcome, cancelled) = loop {
        // What the others have said.
        let (ended, cancelled, credit, close_stdin) = {
            let mut s = lock(&shared.state);
            if pending.is_empty() {
                pending = s.stdin.pop_front().unwrap_or_default();
            }
            let close = s.stdin_closed && s.stdin.is_empty();
            (s.outcome.as_ref().map(|(_, at)| *at), s.cancelled, WINDOW.saturating_sub(s.unacked), close)
        };
        if cancelled {
            break (None, true);
        }
        if (ended.is_some() || (pending.is_empty() && close_stdin))
            && let Some(fd) = stdin.take()
            && ended.is_none()
        {
            if io.stdin_is_tty {
                let _ = nix::unistd::write(&fd, &[4]); // ^D: end-of-file on a terminal
            } else if io.socket {
                // The output is the same socket: only its write side ends.
                let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            }
        }
        if let Some(at) = ended {
            let past_grace = at.elapsed() >= GRACE;
            let done = outputs
                .iter()
                .all(|o| o.fd.is_none() || (past_grace && (o.idle || o.drained >= PIPE_CAPACITY)));
            if done {
                break (lock(&shared.state).outcome.take().map(|(o, _)| o), false);
            }
        }
        // Wait for something to do.
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        let mut polled = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            if let (Some(fd), true) = (&o.fd, credit > 0) {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                polled.push(i);
            }
        }
        let stdin_slot = match (&stdin, pending.is_empty()) {
            (Some(fd), false) => {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let timeout = match ended {
            None => PollTimeout::NONE,
            Some(at) => {
                let left = GRACE.saturating_sub(at.elapsed()).max(Duration::from_millis(5));
                PollTimeout::try_from(left.as_millis()).unwrap_or(PollTimeout::MAX)
            }
        };
        if let Err(e) = poll(&mut fds, timeout) {
            if e != Errno::EINTR {
                crate::log!("exec {id}: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut drain = [0u8; 64];
        while let Ok(n @ 1..) = nix::unistd::read(wake, &mut drain) {
            let _ = n;
        }
        // Output, within the window.
        let mut credit = credit;
        for (slot, &i) in polled.iter().enumerate() {
            let Some(o) = outputs.get_mut(i) else { continue };
            let readable = ready.get(slot + 1).copied().unwrap_or(false);
            o.idle = !readable;
            if !readable || credit == 0 {
                continue;
            }
            let Some(fd) = &o.fd else { continue };
            let want = usize::try_from(credit).unwrap_or(CHUNK).min(CHUNK);
            match nix::unistd::read(fd, buf.get_mut(..want).unwrap_or_default()) {
                Ok(0) | Err(Errno::EIO) => o.fd = None,
                Ok(n) => {
                    let data = buf.get(..n).unwrap_or_default().to_vec();
                    lock(&shared.state).unacked += n as u64;
                    credit = credit.saturating_sub(n as u64);
                    if ended.is_some() {
                        o.drained += n;
                    }
                    ctx.outbox.send(&event(id, ExecEvent::Output { stream: o.stream, data }));
                }
                Err(Errno::EAGAIN | Errno::EINTR) => o.idle = true,
                Err(e) if io.socket => {
                    shared
                        .finish(Outcome::Failed(format!("the connection in the guest failed: {}", e.desc())));
                    o.fd = None;
                }
                Err(e) => {
                    crate::log!("exec {id}: reading its output: {e}");
                    o.fd = None;
                }
            }
        }
        // A connection ends with the guest side's end-of-file (its output is all sent by now).
        if io.socket && outputs.iter().all(|o| o.fd.is_none()) {
            shared.finish(Outcome::Exited(protocol::exec::ExitStatus::Code(0)));
        }
        // Stdin, as the process takes it.
        if let (Some(slot), Some(fd)) = (stdin_slot, &stdin)
            && ready.get(slot).copied().unwrap_or(false)
        {
            match nix::unistd::write(fd, &pending) {
                Ok(n) => {
                    pending.drain(..n.min(pending.len()));
                    took_stdin(ctx, id, shared, n);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => {
                    // The process closed its stdin: what it will never read is acked anyway.
                    let dropped = std::mem::take(&mut pending).len()
                        + lock(&shared.state).stdin.drain(..).map(|d| d.len()).sum::<usize>();
                    took_stdin(ctx, id, shared, dropped);
                    stdin = None;
                }
            }
        }
    };
    // Off the table before the last word, so the host may reuse the id at once.
    {
        let mut table = lock(&ctx.execs);
        if table.get(&id).is_some_and(|h| Arc::ptr_eq(&h.shared, shared)) {
            table.remove(&id);
        }
    }
    if cancelled {
        return;
    }
    let last = match outcome {
        Some(Outcome::Exited(status)) => ExecEvent::Exited(status),
        Some(Outcome::Failed(message)) => ExecEvent::Failed { code: 1, message },
        None => ExecEvent::Failed { code: 1, message: "the exec ended without a status".into() },
    };
    ctx.outbox.send(&event(id, last));
}

fn took_stdin(ctx: &Ctx, id: u32, shared: &Shared, n: usize) {
    if n == 0 {
        return;
    }
    let n = n as u64;
    let mut s = lock(&shared.state);
    s.stdin_queued = s.stdin_queued.saturating_sub(n);
    drop(s);
    ctx.outbox.send(&AgentEvent::StdinAck { id, bytes: n });
}
