//! VmManager: owns `vms/` and the map from VM name to its VmActor. It is the one actor that
//! knows every VM, so the rules that need all of them live here: which image and kernel are in
//! use, whether the host may be uninstalled, which VMs a listing shows. One file per operation:
//! `create`, `lifecycle` (start, stop, kill, restart, inspect, logs), `adopt` (VMs found on
//! disk at start, or whose actor died), `remove` (rm, prune, and the in-use checks). Takes
//! `Describe`/`Control` from the supervisor.

mod adopt;
mod create;
mod lifecycle;
mod remove;
mod ssh;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use actix::prelude::*;
use futures_util::future::join_all;
use protocol::vm::VmInfo;
use protocol::{Error, ErrorKind};
use slog::{Logger, o};

pub use self::create::{CreateVm, Defaults};
pub use self::lifecycle::{AgentOf, Lifecycle, Logs, Ports, SetWorkspace};
pub use self::remove::{MayReplaceImage, PruneVms, RemoveImage, RemoveKernel, RemoveVm, Uninstall};
pub use self::ssh::RefreshSsh;
use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::network::ReleaseIp;
use crate::peers::Peers;
use crate::persist::Persisted;
use crate::vm::record::{Paths, Record};
use crate::vm::{Info, VmActor, VmGuard};
use crate::vmm::Backends;

/// The VmManager's own failures, turned into the wire's [`Error`] in one place.
#[derive(Debug)]
pub enum VmError {
    NotFound(String),
    Exists(String),
    /// A VM's actor went away under the request (it is being adopted again).
    ActorGone(String),
    /// A resource setting out of range: the setting, what was asked, and the allowed range.
    OutOfRange {
        what: &'static str,
        asked: String,
        allowed: String,
    },
    /// Something in use by VMs: what, and which VMs.
    InUse {
        what: String,
        users: Vec<String>,
        hint: String,
    },
}

impl From<VmError> for Error {
    fn from(e: VmError) -> Error {
        match e {
            VmError::NotFound(name) => Error::new(ErrorKind::NotFound, format!("no VM named {name:?}"))
                .with_hint("see `banger vm ls --all`"),
            VmError::Exists(name) => Error::new(ErrorKind::Conflict, format!("a VM named {name:?} exists"))
                .with_hint(format!("pick another name, or remove it: banger vm rm {name}")),
            VmError::ActorGone(name) => {
                Error::new(ErrorKind::Unavailable, format!("VM {name}'s actor is restarting"))
                    .with_hint("retry in a moment")
            }
            VmError::OutOfRange { what, asked, allowed } => {
                Error::new(ErrorKind::InvalidInput, format!("{what} {asked} is out of range"))
                    .with_hint(format!("use {allowed}"))
            }
            VmError::InUse { what, users, hint } => {
                Error::new(ErrorKind::Conflict, format!("{what} is used by VM(s) {}", users.join(", ")))
                    .with_hint(hint)
            }
        }
    }
}

/// A VmActor is gone (its guard's drop); `settled` resolves once its last state is on disk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct VmGone {
    pub name: String,
    pub settled: futures_util::future::BoxFuture<'static, Result<(), Error>>,
}

/// A VM failed: its address goes back to the pool (the next start leases one again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct VmFailed {
    pub name: String,
}

pub struct VmManager {
    vms_dir: PathBuf,
    vms: HashMap<String, Addr<VmActor>>,
    /// Names being created or removed: not to be re-adopted or created twice.
    busy: HashSet<String>,
    /// VMs whose record was unreadable, with why (for `daemon status`).
    damaged: HashMap<String, String>,
    vmms: Backends,
    peers: Peers,
    defaults: Defaults,
    /// The guest agent written into every VM's disk and initrd at create.
    agent: PathBuf,
    ssh: crate::ssh::SshFiles,
    /// Held while the ssh files are rewritten, so rewrites land in the order they were asked.
    ssh_writing: std::sync::Arc<tokio::sync::Mutex<()>>,
    log: Logger,
    guard: ChildGuard,
}

impl VmManager {
    pub fn new(cx: ChildCtx, vmms: Backends) -> Self {
        VmManager {
            vms_dir: cx.config.layout.state_dir.join("vms"),
            vms: HashMap::new(),
            busy: HashSet::new(),
            damaged: HashMap::new(),
            vmms,
            peers: cx.peers,
            defaults: Defaults::for_host().with(cx.config.vm_defaults),
            agent: cx.config.agent.clone(),
            ssh: crate::ssh::SshFiles::new(&cx.config.layout.state_dir, &cx.config.socket),
            ssh_writing: Default::default(),
            log: cx.log,
            guard: cx.guard,
        }
    }

    fn spawn_actor(&mut self, record: Record, ctx: &mut Context<Self>) {
        let name = record.info.name.clone();
        let paths = Paths::new(&self.vms_dir, &name);
        let guard = VmGuard {
            name: name.clone(),
            manager: ctx.address().recipient(),
            failed: ctx.address().recipient(),
            record: Persisted::atomic(paths.record()),
        };
        let log = self.log.new(o!("vm" => name.clone()));
        let vmm = self.vmms.get(record.info.spec.vmm);
        let client_key = self.ssh.client_key().with_extension("pub");
        let actor = VmActor::new(record, paths, vmm, client_key, log, guard).start();
        self.vms.insert(name, actor);
    }

    /// Gives the VM's address back to the pool. Awaiting it queues the release in the Network
    /// actor's mailbox, ahead of any lease asked for afterwards.
    fn release_ip(&self, vm: String) -> impl Future<Output = ()> + 'static {
        let network = self.peers.network();
        async move {
            let _ = network.send(ReleaseIp(vm)).await;
        }
    }

    fn actor(&self, name: &str) -> Result<Addr<VmActor>, Error> {
        self.vms.get(name).cloned().ok_or_else(|| VmError::NotFound(name.to_string()).into())
    }

    /// Every VM's info, sorted by name. A VM whose actor does not answer fails the whole
    /// answer: a listing with a VM missing would pass for a true one.
    fn all(&self) -> impl Future<Output = Result<Vec<VmInfo>, Error>> + use<> {
        let asks: Vec<_> = self.vms.iter().map(|(name, a)| (name.clone(), a.send(Info))).collect();
        async move {
            let answers =
                join_all(asks.into_iter().map(|(name, ask)| async move { (name, ask.await) })).await;
            let mut all = answers
                .into_iter()
                .map(|(name, info)| info.map_err(|_| Error::from(VmError::ActorGone(name))))
                .collect::<Result<Vec<_>, _>>()?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(all)
        }
    }
}

impl Actor for VmManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = std::fs::create_dir_all(&self.vms_dir) {
            self.guard.exiting(format!("cannot create {}: {e}", self.vms_dir.display()));
            ctx.stop();
            return;
        }
        // No request is served before every VM has its actor and the network knows their
        // addresses.
        let (load, network) = (adopt::load_all(self.vms_dir.clone()), self.peers.network());
        ctx.wait(load.into_actor(self).then(move |found, act, ctx| {
            let claim = found.map(|found| act.adopt_all(found, ctx));
            async move {
                let claim = claim?;
                // Its saved leases stand if this fails; the claim only rebuilds lost ones.
                Ok(network.send(claim).await.err().map(|e| e.message))
            }
            .into_actor(act)
            .map(|claimed: Result<Option<String>, Error>, act, ctx| match claimed {
                Ok(failed) => {
                    if let Some(why) = failed {
                        slog::warn!(act.log, "could not give the network the VMs' addresses"; "error" => why);
                    }
                    act.guard.started();
                    ctx.notify(RefreshSsh);
                }
                // Stopped, so the supervisor restarts it with backoff and `status` says why.
                Err(e) => {
                    act.guard.exiting(e.message);
                    ctx.stop();
                }
            })
        }));
    }

    /// VM actors outlive a manager that stops (their pidfd watches hold them), and the manager
    /// that replaces it adopts every VM again: stop them, so each VM has one actor. (A panic
    /// runs this too.) Their VMMs keep running and are re-adopted.
    fn stopped(&mut self, _: &mut Context<Self>) {
        for vm in self.vms.values() {
            vm.do_send(crate::child::Control::Stop);
        }
    }
}

impl Handler<VmFailed> for VmManager {
    type Result = ();
    /// Holds the mailbox until the release is queued, so a start that follows leases afresh.
    fn handle(&mut self, msg: VmFailed, ctx: &mut Context<Self>) {
        ctx.wait(self.release_ip(msg.name).into_actor(self));
    }
}

/// Fault injection: sends `control` to one VM's actor (chaos builds only send it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChaosVm {
    pub name: String,
    pub control: crate::child::Control,
}

impl Handler<ChaosVm> for VmManager {
    type Result = ();
    fn handle(&mut self, msg: ChaosVm, _: &mut Context<Self>) {
        if let Some(actor) = self.vms.get(&msg.name) {
            actor.do_send(msg.control);
        }
    }
}

impl Handler<Describe> for VmManager {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        let mut line = format!("{} VM(s)", self.vms.len());
        let mut damaged: Vec<_> = self.damaged.iter().collect();
        damaged.sort();
        for (name, why) in damaged {
            line.push_str(&format!("; {name} is damaged: {why}"));
        }
        Some(line)
    }
}

crate::handle_control!(VmManager);

/// `vm ls`: running VMs, or with `all` every one.
#[derive(Message)]
#[rtype(result = "Result<Vec<VmInfo>, Error>")]
pub struct ListVms {
    pub all: bool,
}

impl Handler<ListVms> for VmManager {
    type Result = ResponseFuture<Result<Vec<VmInfo>, Error>>;
    fn handle(&mut self, msg: ListVms, _: &mut Context<Self>) -> Self::Result {
        let all = self.all();
        Box::pin(async move {
            let vms = all.await?;
            Ok(vms.into_iter().filter(|v| msg.all || v.state == protocol::vm::VmState::Running).collect())
        })
    }
}
