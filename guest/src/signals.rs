//! The main thread's loop: every signal the agent handles is blocked in all threads and taken
//! here, synchronously, so reaping and forwarding never race a handler. Children unblock them
//! before they exec (see `spawn.rs`).

use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::reaper::Reaper;

const HANDLED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
];

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in this thread and every thread it starts later: call first.
pub fn block() {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None) {
        crate::log!("cannot block signals: {e}");
    }
}

/// Takes signals forever: reaps on SIGCHLD (and every second, in case), passes the others to
/// `on_signal`.
pub fn run(reaper: &Reaper, on_signal: &dyn Fn(Signal)) -> ! {
    let set = handled();
    let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
    loop {
        // SAFETY: sigtimedwait reads the set and timeout we own; the info pointer may be null.
        let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        match Signal::try_from(n) {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(other) => on_signal(other),
        }
        reaper.reap();
    }
}

/// Kills every child of this process (and, as a subreaper, their orphans as they arrive),
/// waiting up to `limit`.
pub fn kill_children(reaper: &Reaper, limit: Duration) {
    let me = std::process::id().to_string();
    let deadline = std::time::Instant::now() + limit;
    loop {
        let children = children_of(&me);
        if children.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in children {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
        reaper.reap();
    }
}

fn children_of(ppid: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces and parentheses; split after the last ')'.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) == Some(ppid)
        })
        .collect()
}
