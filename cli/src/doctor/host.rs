//! The host around the VMs: cgroups, the bridge and nftables, free space, the systemd units.

use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;
use protocol::paths::Layout;
use sha2::Digest;

use super::{Check, which};
use crate::progress::human_bytes;

/// The controllers the helper limits a VM with (`V1_LIMITS` and `make_cgroups` in
/// helper/src/jail.rs: CPU time and memory); `pids` is reported, not needed.
const NEEDED: [&str; 2] = ["cpu", "memory"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const V2_FIX: &str =
    "boot a kernel with CONFIG_CGROUP_SCHED and CONFIG_MEMCG, and systemd.unified_cgroup_hierarchy=1";
const V1_FIX: &str = "sudo mkdir -p /sys/fs/cgroup/cpu /sys/fs/cgroup/memory && \
     sudo mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu && \
     sudo mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory";

pub fn cgroup() -> Check {
    let root = Path::new(CGROUP_ROOT);
    // v2 lists its controllers in one file (the helper enables cpu and memory in
    // cgroup.subtree_control on its way down); v1 mounts one hierarchy per controller.
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).ok();
    let has = |c: &str| match &v2 {
        Some(list) => list.split_whitespace().any(|w| w == c),
        None => root.join(c).join("tasks").exists(),
    };
    let version = if v2.is_some() { "v2" } else { "v1" };
    let present: Vec<&str> = ["cpu", "memory", "pids"].into_iter().filter(|c| has(c)).collect();
    let missing: Vec<&str> = NEEDED.iter().copied().filter(|c| !present.contains(c)).collect();
    if !missing.is_empty() {
        let fix = if v2.is_some() { V2_FIX } else { V1_FIX };
        return Check::warn(
            "cgroup",
            format!(
                "cgroup {version} without the {} controller(s): VMs run without CPU and memory limits",
                missing.join(", ")
            ),
            fix,
        );
    }
    Check::ok(
        "cgroup",
        format!("cgroup {version} with {} (the helper limits each VM's CPU and memory)", present.join(", ")),
    )
}

/// The bridge this state dir's daemon uses, as bangerd names it by default (`bridge_for` in
/// daemon/src/config.rs); a running daemon's own report wins, since flags can change it.
fn default_bridge(state_dir: &Path) -> String {
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("banger{}", hex::encode(&digest[..4]))
}

/// `nft` and `ip` are run by the helper as root: look where root's PATH does too.
fn sbin(name: &str) -> Option<PathBuf> {
    which(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

pub fn network(layout: &Layout, reported: Option<&str>) -> Check {
    let missing: Vec<&str> = ["nft", "ip"].into_iter().filter(|t| sbin(t).is_none()).collect();
    if !missing.is_empty() {
        return Check::warn(
            "network",
            format!("{} not found: VMs get no network (--no-net still works)", missing.join(" and ")),
            "sudo apt-get install nftables iproute2",
        );
    }
    let bridge = reported.map_or_else(|| default_bridge(&layout.state_dir), str::to_string);
    if !Path::new("/sys/class/net").join(&bridge).exists() {
        return Check::ok(
            "network",
            format!(
                "nft and ip found; bridge {bridge} not made yet (the helper makes it for the first networked VM)"
            ),
        );
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Check::ok(
            "network",
            format!("bridge {bridge} is up; nft found (its table is readable by root only)"),
        );
    }
    let table = std::process::Command::new(sbin("nft").unwrap_or_else(|| "nft".into()))
        .args(["list", "table", "ip", &bridge])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if table {
        Check::ok("network", format!("bridge {bridge} is up with its nftables table ip {bridge} (NAT)"))
    } else {
        Check::warn(
            "network",
            format!(
                "bridge {bridge} is up but nftables has no table ip {bridge}: VMs reach no further than the host"
            ),
            "sudo banger daemon restart (the helper loads the table with the next networked VM)",
        )
    }
}

/// Less free than this (or than `MIN_FREE_PERCENT`) is a warning: an image or a VM disk needs more.
const MIN_FREE_BYTES: u64 = 2 << 30;
const MIN_FREE_PERCENT: u64 = 5;
const MIN_FREE_INODES: u64 = 10_000;

pub fn disk(layout: &Layout) -> Check {
    let mut findings = Vec::new();
    let mut low = Vec::new();
    let mut dirs = vec![("state", &layout.state_dir)];
    if !layout.cache_dir.starts_with(&layout.state_dir) {
        dirs.push(("cache", &layout.cache_dir));
    }
    for (what, dir) in dirs {
        // The dir may not exist yet: measure the file system it would be made on.
        let Some(at) = dir.ancestors().find(|p| p.exists()) else { continue };
        let Ok(s) = statvfs(at) else {
            findings.push(format!("{what} {}: cannot measure", dir.display()));
            continue;
        };
        let frsize = s.fragment_size();
        let (free, total) = (s.blocks_available() * frsize, s.blocks() * frsize);
        let (inodes, inodes_total) = (s.files_available(), s.files());
        let line = format!(
            "{what} {}: {} free of {}, {inodes} inodes free",
            dir.display(),
            human_bytes(free),
            human_bytes(total)
        );
        // File systems that report no inode count (btrfs, some tmpfs) are not short of them.
        let short_inodes = inodes_total > 0 && inodes < MIN_FREE_INODES;
        if free < MIN_FREE_BYTES || free * 100 < total * MIN_FREE_PERCENT || short_inodes {
            low.push(at.to_path_buf());
        }
        findings.push(line);
    }
    let finding = findings.join("; ");
    if low.is_empty() {
        return Check::ok("disk", finding);
    }
    let fs: Vec<String> = low.iter().map(|p| p.display().to_string()).collect();
    Check::warn(
        "disk",
        format!("low on space: {finding}"),
        format!(
            "free space on {} (under 2 GiB, 5% or 10,000 inodes): `banger image cache prune` drops cached \
             blobs, `banger prune` removes stopped VMs",
            fs.join(", ")
        ),
    )
}

/// Each installed unit's `ExecStart` program against the one on PATH.
pub fn units() -> Check {
    let mut stale = Vec::new();
    let mut found = Vec::new();
    for (unit, program) in [("bangerd.service", "bangerd"), ("banger-helper.service", "banger-helper")] {
        let path = Path::new("/etc/systemd/system").join(unit);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let exec = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("ExecStart="))
            .and_then(|cmd| cmd.split_whitespace().next())
            .map(|p| p.trim_start_matches(['-', '@', '+', '!', ':']).to_string())
            .unwrap_or_default();
        let installed = which(program);
        let current = installed.as_ref().is_some_and(|p| {
            let canon = |p: &Path| std::fs::canonicalize(p).ok();
            canon(p).is_some() && canon(p) == canon(Path::new(&exec))
        });
        if current {
            found.push(format!("{unit} runs {exec}"));
        } else {
            let on_path = installed.map_or("none on PATH".into(), |p| p.display().to_string());
            stale.push(format!("{unit} runs {exec:?}, {program} is {on_path}"));
        }
    }
    if !stale.is_empty() {
        return Check::warn("units", stale.join("; "), "sudo banger daemon install (rewrites the units)");
    }
    if found.is_empty() {
        return Check::ok("units", "no system units installed (a user daemon: `banger daemon start`)");
    }
    Check::ok("units", found.join("; "))
}
