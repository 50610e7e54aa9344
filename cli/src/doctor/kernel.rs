//! The `default` kernel a VM boots when it names none, with the initrd its agent comes in, in the
//! form the default VMM boots (QEMU a bzImage, Firecracker an ELF vmlinux).

use protocol::vm::{KernelInfo, VmmKind};

use super::Check;

const IMPORT: &str = "banger kernel import <linux-image-*.deb> --name default (from a banger checkout, \
     `scripts/dev kernel` fetches Debian's cloud kernel package)";

pub fn check(kernels: Option<&Vec<KernelInfo>>, vmm: VmmKind) -> Check {
    let Some(kernels) = kernels else {
        return Check::fail("kernel", "unknown: the daemon is not answering", "banger daemon start");
    };
    let Some(k) = kernels.iter().find(|k| k.name == "default") else {
        let others = kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ");
        let others = if others.is_empty() { String::new() } else { format!(" (there are: {others})") };
        return Check::fail("kernel", format!("no kernel named default{others}"), IMPORT);
    };
    let release = k.release.as_deref().unwrap_or("unknown release");
    let (form, has_form) = match vmm {
        VmmKind::Qemu => ("bzImage", k.bzimage),
        VmmKind::Firecracker => ("vmlinux", k.vmlinux),
    };
    if !has_form {
        return Check::fail(
            "kernel",
            format!("kernel default ({release}) has no {form}, which {} boots", vmm.name()),
            format!("banger kernel rm default && {IMPORT}"),
        );
    }
    if k.initrd_bytes.is_none() {
        return Check::fail(
            "kernel",
            format!("kernel default ({release}) has no initrd (the agent and guest modules)"),
            format!("banger kernel rm default && {IMPORT}"),
        );
    }
    Check::ok("kernel", format!("default: {release}, {form} with an initrd"))
}
