//! The one seam between a VM actor and its VMM. The actor knows VMs (states, disks, consoles);
//! a backend knows how to run one: Firecracker (through banger-helper and the jailer) or QEMU
//! microvm (through banger-helper's own confinement). Nothing backend-specific leaks through
//! this trait.

pub mod api;
pub mod firecracker;
pub mod qemu;
pub mod qmp;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use protocol::Error;
use protocol::helper::{HelperRequest, HelperResponse, LaunchSpec, QemuSpec};
use protocol::vm::VmmKind;
use serde::{Deserialize, Serialize};

use crate::helper::call;
use crate::peers::Peers;

/// Everything a backend needs to boot a VM.
#[derive(Debug, Clone)]
pub struct Boot {
    pub vm: String,
    /// The backend's kind of kernel: an ELF vmlinux (Firecracker) or a bzImage (QEMU).
    pub kernel: PathBuf,
    /// The VM's initrd (the guest modules and the agent as `/init`), when its kernel has one.
    pub initrd: Option<PathBuf>,
    pub disk: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel_args: String,
    /// With networking: the bridge to attach a tap to, and the guest's MAC.
    pub network: Option<(String, String)>,
    /// The guest's address for this boot (recorded in the VM's spec).
    pub ip: Option<String>,
}

/// A VMM process, as recorded on disk so a restarted daemon can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    /// The process's start time (/proc/PID/stat field 22): a reused pid will not match.
    pub start_time: u64,
    /// The backend's control endpoint (Firecracker: its API socket).
    pub control: PathBuf,
}

pub trait Vmm: Send + Sync {
    /// Starts the VMM, configures it and boots the guest. `console` receives the guest's serial
    /// output (and the VMM's own log).
    fn boot(&self, boot: Boot, console: OwnedFd) -> BoxFuture<'_, Result<Running, Error>>;
    /// Asks the guest to shut down (Ctrl-Alt-Del).
    fn shutdown<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, Result<(), Error>>;
    /// Kills the VMM at once.
    fn kill<'a>(&'a self, vm: &'a str, running: &'a Running) -> BoxFuture<'a, Result<(), Error>>;
    /// Releases what the VMM held on the host (tap, jail, cgroups) after it exited.
    fn cleanup<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Whether a recorded VMM is still that process and still answers: re-adoption.
    fn alive<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, bool>;
    /// The exit code the VMM reported for itself, once it exited (`None`: it was killed, or
    /// died without saying). Read before `cleanup`; `console` is the VM's console log.
    fn exit_code(&self, running: &Running, console: &Path) -> Option<i32>;
    /// Connects to the guest agent's channel (a byte stream; see `protocol::agent`).
    fn agent<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, std::io::Result<tokio::net::UnixStream>>;
}

/// The VMMs a daemon can run, by kind.
#[derive(Clone)]
pub struct Backends {
    pub firecracker: Arc<dyn Vmm>,
    pub qemu: Arc<dyn Vmm>,
    /// What a VM gets when it does not choose.
    pub default: VmmKind,
}

impl Backends {
    pub fn get(&self, kind: VmmKind) -> Arc<dyn Vmm> {
        match kind {
            VmmKind::Firecracker => self.firecracker.clone(),
            VmmKind::Qemu => self.qemu.clone(),
        }
    }
}

/// Boots through `launch`, given the VM's tap and the guest's MAC when it is networked: the
/// tap is made by the helper first, and removed again if the launch fails.
pub async fn with_tap<F, Fut>(peers: &Peers, boot: &Boot, launch: F) -> Result<Running, Error>
where
    F: FnOnce(Option<(String, String)>) -> Fut,
    Fut: std::future::Future<Output = Result<Running, Error>>,
{
    let tap = match &boot.network {
        None => None,
        Some((bridge, mac)) => {
            let request = HelperRequest::CreateTap { vm: boot.vm.clone(), bridge: bridge.clone() };
            match call(peers, request, None).await? {
                HelperResponse::Tap { name } => Some((name, mac.clone())),
                other => return Err(Error::internal(format!("unexpected helper reply {other:?}"))),
            }
        }
    };
    let networked = tap.is_some();
    let booted = launch(tap).await;
    if booted.is_err() && networked {
        let _ = call(peers, HelperRequest::DeleteTap { vm: boot.vm.clone() }, None).await;
    }
    booted
}

/// Has the helper launch the VMM `boot` describes, with what is the VMM's own (Firecracker's
/// configuration, or QEMU's part); its control socket is `control` in the jail it gets.
pub async fn launch_through_helper(
    peers: &Peers,
    boot: &Boot,
    config: Option<String>,
    qemu: Option<QemuSpec>,
    console: OwnedFd,
    control: &str,
) -> Result<Running, Error> {
    let spec = LaunchSpec {
        vm: boot.vm.clone(),
        kernel: boot.kernel.display().to_string(),
        initrd: boot.initrd.as_ref().map(|p| p.display().to_string()),
        disk: Some(boot.disk.display().to_string()),
        cpus: boot.cpus,
        memory_mib: boot.memory_mib,
        config,
        qemu,
    };
    match call(peers, HelperRequest::LaunchVm(spec), Some(console)).await? {
        HelperResponse::Launched { pid, jail_root } => Ok(Running {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            control: PathBuf::from(jail_root).join(control),
        }),
        other => Err(Error::internal(format!("unexpected helper reply {other:?}"))),
    }
}

pub async fn kill_through_helper(peers: &Peers, vm: &str, running: &Running) -> Result<(), Error> {
    call(peers, HelperRequest::KillVm { vm: vm.into(), pid: running.pid }, None).await.map(|_| ())
}

/// The tap and the jail go; the jail's failure is the one reported.
pub async fn clean_through_helper(peers: &Peers, vm: &str) -> Result<(), Error> {
    let tap = call(peers, HelperRequest::DeleteTap { vm: vm.into() }, None).await;
    call(peers, HelperRequest::CleanJail { vm: vm.into() }, None).await?;
    tap.map(|_| ())
}

/// The start time of `pid`, if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}
