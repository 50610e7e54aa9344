//! Process hygiene before the helper does anything: nothing inherited may leak into what it
//! later launches as root.

use std::path::Path;

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

/// Paths given to a root process must be absolute and free of `..`.
pub fn absolute(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown} must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("{shown} must not contain `..`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_dotdot_paths_are_refused() {
        assert!(absolute(Path::new("run/helper.sock")).is_err());
        assert!(absolute(Path::new("/run/banger/../../etc/x")).is_err());
        assert!(absolute(Path::new("/run/banger/helper.sock")).is_ok());
    }
}
