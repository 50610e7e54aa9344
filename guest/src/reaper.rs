//! The one reaper. PID 1 inherits every orphan of the guest, and execs wait for their own
//! processes: both go through here, so an exec's exit status is never taken by anyone else.
//!
//! A process is registered in the same critical section that forks it (the table's lock is
//! held across the fork), so the reaper can never reap a pid it does not know yet: it looks
//! pids up under that lock. Statuses of unregistered pids (orphans) are dropped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use protocol::exec::ExitStatus;

/// Called once with the process's exit status, from the reaper's thread (so: quick).
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, OnExit>>,
}

impl Reaper {
    fn table(&self) -> MutexGuard<'_, HashMap<i32, OnExit>> {
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `fork` (which creates one child and returns its pid) with the table locked, and
    /// registers that pid: `on_exit` gets its status.
    pub fn spawn<E>(&self, fork: impl FnOnce() -> Result<Pid, E>, on_exit: OnExit) -> Result<Pid, E> {
        let mut table = self.table();
        let pid = fork()?;
        table.insert(pid.as_raw(), on_exit);
        Ok(pid)
    }

    /// Reaps every child that has exited (call on SIGCHLD, and now and then in case one was
    /// missed). Never blocks.
    pub fn reap(&self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let (pid, status) = status;
            let waiter = self.table().remove(&pid.as_raw());
            if let Some(on_exit) = waiter {
                on_exit(status);
            }
        }
    }

    /// How many registered processes have not exited yet.
    pub fn waiting(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn registered_child_gets_its_status_and_orphans_are_dropped() {
        let reaper = Reaper::default();
        let spawn = |code: i32| {
            let (tx, rx) = std::sync::mpsc::channel();
            let fork = || {
                let child = std::process::Command::new("sh").args(["-c", &format!("exit {code}")]).spawn()?;
                Ok::<_, std::io::Error>(Pid::from_raw(child.id() as i32))
            };
            reaper
                .spawn(
                    fork,
                    Box::new(move |s| {
                        let _ = tx.send(s);
                    }),
                )
                .unwrap();
            rx
        };
        let a = spawn(7);
        let b = spawn(0);
        // A child nobody waits for: reaped and dropped.
        #[allow(clippy::zombie_processes)] // the reaper under test reaps it
        let _ = std::process::Command::new("true").spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (mut got_a, mut got_b) = (None, None);
        while (got_a.is_none() || got_b.is_none()) && std::time::Instant::now() < deadline {
            reaper.reap();
            got_a = got_a.or(a.try_recv().ok());
            got_b = got_b.or(b.try_recv().ok());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got_a, Some(ExitStatus::Code(7)));
        assert_eq!(got_b, Some(ExitStatus::Code(0)));
        assert_eq!(reaper.waiting(), 0);
    }
}
