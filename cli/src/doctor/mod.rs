//! `banger doctor`: what this host has for running VMs, each finding with the command that fixes
//! it. The checks read the host directly; those that need the daemon ask it once, and fail (while
//! the host checks still run) when it does not answer.

mod daemon;
mod host;
mod kernel;
mod kvm;
mod vmm;

use std::path::{Path, PathBuf};

use protocol::paths::Layout;
use serde::Serialize;

pub use vmm::Spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// One line: what was found.
    pub finding: String,
    /// The command (or step) that fixes a warning or a failure.
    pub fix: Option<String>,
    /// Whether this keeps a VM from being created on this host.
    pub blocking: bool,
}

impl Check {
    pub fn ok(name: &'static str, finding: impl Into<String>) -> Self {
        Check { name, status: Status::Ok, finding: finding.into(), fix: None, blocking: false }
    }

    pub fn warn(name: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { name, status: Status::Warn, finding: finding.into(), fix: Some(fix.into()), blocking: false }
    }

    /// A failure that, on its own, keeps VMs from being created.
    pub fn fail(name: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { name, status: Status::Fail, finding: finding.into(), fix: Some(fix.into()), blocking: true }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub spec: Spec,
    /// False when something blocks creating a VM.
    pub ok: bool,
}

pub async fn run(layout: &Layout, socket: &Path) -> Report {
    let kvm = kvm::probe();
    let firecracker = vmm::firecracker(&kvm);
    let qemu = vmm::qemu(&kvm);
    let daemon = daemon::ask(socket).await;
    let spec = vmm::spec(daemon.kernels.as_deref());
    let mut checks = vec![
        kvm::check(&kvm),
        firecracker.check,
        qemu.check,
        daemon::check(&daemon, socket),
        daemon::helper(&daemon),
        kernel::check(daemon.kernels.as_ref(), spec.vmm),
        host::cgroup(),
        host::network(layout, daemon.bridge.as_deref()),
        host::disk(layout),
        host::units(),
        vmm::defaults_check(&spec),
    ];
    // No backend at all is what blocks; one missing beside a working other does not.
    if firecracker.usable || qemu.usable {
        for c in checks.iter_mut().filter(|c| matches!(c.name, "firecracker" | "qemu" | "kvm")) {
            c.blocking = false;
        }
    } else if let Some(q) = checks.iter_mut().find(|c| c.name == "qemu") {
        q.blocking = true;
    }
    let ok = !checks.iter().any(|c| c.blocking);
    Report { checks, spec, ok }
}

/// The first `name` on `$PATH` that is an executable file.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first line `PROGRAM --version` prints, if it runs.
pub fn version_line(program: &Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}
