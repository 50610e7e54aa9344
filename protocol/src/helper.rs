//! The `bangerd` ↔ `banger-helper` interface. The helper runs as root, so every field of every
//! request is validated there again, however the daemon built it. Privileged operations (taps,
//! bridge, nft, jailer) are appended here as they are built.

use serde::{Deserialize, Serialize};

use crate::daemon::VersionInfo;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Liveness check. Answered with [`HelperResponse::Pong`].
    Ping,
    /// The helper's software and protocol version.
    Version,
    /// Create, idempotently, the bridge with the host's address in the VM subnet, banger's own
    /// nftables table (masquerade and forward rules for the subnet), and IP forwarding.
    /// Answered with [`HelperResponse::Ok`]. Since protocol 2.
    EnsureNetwork(NetworkSpec),
    /// Remove what `EnsureNetwork` created. Answered with `Ok`. Since protocol 2.
    RemoveNetwork(NetworkSpec),
    /// Create the VM's tap device, owned by the daemon's uid, attached to `bridge`, up.
    /// Answered with [`HelperResponse::Tap`]. Since protocol 2.
    CreateTap { vm: String, bridge: String },
    /// Delete the VM's tap device; absent is fine. Answered with `Ok`. Since protocol 2.
    DeleteTap { vm: String },
    /// Launch Firecracker for the VM through the jailer (chroot, uid/gid drop, cgroups, new
    /// PID namespace), with the kernel and disk linked into the jail. The request carries the
    /// write end of the console pipe as a passed descriptor (its stdout and stderr).
    /// Answered with [`HelperResponse::Launched`]. Since protocol 2.
    LaunchVm(LaunchSpec),
    /// SIGKILL the VM's Firecracker, if `pid` is still it. Answered with `Ok`. Since protocol 2.
    KillVm { vm: String, pid: u32 },
    /// Remove the VM's jail directory and cgroups. Answered with `Ok`. Since protocol 2.
    CleanJail { vm: String },
}

/// The VM network: a bridge and the host's address on it, e.g. `banger0`, `172.30.0.1/24`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub bridge: String,
    pub host_cidr: String,
}

/// What to launch. Paths must lie in banger's state directory; the helper checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub vm: String,
    pub kernel: String,
    /// The VM's initrd (the guest's modules and its agent as `/init`). Since protocol 5.
    pub initrd: Option<String>,
    pub disk: Option<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Firecracker's JSON configuration, written into the jail as `/vm.json` so it boots
    /// without API round trips. Its paths are inside the jail (`/vmlinux`, `/disk.ext4`).
    pub config: Option<String>,
    /// Launch QEMU (microvm) instead of Firecracker. Since protocol 5.
    pub qemu: Option<QemuSpec>,
}

/// What QEMU needs beyond [`LaunchSpec`]: the helper builds its command line from these
/// fields alone (it never runs a command line the daemon wrote). `kernel` is then a bzImage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuSpec {
    pub cmdline: String,
    /// The VM's tap (made by `CreateTap`) and its MAC.
    pub tap: Option<String>,
    pub mac: Option<String>,
    /// Use KVM; otherwise TCG.
    pub kvm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperResponse {
    Pong,
    Version(VersionInfo),
    Error(Error),
    Ok,
    Tap {
        name: String,
    },
    /// Firecracker runs as `pid`; its API socket is `jail_root/api.sock`, and the kernel and
    /// disk are `/vmlinux` and `/disk.ext4` inside the jail.
    Launched {
        pid: u32,
        jail_root: String,
    },
}
