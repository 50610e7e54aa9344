//! A VMM process, held by pidfd. A pid is only a number that the kernel hands out again; a pidfd
//! names one process for as long as it is held, so a signal sent through it cannot reach another.
//! The helper takes a pidfd of each VMM it launches, and of a VMM it did not launch (a helper
//! restarted under running VMs) only after checking that the process lives in that VM's jail.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::FileStat;

#[derive(Debug)]
pub struct Vmm {
    pidfd: OwnedFd,
    pub pid: u32,
}

/// Why a pid cannot be taken as a VM's VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum NotOurs {
    /// No such process (or it has exited): nothing to do.
    Gone,
    /// A live process that is not the VMM of that jail.
    Other(String),
}

impl Vmm {
    /// Takes `pid` as the VMM this helper just launched: the jailer's child, which became the
    /// helper's own child (the helper is a child subreaper) when the jailer exited, and runs
    /// `exec_name` (or is the jailer still, about to exec it). Right after the launch it may
    /// not have entered its jail yet, so its parent is the proof; its cgroup is checked next.
    pub fn launched(pid: u32, exec_name: &str) -> Result<Vmm, NotOurs> {
        let vmm = Vmm::open(pid)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
        let comm = comm(pid);
        // One that exited already is still held: its exit is collected at clean-up.
        if ppid != Some(std::process::id()) || (comm != command(exec_name) && comm != "jailer") {
            return Err(NotOurs::Other(format!("pid {pid} is not a VMM this helper launched")));
        }
        Ok(vmm)
    }

    /// Takes `pid` if it is in `cgroup` (as `/proc/PID/cgroup` names it), checked after its
    /// pidfd is open.
    pub fn in_cgroup(pid: u32, cgroup: &str) -> Result<Vmm, NotOurs> {
        let vmm = Vmm::open(pid)?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !text.lines().any(|l| l.splitn(3, ':').nth(2) == Some(cgroup)) {
            return Err(if vmm.exited() {
                NotOurs::Gone
            } else {
                NotOurs::Other(format!("pid {pid} is not in the VM's cgroup {cgroup}"))
            });
        }
        Ok(vmm)
    }

    fn open(pid: u32) -> Result<Vmm, NotOurs> {
        let raw = i32::try_from(pid).map_err(|_| NotOurs::Gone)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(NotOurs::Gone);
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        Ok(Vmm { pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, pid })
    }

    /// Takes `pid` as the VMM whose root directory is `jail_root` (the jailer pivots into it) and
    /// whose command is `exec_name` (Firecracker's file name): a VMM found again by a restarted
    /// helper. Checked after the pidfd is open, so the checks are of the
    /// process the pidfd holds, not of one that took its number since.
    pub fn verify(pid: u32, jail_root: &FileStat, exec_name: &str) -> Result<Vmm, NotOurs> {
        let vmm = Vmm::open(pid)?;
        let root = nix::sys::stat::stat(format!("/proc/{pid}/root").as_str());
        let comm = comm(pid);
        let in_jail = root.is_ok_and(|r| (r.st_dev, r.st_ino) == (jail_root.st_dev, jail_root.st_ino));
        // Read after the reads: what they saw was this process, not one that took its pid since.
        if vmm.exited() {
            return Err(NotOurs::Gone);
        }
        if !in_jail || comm != command(exec_name) {
            return Err(NotOurs::Other(format!(
                "pid {pid} is {comm:?}, not the Firecracker of this VM's jail"
            )));
        }
        Ok(vmm)
    }

    /// Whether the process has exited (a zombie counts: it runs no more).
    pub fn exited(&self) -> bool {
        self.wait(Duration::ZERO)
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) => return n > 0,
                Err(Errno::EINTR) => continue,
                Err(_) => return true,
            }
        }
    }

    /// Collects the exit of a VMM that is the helper's child (one it launched), so it leaves no
    /// zombie; one that is not is someone else's to collect.
    pub fn reap(&self) {
        let _ = nix::sys::wait::waitid(
            nix::sys::wait::Id::PIDFd(self.pidfd.as_fd()),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOHANG,
        );
    }

    /// SIGKILL through the pidfd; a process that has exited already is fine.
    pub fn kill(&self) -> Result<(), Errno> {
        // SAFETY: pidfd_send_signal takes a pidfd, a signal number, no siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match Errno::result(r) {
            Ok(_) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A process's command name, as the kernel keeps it.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// What the kernel keeps of a program's name as its command: 15 bytes.
fn command(exec_name: &str) -> String {
    exec_name.chars().take(15).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_outside_the_jail_is_not_taken() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let jail = tempfile::tempdir().unwrap();
        let root = nix::sys::stat::stat(jail.path()).unwrap();
        match Vmm::verify(child.id(), &root, "firecracker") {
            Err(NotOurs::Other(why)) => assert!(why.contains("sleep"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(Vmm::in_cgroup(child.id(), "/banger-test/web").is_err(), "not in the VM's cgroup");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(Vmm::verify(child.id(), &root, "firecracker").unwrap_err(), NotOurs::Gone);
    }
}
