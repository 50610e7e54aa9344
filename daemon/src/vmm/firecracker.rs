//! Firecracker as a [`Vmm`]: launched through the jailer by banger-helper, configured over its
//! API socket (boot source, drive, network, machine config), then started. The jail's paths
//! are fixed: `/vmlinux`, `/disk.ext4`, `/api.sock`.

use std::os::fd::OwnedFd;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use protocol::Error;
use serde_json::json;

use super::{Boot, Running, Vmm, api, start_time};
use crate::peers::Peers;

pub struct Firecracker {
    peers: Peers,
}

impl Firecracker {
    pub fn new(peers: Peers) -> Self {
        Firecracker { peers }
    }

    async fn launch(
        &self,
        boot: &Boot,
        tap: Option<(String, String)>,
        console: OwnedFd,
    ) -> Result<Running, Error> {
        let config = config(boot, tap.as_ref()).to_string();
        super::launch_through_helper(&self.peers, boot, Some(config), None, console, "api.sock").await
    }
}

/// Firecracker's configuration file: everything it needs to boot at once. Its log and metrics
/// go to their own files in the jail, apart from the console; the vsock's host side is
/// `vsock.sock` in the jail (the guest agent's channel).
fn config(boot: &Boot, tap: Option<&(String, String)>) -> serde_json::Value {
    let boot_args = format!("console=ttyS0 reboot=k panic=1 {}", boot.kernel_args);
    let interfaces: Vec<serde_json::Value> = tap
        .iter()
        .map(|(tap, mac)| json!({ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": mac }))
        .collect();
    let mut boot_source = json!({ "kernel_image_path": "/vmlinux", "boot_args": boot_args.trim() });
    if boot.initrd.is_some() {
        boot_source["initrd_path"] = json!("/initrd");
    }
    json!({
        "boot-source": boot_source,
        "drives": [{ "drive_id": "rootfs", "path_on_host": "/disk.ext4", "is_root_device": true, "is_read_only": false }],
        "network-interfaces": interfaces,
        "machine-config": { "vcpu_count": boot.cpus, "mem_size_mib": boot.memory_mib },
        "vsock": { "guest_cid": 3, "uds_path": "/vsock.sock" },
        "logger": { "log_path": "/firecracker.log", "level": "Info" },
        "metrics": { "metrics_path": "/metrics.json" },
    })
}

impl Vmm for Firecracker {
    fn boot(&self, boot: Boot, console: OwnedFd) -> BoxFuture<'_, Result<Running, Error>> {
        async move { super::with_tap(&self.peers, &boot, |tap| self.launch(&boot, tap, console)).await }
            .boxed()
    }

    fn shutdown<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        api::put(&running.control, "/actions", r#"{"action_type":"SendCtrlAltDel"}"#).boxed()
    }

    fn kill<'a>(&'a self, vm: &'a str, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        super::kill_through_helper(&self.peers, vm, running).boxed()
    }

    fn cleanup<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        super::clean_through_helper(&self.peers, vm).boxed()
    }

    /// The vsock's host side: a unix socket on which `CONNECT <port>` reaches a guest listener.
    fn agent<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, std::io::Result<tokio::net::UnixStream>> {
        let socket = running.control.with_file_name("vsock.sock");
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::UnixStream::connect(socket).await?;
            stream.write_all(format!("CONNECT {}\n", protocol::agent::VSOCK_PORT).as_bytes()).await?;
            // "OK <host port>\n", read a byte at a time so nothing after it is consumed.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.len() < 32 {
                if stream.read(&mut byte).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "no agent on the vsock",
                    ));
                }
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            match line.starts_with(b"OK ") {
                true => Ok(stream),
                false => Err(std::io::Error::other(format!(
                    "the vsock refused: {}",
                    String::from_utf8_lossy(&line)
                ))),
            }
        }
        .boxed()
    }

    fn exit_code(&self, running: &Running, _: &std::path::Path) -> Option<i32> {
        let log = std::fs::read(running.control.with_file_name("firecracker.log")).ok()?;
        let text = String::from_utf8_lossy(&log);
        let after = text.rsplit_once("exit_code=")?.1;
        after.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
    }

    fn alive<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, bool> {
        async move { start_time(running.pid) == Some(running.start_time) && api::answers(&running.control).await }.boxed()
    }
}
