//! systemd units for the daemon (`Type=notify`, watchdog) and, for a system install, the helper.

use std::path::{Path, PathBuf};

pub const DAEMON_UNIT: &str = "bangerd.service";
pub const HELPER_UNIT: &str = "banger-helper.service";
/// How often systemd expects a watchdog ping; bangerd pings at half this.
pub const WATCHDOG_SEC: u32 = 30;

/// Whether systemd is the running init (the same test as `sd_booted()`).
pub fn running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn default_unit_dir(user: bool) -> PathBuf {
    if user {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from(".config"));
        config.join("systemd/user")
    } else {
        PathBuf::from("/etc/systemd/system")
    }
}

pub fn daemon_unit(bangerd: &Path, user: bool, group: Option<&str>) -> String {
    let mut exec = format!("{} --log-format json", bangerd.display());
    if !user {
        exec.push_str(" --system");
    }
    if let Some(g) = group {
        exec.push_str(&format!(" --group {g}"));
    }
    let (after, wanted_by) = if user {
        (String::new(), "default.target")
    } else {
        (format!("After={HELPER_UNIT}\nWants={HELPER_UNIT}\n"), "multi-user.target")
    };
    format!(
        "[Unit]\n\
         Description=banger owner daemon (microVMs)\n\
         {after}\n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={exec}\n\
         WatchdogSec={WATCHDOG_SEC}s\n\
         Restart=on-failure\n\
         RestartSec=1s\n\
         TimeoutStopSec=30s\n\
         RuntimeDirectory=banger\n\
         RuntimeDirectoryPreserve=yes\n\
         \n\
         [Install]\n\
         WantedBy={wanted_by}\n"
    )
}

pub fn helper_unit(helper: &Path, owner_uid: u32) -> String {
    format!(
        "[Unit]\n\
         Description=banger privileged helper (taps, bridge, jailer)\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={} --socket /run/banger/helper.sock --owner-uid {owner_uid} --state-dir /var/lib/banger\n\
         Restart=always\n\
         RestartSec=1s\n\
         RuntimeDirectory=banger\n\
         RuntimeDirectoryPreserve=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        helper.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_unit_is_notify_with_watchdog_and_wants_the_helper() {
        let u = daemon_unit(Path::new("/usr/bin/bangerd"), false, Some("banger"));
        assert!(u.contains("Type=notify\n"));
        assert!(u.contains("WatchdogSec=30s\n"));
        assert!(u.contains("ExecStart=/usr/bin/bangerd --log-format json --system --group banger\n"));
        assert!(u.contains("Wants=banger-helper.service\n"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn user_unit_has_no_helper_and_no_system_flag() {
        let u = daemon_unit(Path::new("/home/u/bin/bangerd"), true, None);
        assert!(!u.contains("--system"));
        assert!(!u.contains("helper"));
        assert!(u.contains("WantedBy=default.target\n"));
    }
}
