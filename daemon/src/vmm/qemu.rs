//! QEMU's `microvm` machine as a [`Vmm`]: launched by banger-helper, which builds its command
//! line and confines it (see the helper's `qemu.rs`); controlled over QMP. KVM where the host has
//! hardware virtualisation, TCG where it has none (with the arguments that keep a TCG guest's
//! TSC calibration from hanging). Its jail holds `run/qmp.sock` and `run/agent.sock` (the guest
//! agent's virtio-serial port).

use std::os::fd::OwnedFd;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use protocol::Error;
use protocol::helper::QemuSpec;

use super::{Boot, Running, Vmm, qmp, start_time};
use crate::peers::Peers;

pub struct Qemu {
    peers: Peers,
    /// Hardware KVM; otherwise TCG.
    kvm: bool,
}

/// Without these a TCG guest often hangs calibrating its TSC and delay loop.
const TCG_ARGS: &str = "tsc_early_khz=2000000 lpj=8000000";

impl Qemu {
    pub fn new(peers: Peers, kvm: bool) -> Self {
        Qemu { peers, kvm }
    }

    async fn launch(
        &self,
        boot: &Boot,
        tap: Option<(String, String)>,
        console: OwnedFd,
    ) -> Result<Running, Error> {
        // microvm has no PCI bus: `pci=off` spares the kernel the search.
        let mut cmdline = format!("console=ttyS0 reboot=k panic=1 pci=off quiet {}", boot.kernel_args);
        if !self.kvm {
            cmdline = format!("{cmdline} {TCG_ARGS}");
        }
        let qemu = QemuSpec {
            cmdline: cmdline.trim().to_string(),
            mac: tap.as_ref().map(|(_, mac)| mac.clone()),
            tap: tap.map(|(name, _)| name),
            kvm: self.kvm,
        };
        super::launch_through_helper(&self.peers, boot, None, Some(qemu), console, "run/qmp.sock").await
    }
}

impl Vmm for Qemu {
    fn boot(&self, boot: Boot, console: OwnedFd) -> BoxFuture<'_, Result<Running, Error>> {
        async move { super::with_tap(&self.peers, &boot, |tap| self.launch(&boot, tap, console)).await }
            .boxed()
    }

    /// The ACPI power button. The agent is asked first (see the VM actor); this is for a guest
    /// without one.
    fn shutdown<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        qmp::execute(&running.control, "system_powerdown").map(|r| r.map(|_| ())).boxed()
    }

    fn kill<'a>(&'a self, vm: &'a str, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        super::kill_through_helper(&self.peers, vm, running).boxed()
    }

    fn cleanup<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        super::clean_through_helper(&self.peers, vm).boxed()
    }

    /// QEMU exits 0 when its guest powers off; it says nothing of it afterwards, so a clean
    /// power-off is read from the console, where Linux says it last.
    fn exit_code(&self, _: &Running, console: &std::path::Path) -> Option<i32> {
        let tail = crate::vm::console::tail(console, 3);
        tail.contains("reboot: Power down").then_some(0)
    }

    fn alive<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, bool> {
        async move { start_time(running.pid) == Some(running.start_time) && qmp::answers(&running.control).await }
            .boxed()
    }

    fn agent<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, std::io::Result<tokio::net::UnixStream>> {
        let socket = running.control.with_file_name("agent.sock");
        async move { tokio::net::UnixStream::connect(socket).await }.boxed()
    }
}
