//! The one seam between a VM actor and its VMM. The actor knows VMs (states, disks, consoles);
//! a backend knows how to run one. Firecracker (through banger-helper and the jailer) is the
//! first; QEMU microvm comes next, so nothing Firecracker-specific may leak through this trait.

pub mod api;
pub mod firecracker;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use protocol::Error;
use serde::{Deserialize, Serialize};

/// Everything a backend needs to boot a VM.
#[derive(Debug, Clone)]
pub struct Boot {
    pub vm: String,
    pub kernel: PathBuf,
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
    /// died without saying). Read before `cleanup`.
    fn exit_code(&self, running: &Running) -> Option<i32>;
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
