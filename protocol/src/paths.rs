//! Where the sockets and state live by default, so the CLI and the daemon agree without talking.
//!
//! A user daemon: `$XDG_RUNTIME_DIR/banger/bangerd.sock` and XDG data and cache dirs.
//! The system service (`--system`): `/run/banger/bangerd.sock` and `/var/lib/banger`.
//! `--state-dir DIR` (tests, several daemons on one host) puts everything under DIR.

use std::path::{Path, PathBuf};

pub const SYSTEM_RUN_DIR: &str = "/run/banger";
pub const SYSTEM_STATE_DIR: &str = "/var/lib/banger";
pub const DAEMON_SOCKET: &str = "bangerd.sock";
pub const HELPER_SOCKET: &str = "helper.sock";

/// The directories one daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Sockets and pid files.
    pub run_dir: PathBuf,
    /// Images, kernels, VMs.
    pub state_dir: PathBuf,
    /// Re-fetchable data (blobs).
    pub cache_dir: PathBuf,
}

impl Layout {
    pub fn under(dir: &Path) -> Self {
        Layout { run_dir: dir.join("run"), state_dir: dir.to_path_buf(), cache_dir: dir.join("cache") }
    }

    pub fn system() -> Self {
        Layout {
            run_dir: PathBuf::from(SYSTEM_RUN_DIR),
            state_dir: PathBuf::from(SYSTEM_STATE_DIR),
            cache_dir: PathBuf::from("/var/cache/banger"),
        }
    }

    /// A user daemon's layout from the environment; root without a session gets the system one.
    pub fn user(env: impl Fn(&str) -> Option<String>, uid: u32) -> Self {
        let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var("HOME");
        let run_dir = match var("XDG_RUNTIME_DIR") {
            Some(d) => d.join("banger"),
            None if uid == 0 => return Layout::system(),
            None => std::env::temp_dir().join(format!("banger-{uid}")),
        };
        let state_dir = var("XDG_DATA_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".local/share")))
            .unwrap_or_else(|| run_dir.clone())
            .join("banger");
        let cache_dir = var("XDG_CACHE_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".cache")))
            .unwrap_or_else(|| run_dir.clone())
            .join("banger");
        Layout { run_dir, state_dir, cache_dir }
    }

    /// Picks the layout the flags ask for: `--state-dir` wins, then `--system`, then the user's.
    pub fn resolve(state_dir: Option<&Path>, system: bool) -> Self {
        match (state_dir, system) {
            (Some(d), _) => Layout::under(d),
            (None, true) => Layout::system(),
            (None, false) => Layout::user(|k| std::env::var(k).ok(), nix::unistd::getuid().as_raw()),
        }
    }

    pub fn daemon_socket(&self) -> PathBuf {
        self.run_dir.join(DAEMON_SOCKET)
    }

    pub fn helper_socket(&self) -> PathBuf {
        self.run_dir.join(HELPER_SOCKET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_layout_follows_xdg() {
        let env = |k: &str| match k {
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        let l = Layout::user(env, 1000);
        assert_eq!(l.daemon_socket(), PathBuf::from("/run/user/1000/banger/bangerd.sock"));
        assert_eq!(l.state_dir, PathBuf::from("/home/u/.local/share/banger"));
        assert_eq!(l.cache_dir, PathBuf::from("/home/u/.cache/banger"));
    }

    #[test]
    fn root_without_session_uses_system_layout() {
        assert_eq!(Layout::user(|_| None, 0), Layout::system());
        assert_eq!(Layout::system().daemon_socket(), PathBuf::from("/run/banger/bangerd.sock"));
    }
}
