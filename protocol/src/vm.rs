//! VM and kernel messages carried by [`crate::daemon::Request`] and [`crate::daemon::Response`].

use serde::{Deserialize, Serialize};

use crate::agent::AgentReady;
use crate::{Error, ErrorKind};

/// Which virtual machine monitor runs a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmmKind {
    /// Records written before there was a choice were Firecracker's.
    #[default]
    Firecracker,
    /// QEMU's `microvm` machine: KVM where the host has hardware virtualisation, TCG otherwise.
    Qemu,
}

impl VmmKind {
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        }
    }
}

/// What this host runs best, and whether it has hardware KVM: Firecracker on hardware KVM; QEMU
/// where KVM is missing or is the software-only `kvm_pvm` (under which a stock Linux kernel never
/// finishes booting). Here so the daemon and `banger doctor` decide alike.
pub fn probe_vmm() -> (VmmKind, bool) {
    let hardware_kvm =
        std::path::Path::new("/dev/kvm").exists() && !std::path::Path::new("/sys/module/kvm_pvm").exists();
    match hardware_kvm {
        true => (VmmKind::Firecracker, true),
        false => (VmmKind::Qemu, false),
    }
}

/// The size of a VM that does not say, from the host: up to 2 vCPUs, an eighth of its memory
/// (256 MiB to 1 GiB), 8 GiB of disk; and the host's CPUs and memory, the upper bounds. Here so
/// the daemon and `banger doctor` size alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDefaults {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub host_cpus: u32,
    pub host_memory_mib: u32,
}

impl HostDefaults {
    pub fn probe() -> Self {
        let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let total_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
                })
            })
            .map(|kib| kib / 1024)
            .unwrap_or(2048);
        HostDefaults {
            cpus: host_cpus.min(2),
            memory_mib: (total_mib / 8).clamp(256, 1024) as u32,
            disk_bytes: 8 << 30,
            host_cpus,
            host_memory_mib: total_mib.min(u32::MAX as u64) as u32,
        }
    }
}

impl std::str::FromStr for VmmKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "firecracker" => Ok(VmmKind::Firecracker),
            "qemu" => Ok(VmmKind::Qemu),
            _ => Err(format!("unknown VMM {s:?}: choose firecracker or qemu")),
        }
    }
}

/// The guest agent as the daemon sees it, while the VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// The guest is booting; the daemon is trying the channel.
    Waiting,
    Ready(AgentReady),
    /// The agent answered once and is gone, or never answered in time: exec cannot work, but
    /// `vm stop` and `vm kill` still do.
    Degraded(String),
}

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
    /// The VMM; the daemon picks one for this host when absent.
    pub vmm: Option<VmmKind>,
    /// Host ports forwarded to guest ports while the VM runs (`vm run -p`). Since protocol 6.
    pub ports: Vec<PortForward>,
}

/// A TCP port forward from the host to the guest, carried by the daemon and the agent's
/// channel (the guest needs no network). Since protocol 6.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortForward {
    /// An IP address, or `localhost` (both `127.0.0.1` and `::1`).
    pub host_addr: String,
    pub host_port: u16,
    pub guest_port: u16,
}

impl PortForward {
    /// The host addresses to listen on.
    pub fn host_ips(&self) -> Result<Vec<std::net::IpAddr>, Error> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        if self.host_addr == "localhost" {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        let addr = self.host_addr.trim_start_matches('[').trim_end_matches(']');
        addr.parse().map(|ip| vec![ip]).map_err(|_| {
            Error::new(ErrorKind::InvalidInput, format!("{:?} is not an IP address", self.host_addr))
                .with_hint("use an address such as 127.0.0.1, ::1, 0.0.0.0, or localhost")
        })
    }
}

impl std::fmt::Display for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host_addr.contains(':') && !self.host_addr.starts_with('[') {
            write!(f, "[{}]:{}->{}", self.host_addr, self.host_port, self.guest_port)
        } else {
            write!(f, "{}:{}->{}", self.host_addr, self.host_port, self.guest_port)
        }
    }
}

/// What `banger vm workspace copy` put in the guest, so later commands can tell what changed
/// on the host since. Since protocol 6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// The host checkout's top directory (absolute).
    pub host_dir: String,
    /// Where it is in the guest.
    pub guest_dir: String,
    /// `HEAD` when it was copied (absent in a repository with no commit yet).
    pub commit: Option<String>,
    /// A git tree id of the whole working state copied (tracked and untracked, not ignored).
    pub tree: String,
    /// Unix seconds.
    pub copied_at: u64,
}

/// How to ssh into a VM. Since protocol 6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    /// The guest user ssh logs in as.
    pub user: String,
    /// The VM's host key, public, as one OpenSSH line (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// Which server the agent started (`openssh /usr/sbin/sshd`, `banger-agent`), once it did.
    pub server: Option<String>,
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
    #[serde(default)]
    pub vmm: VmmKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed(String),
    /// Its record could not be read (the reason says why, and where the bad file was put). Its
    /// name and disk are kept until the user removes it. Since protocol 3.
    Damaged(String),
}

/// What a user can ask of a VM, for the rules in [`VmState::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop,
    Kill,
    Remove,
}

impl VmAction {
    fn verb(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Kill => "kill",
            VmAction::Remove => "remove",
        }
    }
}

/// The VM state rules, in one place: every handler asks these.
impl VmState {
    /// A VMM may be running: starting, running or stopping.
    pub fn is_active(&self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Stopping)
    }

    /// Whether `action` may be taken in this state. Stopping or killing a VM that is not
    /// running is allowed and does nothing, as `docker stop` does.
    pub fn allows(&self, action: VmAction) -> bool {
        match (self, action) {
            (VmState::Damaged(_), VmAction::Remove) => true,
            (VmState::Damaged(_), _) => false,
            (_, VmAction::Start) => matches!(self, VmState::Created | VmState::Stopped | VmState::Failed(_)),
            (_, VmAction::Stop) => !matches!(self, VmState::Starting),
            (_, VmAction::Kill) => true,
            (_, VmAction::Remove) => !self.is_active(),
        }
    }

    /// `Ok` where `action` is allowed; else the error that says why not and what would help.
    pub fn check(&self, vm: &str, action: VmAction) -> Result<(), Error> {
        if self.allows(action) {
            return Ok(());
        }
        let hint = match (self, action) {
            (VmState::Damaged(_), _) => format!("its record is unreadable; remove it: banger vm rm {vm}"),
            (VmState::Running, VmAction::Start) => {
                format!("it is already running; to reboot it: banger vm restart {vm}")
            }
            (VmState::Starting | VmState::Stopping, _) => {
                format!("wait until it settles: banger vm inspect {vm}")
            }
            (_, VmAction::Remove) => {
                format!("stop it first (banger vm stop {vm}), or force it: banger vm rm -f {vm}")
            }
            _ => format!("see its state: banger vm inspect {vm}"),
        };
        let state = match self {
            VmState::Failed(_) => "failed".to_string(),
            VmState::Damaged(_) => "damaged".to_string(),
            other => other.to_string(),
        };
        Err(Error::new(ErrorKind::Conflict, format!("VM {vm} is {state}; cannot {} it", action.verb()))
            .with_hint(hint))
    }
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
            VmState::Damaged(why) => write!(f, "damaged: {why}"),
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
    /// The guest agent, while the VM runs.
    #[serde(default)]
    pub agent: Option<AgentState>,
    /// Since protocol 6.
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// Since protocol 6. (Boxed, as `ssh`: every reply holding a VM carries their room.)
    #[serde(default)]
    pub workspace: Option<Box<Workspace>>,
    /// Absent for VMs created before protocol 6. Since protocol 6.
    #[serde(default)]
    pub ssh: Option<Box<SshInfo>>,
}

fn kept() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub bytes: u64,
    /// Unix seconds.
    pub added_at: u64,
    pub source: String,
    /// The kernel's release (`6.1.0-28-cloud-amd64`), when it came from a distro package.
    #[serde(default)]
    pub release: Option<String>,
    /// An ELF `vmlinux` is kept (Firecracker boots it); every kernel before distro kernels was one.
    #[serde(default = "kept")]
    pub vmlinux: bool,
    /// A `bzImage` is kept (QEMU boots it).
    #[serde(default)]
    pub bzimage: bool,
    /// The generated initrd's size (the agent and the modules a guest needs), if it has one.
    #[serde(default)]
    pub initrd_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::VmAction::{Kill, Remove, Start, Stop};
    use super::*;

    /// Every state against every action: the whole table, so a change to one rule shows here.
    #[test]
    fn every_state_and_action() {
        let failed = VmState::Failed("x".into());
        let damaged = VmState::Damaged("x".into());
        #[rustfmt::skip]
        let table: [(&VmState, [bool; 4]); 7] = [
            //                        start  stop   kill   remove
            (&VmState::Created,      [true,  true,  true,  true ]),
            (&VmState::Starting,     [false, false, true,  false]),
            (&VmState::Running,      [false, true,  true,  false]),
            (&VmState::Stopping,     [false, true,  true,  false]),
            (&VmState::Stopped,      [true,  true,  true,  true ]),
            (&failed,                [true,  true,  true,  true ]),
            (&damaged,               [false, false, false, true ]),
        ];
        for (state, allowed) in table {
            for (action, ok) in [Start, Stop, Kill, Remove].into_iter().zip(allowed) {
                assert_eq!(state.allows(action), ok, "{state} {action:?}");
                let checked = state.check("web", action);
                assert_eq!(checked.is_ok(), ok, "{state} {action:?}");
                if let Err(e) = checked {
                    assert_eq!(e.kind, ErrorKind::Conflict);
                    assert!(e.message.starts_with("VM web is "), "{}", e.message);
                    assert!(e.hint.as_deref().is_some_and(|h| h.contains("banger vm")), "{e:?}");
                }
            }
        }
        assert!(
            VmState::Running.is_active() && VmState::Starting.is_active() && VmState::Stopping.is_active()
        );
        assert!(!VmState::Created.is_active() && !failed.is_active() && !damaged.is_active());
    }

    #[test]
    fn refusals_name_the_state_action_and_a_command() {
        let e = VmState::Running.check("web", Remove).unwrap_err();
        assert_eq!(e.message, "VM web is running; cannot remove it");
        assert_eq!(
            e.hint.as_deref(),
            Some("stop it first (banger vm stop web), or force it: banger vm rm -f web")
        );
        let e = VmState::Running.check("web", Start).unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("it is already running; to reboot it: banger vm restart web"));
        let e = VmState::Damaged("vm.json is corrupt".into()).check("web", Start).unwrap_err();
        assert_eq!(e.message, "VM web is damaged; cannot start it");
    }
}
