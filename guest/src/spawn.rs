//! Creating an exec's process: everything is prepared before `fork` (the agent has threads,
//! so the child may only make async-signal-safe calls: no allocation, no locks), and the child
//! reports a failure to change directory, switch user or exec through a close-on-exec pipe,
//! so a missing command fails at once with the reason instead of hanging.

use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;
use protocol::exec::{EXIT_CANNOT_RUN, EXIT_NOT_FOUND, ExecSpec};

use crate::reaper::{OnExit, Reaper};
use crate::users::Identity;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the child failed, as it reports it.
const STAGE_SETUP: u32 = 1;
const STAGE_CWD: u32 = 2;
const STAGE_USER: u32 = 3;
const STAGE_EXEC: u32 = 4;

/// Why an exec never ran: what `Failed` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnError {
    pub code: i32,
    pub message: String,
}

impl SpawnError {
    pub fn cannot_run(message: impl Into<String>) -> Self {
        SpawnError { code: EXIT_CANNOT_RUN, message: message.into() }
    }
}

/// The child's standard descriptors (the child's ends).
pub enum ChildStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The terminal's slave side: the child's controlling terminal and fds 0, 1, 2.
    Tty(OwnedFd),
}

/// A spec turned into C strings, ready for a child that must not allocate.
pub struct Prepared {
    program: String,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    cwd_text: String,
    identity: Option<(String, Identity)>,
    /// Reset the priority and OOM score PID 1 gave itself.
    reset_priority: bool,
}

fn cstring(what: &str, s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::cannot_run(format!("{what} contains a NUL byte")))
}

impl Prepared {
    pub fn new(
        spec: &ExecSpec,
        identity: Option<(String, Identity)>,
        reset_priority: bool,
    ) -> Result<Self, SpawnError> {
        let Some(program) = spec.argv.first() else {
            return Err(SpawnError::cannot_run("no command given (empty argv)"));
        };
        if program.is_empty() {
            return Err(SpawnError { code: EXIT_NOT_FOUND, message: "\"\": command not found".into() });
        }
        let argv = spec.argv.iter().map(|a| cstring("an argument", a)).collect::<Result<Vec<_>, _>>()?;
        let env =
            spec.env.iter().map(|e| cstring("an environment entry", e)).collect::<Result<Vec<_>, _>>()?;
        let candidates = if program.contains('/') {
            vec![cstring("the command", program)?]
        } else {
            let path = spec.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
            path.split(':')
                .map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    cstring("PATH", &format!("{}/{program}", dir.trim_end_matches('/')))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let cwd_text = spec.cwd.clone().unwrap_or_else(|| "/".into());
        Ok(Prepared {
            program: program.clone(),
            candidates,
            argv,
            env,
            cwd: cstring("the working directory", &cwd_text)?,
            cwd_text,
            identity,
            reset_priority,
        })
    }

    /// Forks and execs, registered with `reaper` in the same step. Returns once the program
    /// runs (its exec succeeded) or with the reason it could not.
    pub fn spawn(&self, reaper: &Reaper, stdio: ChildStdio, on_exit: OnExit) -> Result<Pid, SpawnError> {
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SpawnError::cannot_run(format!("cannot create a pipe: {e}")))?;
        let mut argv: Vec<*const c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let candidates: Vec<*const c_char> = self.candidates.iter().map(|c| c.as_ptr()).collect();
        let groups: Vec<libc::gid_t> =
            self.identity.as_ref().map(|(_, i)| i.groups.clone()).unwrap_or_default();
        let child = Child {
            stdio: match &stdio {
                ChildStdio::Pipes { stdin, stdout, stderr } => {
                    [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]
                }
                ChildStdio::Tty(slave) => [slave.as_raw_fd(); 3],
            },
            tty: matches!(stdio, ChildStdio::Tty(_)),
            cwd: self.cwd.as_ptr(),
            ids: self.identity.as_ref().map(|(_, i)| (i.uid, i.gid)),
            groups: &groups,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            candidates: &candidates,
            err: err_w.as_raw_fd(),
            reset_priority: self.reset_priority,
        };
        let fork = || {
            // SAFETY: the child runs only `Child::run`, which makes async-signal-safe calls on
            // memory prepared before the fork, and never returns.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => child.run(),
                Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
                Err(e) => Err(SpawnError::cannot_run(format!("cannot fork: {e}"))),
            }
        };
        let pid = reaper.spawn(fork, on_exit)?;
        drop(err_w);
        drop(stdio);
        let mut report = [0u8; 8];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&err_r, report.get_mut(got..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if got < report.len() {
            return Ok(pid); // the exec succeeded: the pipe closed with it
        }
        let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
        let stage = u32::from_ne_bytes([s0, s1, s2, s3]);
        let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes([e0, e1, e2, e3]));
        Err(self.explain(stage, errno))
    }

    fn explain(&self, stage: u32, errno: nix::errno::Errno) -> SpawnError {
        use nix::errno::Errno;
        let reason = errno.desc();
        match stage {
            STAGE_CWD => SpawnError::cannot_run(format!(
                "cannot change to the working directory {}: {reason}",
                self.cwd_text
            )),
            STAGE_USER => {
                let who = self.identity.as_ref().map_or("?", |(spec, _)| spec.as_str());
                SpawnError::cannot_run(format!("cannot switch to user {who}: {reason}"))
            }
            STAGE_EXEC if matches!(errno, Errno::ENOENT | Errno::ENOTDIR) => SpawnError {
                code: EXIT_NOT_FOUND,
                message: if self.program.contains('/') {
                    format!("{}: not found ({reason})", self.program)
                } else {
                    format!("{}: command not found in PATH", self.program)
                },
            },
            STAGE_EXEC => SpawnError::cannot_run(format!("{}: cannot run: {reason}", self.program)),
            STAGE_SETUP => SpawnError::cannot_run(format!("cannot set up the process: {reason}")),
            _ => SpawnError::cannot_run(format!("the process could not start: {reason}")),
        }
    }
}

/// What the child needs, as raw pointers into the parent's prepared memory (valid in the
/// child: fork copies the address space).
struct Child<'a> {
    stdio: [RawFd; 3],
    tty: bool,
    cwd: *const c_char,
    ids: Option<(u32, u32)>,
    groups: &'a [libc::gid_t],
    argv: *const *const c_char,
    envp: *const *const c_char,
    candidates: &'a [*const c_char],
    err: RawFd,
    reset_priority: bool,
}

impl Child<'_> {
    /// The child's side: never returns. Only async-signal-safe calls.
    fn run(&self) -> ! {
        // SAFETY: each call below is async-signal-safe, takes pointers into memory prepared
        // before the fork (still mapped in the child), and the child ends in execve or _exit.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if self.reset_priority {
                libc::setpriority(libc::PRIO_PROCESS, 0, 0);
                let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if libc::setsid() < 0 {
                self.fail(STAGE_SETUP);
            }
            if self.tty && libc::ioctl(self.stdio[0], libc::TIOCSCTTY, 0) < 0 {
                self.fail(STAGE_SETUP);
            }
            for (target, fd) in self.stdio.iter().enumerate() {
                if libc::dup2(*fd, target as RawFd) < 0 {
                    self.fail(STAGE_SETUP);
                }
            }
            if libc::chdir(self.cwd) < 0 {
                self.fail(STAGE_CWD);
            }
            if let Some((uid, gid)) = self.ids
                && (libc::setgroups(self.groups.len(), self.groups.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0)
            {
                self.fail(STAGE_USER);
            }
            let mut errno = libc::ENOENT;
            for program in self.candidates {
                libc::execve(*program, self.argv, self.envp);
                let e = *libc::__errno_location();
                // As execvp: keep looking past a missing file; remember a permission problem.
                if e == libc::EACCES {
                    errno = e;
                } else if e != libc::ENOENT && e != libc::ENOTDIR {
                    errno = e;
                    break;
                }
            }
            *libc::__errno_location() = errno;
            self.fail(STAGE_EXEC)
        }
    }

    /// Reports `stage` and the current errno to the parent, then exits.
    ///
    /// # Safety
    /// Only in the forked child.
    unsafe fn fail(&self, stage: u32) -> ! {
        // SAFETY: async-signal-safe calls on a stack buffer, in the child.
        unsafe {
            let errno = *libc::__errno_location();
            let s = stage.to_ne_bytes();
            let e = errno.to_ne_bytes();
            let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
            libc::write(self.err, buf.as_ptr().cast(), buf.len());
            libc::_exit(EXIT_NOT_FOUND)
        }
    }
}
