//! Start, stop, kill, restart, inspect, logs and the workspace record of one VM: routed to its
//! actor; a start first gathers what the VMM needs (network lease, bridge, kernel path).

use std::time::Duration;

use actix::prelude::*;
use protocol::Error;
use protocol::ErrorKind;
use protocol::vm::{VmAction, VmInfo, VmmKind, Workspace};
use tokio::sync::mpsc;

use super::{VmError, VmManager};
use crate::kernels::GetKernelFiles;
use crate::network::{EnsureBridge, LeaseIp};
use crate::peers::Peers;
use crate::vm::follow::Chunk;
use crate::vm::record::Paths;
use crate::vm::{self, Info, Kill, Start, Stop, VmActor};
use crate::vmm::Boot;

/// A lifecycle request for one VM.
#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub enum Lifecycle {
    Start(String),
    Stop(String, Duration),
    Kill(String),
    Restart(String, Duration),
    Inspect(String),
}

/// A VM's console log as a stream; with `follow`, until the VM stops.
#[derive(Message)]
#[rtype(result = "Result<mpsc::Receiver<Chunk>, Error>")]
pub struct Logs {
    pub name: String,
    pub follow: bool,
}

/// Records what `banger vm workspace copy` put in the VM (`None` forgets it).
#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct SetWorkspace {
    pub name: String,
    pub workspace: Option<Workspace>,
}

/// What a client may record: absolute directories and a tree id, so `inspect` never shows
/// something no `banger` wrote.
fn check_workspace(w: &Workspace) -> Result<(), Error> {
    let hex = |s: &str| (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    let bad = |what: String| {
        Err(Error::new(ErrorKind::InvalidInput, what)
            .with_hint("record a workspace with `banger vm workspace copy NAME`"))
    };
    if !w.host_dir.starts_with('/') || !w.guest_dir.starts_with('/') {
        return bad(format!(
            "a workspace's directories must be absolute (host {:?}, guest {:?})",
            w.host_dir, w.guest_dir
        ));
    }
    if !hex(&w.tree) || w.commit.as_deref().is_some_and(|c| !hex(c)) {
        return bad(format!("{:?} is not a git object id", w.tree));
    }
    Ok(())
}

impl Handler<SetWorkspace> for VmManager {
    type Result = ResponseFuture<Result<VmInfo, Error>>;
    fn handle(&mut self, msg: SetWorkspace, _: &mut Context<Self>) -> Self::Result {
        let actor = self.actor(&msg.name);
        Box::pin(async move {
            if let Some(w) = &msg.workspace {
                check_workspace(w)?;
            }
            let gone = |_| Error::from(VmError::ActorGone(msg.name.clone()));
            actor?.send(vm::SetWorkspace(msg.workspace)).await.map_err(gone)?
        })
    }
}

/// The way to a running VM's guest agent.
#[derive(Message)]
#[rtype(result = "Result<vm::agent::AgentHandle, Error>")]
pub struct AgentOf(pub String);

impl Handler<AgentOf> for VmManager {
    type Result = ResponseFuture<Result<vm::agent::AgentHandle, Error>>;
    fn handle(&mut self, AgentOf(name): AgentOf, _: &mut Context<Self>) -> Self::Result {
        let actor = self.actor(&name);
        Box::pin(
            async move { actor?.send(vm::Agent).await.map_err(|_| Error::from(VmError::ActorGone(name)))? },
        )
    }
}

/// Everything the VMM needs to boot `name`, from its actor's record and its peers.
async fn boot_for(name: String, paths: Paths, actor: Addr<VmActor>, peers: Peers) -> Result<Boot, Error> {
    let info = actor.send(Info).await.map_err(|_| VmError::ActorGone(name.clone()))?;
    // Refused before leasing or looking anything up (the actor checks again as it starts).
    info.state.check(&name, VmAction::Start)?;
    let spec = info.spec;
    let mut kernel_args = vec![format!("banger.hostname={name}")];
    kernel_args.extend(spec.kernel_args.iter().cloned());
    let mut ip = None;
    // A VM with a MAC is networked (its address is released when it fails, and leased again
    // here).
    let network = match spec.mac {
        Some(_) => {
            let net = peers.network();
            net.ask(EnsureBridge).await?;
            let lease = net.ask(LeaseIp(name.clone())).await?;
            kernel_args.extend(lease.kernel_args());
            ip = Some(lease.ip.to_string());
            Some((lease.bridge, lease.mac))
        }
        None => None,
    };
    let files = peers.kernels().ask(GetKernelFiles(spec.kernel.clone())).await?;
    // `vm create` made the VM's initrd from the kernel's modules, where it has them.
    let initrd = files.modules_cpio.is_some().then(|| paths.initrd());
    if initrd.is_none() && !spec.kernel_args.iter().any(|a| a.starts_with("init=")) {
        // Without an initrd the kernel starts the agent the disk holds.
        kernel_args.push(format!("init={}", crate::disk::AGENT_IN_DISK));
    }
    let kernel = match (spec.vmm, files.bzimage) {
        (VmmKind::Firecracker, _) => files.vmlinux,
        (VmmKind::Qemu, Some(bz)) => bz,
        (VmmKind::Qemu, None) => {
            return Err(Error::new(
                protocol::ErrorKind::InvalidInput,
                format!("kernel {} has no bzImage, which QEMU boots", spec.kernel),
            )
            .with_hint(
                "import a distro kernel (banger kernel import linux-image-*.deb), or use --vmm firecracker",
            ));
        }
    };
    Ok(Boot {
        vm: name,
        kernel,
        initrd,
        disk: paths.disk(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        kernel_args: kernel_args.join(" "),
        network,
        ip,
    })
}

impl Handler<Lifecycle> for VmManager {
    type Result = ResponseFuture<Result<VmInfo, Error>>;

    fn handle(&mut self, msg: Lifecycle, ctx: &mut Context<Self>) -> Self::Result {
        let name = match &msg {
            Lifecycle::Start(n)
            | Lifecycle::Stop(n, _)
            | Lifecycle::Kill(n)
            | Lifecycle::Restart(n, _)
            | Lifecycle::Inspect(n) => n.clone(),
        };
        let actor = match self.actor(&name) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let boot =
            boot_for(name.clone(), Paths::new(&self.vms_dir, &name), actor.clone(), self.peers.clone());
        let gone = move |_: MailboxError| Error::from(VmError::ActorGone(name));
        let me = ctx.address();
        Box::pin(async move {
            let starts = matches!(msg, Lifecycle::Start(_) | Lifecycle::Restart(..));
            let answer = match msg {
                Lifecycle::Inspect(_) => actor.send(Info).await.map_err(gone),
                Lifecycle::Stop(_, timeout) => actor.send(Stop { timeout }).await.map_err(gone)?,
                Lifecycle::Kill(_) => actor.send(Kill).await.map_err(gone)?,
                Lifecycle::Start(_) => actor.send(Start { boot: boot.await? }).await.map_err(gone)?,
                Lifecycle::Restart(_, timeout) => {
                    actor.send(Stop { timeout }).await.map_err(gone.clone())??;
                    actor.send(Start { boot: boot.await? }).await.map_err(gone)?
                }
            };
            // A start may lease a new address: the direct ssh entry follows it.
            if starts {
                let _ = me.send(super::RefreshSsh).await;
            }
            answer
        })
    }
}

impl Handler<Logs> for VmManager {
    type Result = ResponseFuture<Result<mpsc::Receiver<Chunk>, Error>>;
    fn handle(&mut self, msg: Logs, _: &mut Context<Self>) -> Self::Result {
        let actor = self.actor(&msg.name);
        Box::pin(async move {
            let gone = |_| Error::from(VmError::ActorGone(msg.name.clone()));
            actor?.send(vm::Logs { follow: msg.follow }).await.map_err(gone)
        })
    }
}

/// A change to a VM's port forwards, routed to its actor.
#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct Ports {
    pub name: String,
    pub change: vm::ports::PortChange,
}

impl Handler<Ports> for VmManager {
    type Result = ResponseFuture<Result<VmInfo, Error>>;
    fn handle(&mut self, msg: Ports, _: &mut Context<Self>) -> Self::Result {
        let actor = self.actor(&msg.name);
        Box::pin(async move {
            let gone = |_| Error::from(VmError::ActorGone(msg.name.clone()));
            actor?.send(msg.change).await.map_err(gone)?
        })
    }
}
