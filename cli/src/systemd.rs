//! systemd units for the daemon (`Type=notify`, watchdog) and, for a system install, the helper.
//!
//! The system daemon runs as an unprivileged user (`banger` by default) and only the helper runs
//! as root, with the capabilities its operations need. Both are hardened; each relaxation is
//! commented with the operation that needs it. Measured with
//! `systemd-analyze security --offline=yes`: the daemon scores at most 2.5, the helper at most 5.0
//! (a test in this module checks both where systemd-analyze exists).

use std::path::{Path, PathBuf};

pub const DAEMON_UNIT: &str = "bangerd.service";
pub const HELPER_UNIT: &str = "banger-helper.service";
/// How often systemd expects a watchdog ping; bangerd pings at half this.
pub const WATCHDOG_SEC: u32 = 30;
/// The system helper's socket: its own runtime dir, since the daemon's belongs to the daemon's
/// user and the helper (root) starts first.
pub const SYSTEM_HELPER_SOCKET: &str = "/run/banger-helper/helper.sock";

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

/// Who the system daemon runs as, and who else may use its socket.
#[derive(Debug, Clone)]
pub struct SystemDaemon<'a> {
    /// The daemon's user (a system user, not root).
    pub user: &'a str,
    /// Members of this group may use the socket (mode 0660); usually the user's own group.
    pub group: Option<&'a str>,
}

/// A per-user daemon (`systemctl --user`): no helper, no hardening beyond what a user's
/// manager allows.
pub fn user_daemon_unit(bangerd: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=banger owner daemon (microVMs)\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={} --log-format json\n\
         WatchdogSec={WATCHDOG_SEC}s\n\
         Restart=on-failure\n\
         RestartSec=1s\n\
         TimeoutStopSec=30s\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        bangerd.display()
    )
}

/// The hardening both system units share.
const COMMON_HARDENING: &str = "\
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
KeyringMode=private
UMask=0077
# Not RestrictSUIDSGID=: systemd enforces it by failing openat2 (ENOSYS), whose mode it cannot
# inspect, and banger opens every path in image layers and VM files with openat2
# (RESOLVE_IN_ROOT, RESOLVE_BENEATH).
";

pub fn system_daemon_unit(bangerd: &Path, who: &SystemDaemon) -> String {
    let mut exec =
        format!("{} --log-format json --system --helper-socket {SYSTEM_HELPER_SOCKET}", bangerd.display());
    if let Some(g) = who.group {
        exec.push_str(&format!(" --group {g}"));
    }
    let user = who.user;
    let group = who.group.unwrap_or(user);
    format!(
        "[Unit]\n\
         Description=banger owner daemon (microVMs)\n\
         After={HELPER_UNIT} network-online.target\n\
         Wants={HELPER_UNIT} network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={exec}\n\
         WatchdogSec={WATCHDOG_SEC}s\n\
         Restart=on-failure\n\
         RestartSec=1s\n\
         TimeoutStopSec=30s\n\
         User={user}\n\
         Group={group}\n\
         # /run/banger holds the socket (0660, group {group}): searchable by all so members reach it.\n\
         RuntimeDirectory=banger\n\
         RuntimeDirectoryMode=0755\n\
         RuntimeDirectoryPreserve=yes\n\
         StateDirectory=banger\n\
         StateDirectoryMode=0750\n\
         CacheDirectory=banger\n\
         CacheDirectoryMode=0750\n\
         {COMMON_HARDENING}\
         # Without capabilities it cannot set a set-id bit on a file it does not own anyway.\n\
         NoNewPrivileges=yes\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         # Not PrivateDevices=: the daemon tells hardware KVM from software-only KVM by /dev/kvm\n\
         # being there; DevicePolicy=closed still keeps it (and every device) from being opened.\n\
         DevicePolicy=closed\n\
         # Not PrivateUsers=: the daemon admits the socket group's members by their uid and gid\n\
         # (SO_PEERCRED), which a private user namespace would map to nobody.\n\
         ProtectKernelTunables=yes\n\
         ProtectControlGroups=yes\n\
         ProtectProc=invisible\n\
         ProcSubset=pid\n\
         PrivateIPC=yes\n\
         RemoveIPC=yes\n\
         RestrictNamespaces=yes\n\
         MemoryDenyWriteExecute=yes\n\
         # AF_UNIX: its socket, the helper and the VMMs' sockets; AF_INET/AF_INET6: image registries\n\
         # and port forwards to the VMs.\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged @resources\n\
         # @chown (taken out with @privileged): the socket's group is set by chown.\n\
         SystemCallFilter=@chown\n\
         # Its open-file limit, set here since it cannot raise its own (setrlimit is in @resources).\n\
         LimitNOFILE=524288\n\
         SystemCallErrorNumber=EPERM\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exec = exec,
    )
}

/// The capabilities the helper's operations need, each with the operation.
pub const HELPER_CAPABILITIES: &[(&str, &str)] = &[
    ("CAP_NET_ADMIN", "the bridge, taps and the nftables NAT table"),
    ("CAP_SYS_ADMIN", "the jails' tmpfs and bind mounts, the jailer's namespaces, cgroups"),
    ("CAP_SETUID", "the jailer and QEMU drop to the daemon's uid"),
    ("CAP_SETGID", "the jailer and QEMU drop to the daemon's gid"),
    ("CAP_CHOWN", "files in a jail handed to the VM's uid"),
    ("CAP_FOWNER", "fchmod of files the daemon's user owns"),
    ("CAP_DAC_OVERRIDE", "reading the daemon's 0700 state to check and lend VM files"),
    ("CAP_DAC_READ_SEARCH", "walking the daemon's state dir by descriptor"),
    ("CAP_KILL", "stopping VMMs that run as the daemon's uid"),
    ("CAP_MKNOD", "each jail's own /dev/kvm and /dev/net/tun nodes"),
    ("CAP_SYS_CHROOT", "the jailer and QEMU chroot into their jail"),
    ("CAP_SYS_RESOURCE", "the jailer's resource limits (e.g. open files)"),
];

pub fn helper_unit(helper: &Path, owner_uid: u32) -> String {
    let caps = HELPER_CAPABILITIES.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(" ");
    let why = HELPER_CAPABILITIES.iter().map(|(c, what)| format!("#   {c}: {what}\n")).collect::<String>();
    format!(
        "[Unit]\n\
         Description=banger privileged helper (taps, bridge, jailer)\n\
         Before={DAEMON_UNIT}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={} --socket {SYSTEM_HELPER_SOCKET} --owner-uid {owner_uid} --state-dir /var/lib/banger\n\
         Restart=always\n\
         RestartSec=1s\n\
         # Runs as root: only it touches the network, mounts and launches VMMs, for one uid.\n\
         RuntimeDirectory=banger-helper\n\
         RuntimeDirectoryMode=0755\n\
         # Jails are made under the daemon's state dir (the install creates it).\n\
         ReadWritePaths=/var/lib/banger\n\
         # The jails' tmpfs must be seen by the daemon, which reaches the VMMs' sockets in them:\n\
         # mounts made here propagate to the host.\n\
         MountFlags=shared\n\
         {COMMON_HARDENING}\
         # Each capability and the operation that needs it:\n\
         {why}\
         CapabilityBoundingSet={caps}\n\
         # Not NoNewPrivileges=: the jailer and QEMU are set up with the privileges above.\n\
         # Not ProtectKernelTunables=: the bridge's and taps' settings under /proc/sys/net.\n\
         # Not ProtectControlGroups=: each VM's cgroup (CPU and memory limits).\n\
         # Not PrivateDevices=: /dev/kvm, /dev/net/tun and /dev/vhost-vsock for the VMMs.\n\
         DevicePolicy=closed\n\
         DeviceAllow=/dev/kvm rw\n\
         DeviceAllow=/dev/net/tun rw\n\
         DeviceAllow=/dev/vhost-vsock rw\n\
         DeviceAllow=/dev/vhost-net rw\n\
         DeviceAllow=/dev/null rw\n\
         DeviceAllow=/dev/urandom r\n\
         # The jailer's mount and PID namespaces, QEMU's network, IPC and UTS ones.\n\
         RestrictNamespaces=mnt pid net ipc uts\n\
         # AF_NETLINK: links, addresses and nftables; AF_UNIX: its socket and the VMMs';\n\
         # AF_INET/AF_INET6: the ioctls that set up the bridge and taps.\n\
         RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6\n\
         # It sends no IP traffic itself (the VMs' goes through their taps, outside its sockets).\n\
         IPAddressDeny=any\n\
         # Not MemoryDenyWriteExecute=: it would be inherited by QEMU, whose TCG writes code.\n\
         # @mount: the jails' mounts; @privileged: chown, chroot, setuid, mknod for the jails;\n\
         # @resources: the jailer's limits. Of what @privileged brings, none of these:\n\
         SystemCallFilter=@system-service @mount @privileged @resources\n\
         SystemCallFilter=~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap\n\
         SystemCallErrorNumber=EPERM\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        helper.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_units(dir: &Path) -> (PathBuf, PathBuf) {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for b in ["bangerd", "banger-helper"] {
            std::fs::write(bin.join(b), "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join(b), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let who = SystemDaemon { user: "banger", group: Some("banger") };
        let daemon = dir.join(DAEMON_UNIT);
        let helper = dir.join(HELPER_UNIT);
        std::fs::write(&daemon, system_daemon_unit(&bin.join("bangerd"), &who)).unwrap();
        std::fs::write(&helper, helper_unit(&bin.join("banger-helper"), 990)).unwrap();
        (daemon, helper)
    }

    #[test]
    fn system_unit_is_notify_with_watchdog_runs_as_its_user_and_wants_the_helper() {
        let who = SystemDaemon { user: "banger", group: Some("banger") };
        let u = system_daemon_unit(Path::new("/usr/bin/bangerd"), &who);
        assert!(u.contains("Type=notify\n"));
        assert!(u.contains("WatchdogSec=30s\n"));
        assert!(u.contains(
            "ExecStart=/usr/bin/bangerd --log-format json --system --helper-socket /run/banger-helper/helper.sock --group banger\n"
        ));
        assert!(u.contains("User=banger\n"));
        assert!(u.contains("Wants=banger-helper.service"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
        let h = helper_unit(Path::new("/usr/bin/banger-helper"), 990);
        assert!(h.contains("--socket /run/banger-helper/helper.sock --owner-uid 990 "));
    }

    #[test]
    fn user_unit_has_no_helper_and_no_system_flag() {
        let u = user_daemon_unit(Path::new("/home/u/bin/bangerd"));
        assert!(!u.contains("--system"));
        assert!(!u.contains("helper"));
        assert!(u.contains("WantedBy=default.target\n"));
    }

    /// `systemd-analyze verify` accepts both system units and `security --offline=yes` scores
    /// them within the targets (daemon ≤ 2.5, helper ≤ 5.0).
    #[test]
    fn system_units_verify_and_score_within_targets() {
        if let Err(why) = analyze::available() {
            eprintln!("skipped: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (daemon, helper) = system_units(dir.path());
        for unit in [&daemon, &helper] {
            if let Err(e) = analyze::verify(unit) {
                panic!("{e}");
            }
        }
        let d = analyze::exposure(&daemon).unwrap();
        let h = analyze::exposure(&helper).unwrap();
        eprintln!("exposure: bangerd {d}, banger-helper {h}");
        assert!(d <= 2.5, "bangerd.service scores {d}, above the 2.5 target");
        assert!(h <= 5.0, "banger-helper.service scores {h}, above the 5.0 target");
    }
}

/// `systemd-analyze` on unit files given by path (no running systemd needed).
#[cfg(test)]
pub(crate) mod analyze {
    use std::path::Path;
    use std::process::Command;

    pub fn available() -> Result<(), String> {
        match Command::new("systemd-analyze").arg("--version").output() {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err("systemd-analyze is not installed (apt-get install systemd)".into()),
        }
    }

    pub fn verify(unit: &Path) -> Result<(), String> {
        let o =
            Command::new("systemd-analyze").arg("verify").arg(unit).output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&o.stderr);
        // verify warns about what this host lacks (the unit's user, network-online.target's
        // providers); only complaints about the unit's own text count.
        let own: Vec<&str> = err.lines().filter(|l| l.contains(&*unit.to_string_lossy())).collect();
        if o.status.success() && own.is_empty() {
            Ok(())
        } else {
            Err(format!("systemd-analyze verify {} failed:\n{err}", unit.display()))
        }
    }

    /// The overall exposure `security --offline=yes` gives the unit.
    pub fn exposure(unit: &Path) -> Result<f64, String> {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|score| score.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no score in systemd-analyze security's output:\n{text}{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })
    }
}
