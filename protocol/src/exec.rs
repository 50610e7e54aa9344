//! Running a process in a guest: what to run, what comes back. Shared by the CLI ↔ bangerd
//! protocol ([`crate::daemon`]) and the bangerd ↔ banger-agent protocol ([`crate::agent`]), so
//! the daemon relays an exec without translating it. The model follows containerd's Task
//! service (exec, kill, resize, close-io, wait), so a shim can map onto it later.

use serde::{Deserialize, Serialize};

/// What to run. The agent checks every field again: the host is trusted, the guest is not,
/// but a bad request must still fail with a reason rather than a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in the `PATH` of `env` (or a default).
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs; the process gets exactly these (the daemon merges the image's).
    pub env: Vec<String>,
    /// Working directory; `/` when absent.
    pub cwd: Option<String>,
    /// A user name or uid, optionally `:group` (name or gid); root when absent. Resolved from
    /// the guest's own `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size (stdout and stderr are then one stream).
    pub tty: Option<WindowSize>,
    /// Whether stdin will be sent; without it the process reads end-of-file at once.
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal's number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(n) => 128 + n,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(n) => write!(f, "killed by signal {n}"),
        }
    }
}

/// Exit codes for an exec that never ran, as shells use them.
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_CANNOT_RUN: i32 = 126;

/// What an exec (or a copy) reports, in order: `Started`, then output, then exactly one of
/// `Exited` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecEvent {
    /// The process runs as `pid` in the guest.
    Started {
        pid: u32,
    },
    Output {
        stream: OutputStream,
        data: Vec<u8>,
    },
    /// The process ended, and all of its output (up to its own exit) has been sent.
    Exited(ExitStatus),
    /// It never ran, or the copy failed: `code` is what the CLI exits with (127: not found,
    /// 126: cannot run: bad cwd, unknown user, not executable), `message` says why.
    Failed {
        code: i32,
        message: String,
    },
}

/// What a client sends while its exec runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// End of stdin.
    CloseStdin,
    /// Deliver this signal to the process (Ctrl-C, SIGTERM to `banger vm exec`).
    Signal(i32),
    Resize(WindowSize),
}
