//! Programs bangerd runs (mkfs.ext4, resize2fs): each dies with the daemon, so a crash or a
//! `kill -9` leaves none running on, half-writing a file nobody will use.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `program` set to get SIGKILL when the daemon dies (PR_SET_PDEATHSIG).
///
/// The signal follows the *thread* that forked, not the process: callers fork from threads
/// that outlive the child (a tokio worker, or a blocking thread that waits for it).
pub fn dies_with_daemon(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let daemon = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid) without allocating, except to build an error on failure.
    unsafe {
        cmd.pre_exec(move || die_with(daemon));
    }
    cmd
}

fn die_with(daemon: u32) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The daemon may have died before the prctl took effect: then no signal would come.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } as u32 != daemon {
        return Err(std::io::Error::other("bangerd died while starting this program"));
    }
    Ok(())
}
