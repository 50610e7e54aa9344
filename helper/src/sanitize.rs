//! Process hygiene before the helper does anything: nothing inherited may leak into what it
//! later launches as root.

use nix::sys::stat::{Mode, umask};

/// Closes every inherited fd above stderr, clears the environment, and sets umask 077.
pub fn process() -> Result<(), String> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The read_dir fd is already closed and may show up here; EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).filter(|k| k != "RUST_BACKTRACE").collect();
    for k in keys {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::remove_var(k) };
    }
    umask(Mode::from_bits_truncate(0o077));
    Ok(())
}
