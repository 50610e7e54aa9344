//! `/dev/kvm`: present, usable by this user, and hardware or software-only (`kvm_pvm`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{AccessFlags, Gid, Group, access};

use super::Check;

pub struct Kvm {
    pub present: bool,
    pub accessible: bool,
    /// The software-only `kvm_pvm` module is loaded: no stock Linux kernel boots under it.
    pub software_only: bool,
    /// Group owning `/dev/kvm`, when it is not root.
    pub group: Option<String>,
}

impl Kvm {
    /// Firecracker can boot a real kernel here.
    pub fn hardware(&self) -> bool {
        self.present && !self.software_only
    }
}

pub fn probe() -> Kvm {
    let dev = Path::new("/dev/kvm");
    let meta = std::fs::metadata(dev).ok();
    let group = meta
        .as_ref()
        .and_then(|m| Group::from_gid(Gid::from_raw(m.gid())).ok().flatten())
        .map(|g| g.name)
        .filter(|g| g != "root");
    Kvm {
        present: meta.is_some(),
        accessible: access(dev, AccessFlags::R_OK | AccessFlags::W_OK).is_ok(),
        software_only: Path::new("/sys/module/kvm_pvm").exists(),
        group,
    }
}

pub fn check(k: &Kvm) -> Check {
    if !k.present {
        let module = match cpu_flag() {
            Some("vmx") => "kvm_intel",
            Some(_) => "kvm_amd",
            None => {
                return Check::warn(
                    "kvm",
                    "no /dev/kvm and no hardware virtualisation: Firecracker cannot run; QEMU runs under TCG (slower)",
                    "enable VT-x/AMD-V (or nested virtualisation) for this machine, or use QEMU: `banger vm create --vmm qemu`",
                );
            }
        };
        return Check::warn(
            "kvm",
            "no /dev/kvm: Firecracker cannot run; QEMU runs under TCG (slower)",
            format!("sudo modprobe {module}"),
        );
    }
    if !k.accessible {
        let fix = match &k.group {
            Some(g) => format!("sudo usermod -aG {g} $USER, then log in again"),
            None => "sudo groupadd -f kvm && sudo chgrp kvm /dev/kvm && sudo chmod 660 /dev/kvm && \
                     sudo usermod -aG kvm $USER"
                .to_string(),
        };
        return Check::warn("kvm", "/dev/kvm is there but this user cannot open it", fix);
    }
    if k.software_only {
        return Check::warn(
            "kvm",
            "software-only KVM (kvm_pvm): Firecracker cannot boot a stock Linux kernel here; QEMU (TCG) works, slower",
            "use QEMU (the default on this host): `banger vm create --vmm qemu`",
        );
    }
    Check::ok("kvm", "hardware KVM: Firecracker and QEMU both run at full speed")
}

/// `vmx` (Intel) or `svm` (AMD) from /proc/cpuinfo, if the CPU offers either.
fn cpu_flag() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    if has("vmx") {
        Some("vmx")
    } else if has("svm") {
        Some("svm")
    } else {
        None
    }
}
