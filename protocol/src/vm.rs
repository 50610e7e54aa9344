//! VM and kernel messages carried by [`crate::daemon::Request`] and [`crate::daemon::Response`].

use serde::{Deserialize, Serialize};

/// What `banger vm create` asks for; the daemon fills in host-aware defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCreate {
    pub name: String,
    pub image: String,
    /// A kernel imported with `banger kernel import`; `default` when absent.
    pub kernel: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// The VM's disk size in bytes (at least the image's rootfs size).
    pub disk_bytes: Option<u64>,
    pub network: bool,
    /// Extra kernel command-line arguments.
    pub kernel_args: Vec<String>,
}

/// A VM's settled configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub image: String,
    pub kernel: String,
    pub kernel_args: Vec<String>,
    /// The guest's address, with `network`.
    pub ip: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed(String),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Created => f.write_str("created"),
            VmState::Starting => f.write_str("starting"),
            VmState::Running => f.write_str("running"),
            VmState::Stopping => f.write_str("stopping"),
            VmState::Stopped => f.write_str("stopped"),
            VmState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub spec: VmSpec,
    /// The VMM's pid while it runs.
    pub pid: Option<u32>,
    /// Unix seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    /// How the VMM last exited (`exit code 0`, `killed by SIGKILL`, …).
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub bytes: u64,
    /// Unix seconds.
    pub added_at: u64,
    pub source: String,
}
