//! VmManager: owns `vms/` and the map from VM name to its VmActor. Creates VMs (settles their
//! resources, clones their disks), routes lifecycle requests to each VM's actor, re-adopts
//! every VM on disk when it starts (so a restarted daemon finds its running VMMs), and restarts
//! a VmActor that died the same way. Takes the `*Vm` messages and `VmGone`, and
//! `Describe`/`Control` from the supervisor.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use protocol::vm::{VmCreate, VmInfo, VmSpec, VmState};
use protocol::{Error, ErrorKind};
use slog::{Logger, info, o, warn};

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::fsutil::{blocking, now};
use crate::image_cache::{BaseDisk, BaseDiskFor};
use crate::kernels::KernelPath;
use crate::network::{EnsureBridge, LeaseIp, ReleaseIp};
use crate::persist::Persisted;
use crate::supervisor::{Lookup, Supervisor};
use crate::vm::record::{Paths, Record};
use crate::vm::{self, Destroy, Info, Kill, Start, Stop, VmActor, VmGuard};
use crate::vmm::{Boot, Vmm};

#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct CreateVm(pub VmCreate);

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

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveVm {
    pub name: String,
    pub force: bool,
}

#[derive(Message)]
#[rtype(result = "Vec<VmInfo>")]
pub struct ListVms;

/// Where a VM's console log is (for `vm logs`).
#[derive(Message)]
#[rtype(result = "Result<PathBuf, Error>")]
pub struct ConsolePath(pub String);

/// A VmActor is gone (its guard's drop); `settled` resolves once its last state is on disk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct VmGone {
    pub name: String,
    pub settled: futures_util::future::BoxFuture<'static, Result<(), Error>>,
}

fn restarting(what: &str) -> Error {
    Error::new(ErrorKind::Unavailable, format!("the {what} actor is restarting"))
        .with_hint("retry in a moment")
}

/// Defaults derived from the host, overridable per VM.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
}

impl Defaults {
    /// Up to 2 vCPUs and an eighth of the host's memory (256 MiB to 1 GiB); 8 GiB of disk.
    pub fn for_host() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1).min(2);
        let total_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
                })
            })
            .map(|kib| kib / 1024)
            .unwrap_or(2048);
        Defaults { cpus, memory_mib: (total_mib / 8).clamp(256, 1024) as u32, disk_bytes: 8 << 30 }
    }

    /// The settings file's values where it gives them.
    pub fn with(self, file: crate::config::VmDefaults) -> Self {
        Defaults {
            cpus: file.cpus.unwrap_or(self.cpus),
            memory_mib: file.memory_mib.unwrap_or(self.memory_mib),
            disk_bytes: file.disk_bytes.unwrap_or(self.disk_bytes),
        }
    }
}

pub struct VmManager {
    vms_dir: PathBuf,
    vms: HashMap<String, Addr<VmActor>>,
    /// Names being created or removed: not to be re-adopted or created twice.
    busy: HashSet<String>,
    vmm: Arc<dyn Vmm>,
    supervisor: Addr<Supervisor>,
    defaults: Defaults,
    log: Logger,
    guard: ChildGuard,
}

impl VmManager {
    pub fn new(cx: ChildCtx, supervisor: Addr<Supervisor>, vmm: Arc<dyn Vmm>) -> Self {
        let state = &cx.config.layout.state_dir;
        VmManager {
            vms_dir: state.join("vms"),
            vms: HashMap::new(),
            busy: HashSet::new(),
            vmm,
            supervisor,
            defaults: Defaults::for_host().with(cx.config.vm_defaults),
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
        let actor = VmActor::new(record, paths, self.vmm.clone(), log, guard).start();
        self.vms.insert(name, actor);
    }

    /// Every VM record on disk (read on the blocking pool), for adoption.
    fn load_all(&self) -> impl Future<Output = Vec<Result<Record, (String, Error)>>> + use<> {
        let dir = self.vms_dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return vec![] };
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .map(|name| Record::load(&Paths::new(&dir, &name)).map_err(|e| (name, e)))
                .collect()
        });
        async move { read.await.unwrap_or_default() }
    }

    /// Starts an actor for every VM on disk; each checks whether its VMM still runs.
    fn adopt_all(&mut self, records: Vec<Result<Record, (String, Error)>>, ctx: &mut Context<Self>) {
        for record in records {
            match record {
                Ok(record) if !self.vms.contains_key(&record.info.name) => self.spawn_actor(record, ctx),
                Ok(_) => {}
                Err((name, e)) => {
                    warn!(self.log, "skipping an unreadable VM"; "vm" => &name, "error" => %e.message)
                }
            }
        }
        info!(self.log, "VMs adopted"; "count" => self.vms.len());
    }

    /// Gives the VM's address back to the pool. Awaiting it queues the release in the Network
    /// actor's mailbox, ahead of any lease asked for afterwards.
    fn release_ip(&self, vm: String) -> impl Future<Output = ()> + 'static {
        let supervisor = self.supervisor.clone();
        async move {
            if let Some(net) = supervisor.send(Lookup).await.ok().and_then(|p| p.network) {
                net.do_send(ReleaseIp(vm));
            }
        }
    }

    fn actor(&self, name: &str) -> Result<Addr<VmActor>, Error> {
        self.vms.get(name).cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("no VM named {name:?}"))
                .with_hint("see `banger vm ls --all`")
        })
    }

    /// Everything the VMM needs to boot `name`, from its actor's record and the kernel store.
    fn boot_for(
        &self,
        name: &str,
        actor: Addr<VmActor>,
    ) -> impl Future<Output = Result<Boot, Error>> + 'static {
        let paths = Paths::new(&self.vms_dir, name);
        let supervisor = self.supervisor.clone();
        let name = name.to_string();
        async move {
            let spec = actor
                .send(Info)
                .await
                .map_err(|e| Error::internal(format!("the VM's actor did not answer: {e}")))?
                .spec;
            let peers = supervisor.send(Lookup).await.unwrap_or_default();
            let mut kernel_args = spec.kernel_args.clone();
            let mut ip = None;
            // A VM with a MAC is networked (its address is released when it fails, and leased
            // again here).
            let network = match spec.mac {
                Some(_) => {
                    let net = peers.network.ok_or_else(|| restarting("network"))?;
                    net.send(EnsureBridge).await.map_err(|e| Error::internal(e.to_string()))??;
                    let lease = net
                        .send(LeaseIp(name.clone()))
                        .await
                        .map_err(|e| Error::internal(e.to_string()))??;
                    kernel_args.push(lease.kernel_arg());
                    ip = Some(lease.ip.to_string());
                    Some((lease.bridge, lease.mac))
                }
                None => None,
            };
            let kernels = peers.kernels.ok_or_else(crate::kernels::unavailable)?;
            let kernel = kernels
                .send(KernelPath(spec.kernel.clone()))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            Ok(Boot {
                vm: name,
                kernel,
                disk: paths.disk(),
                cpus: spec.cpus,
                memory_mib: spec.memory_mib,
                kernel_args: kernel_args.join(" "),
                network,
                ip,
            })
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
        // No request is served before every VM has its actor.
        ctx.wait(self.load_all().into_actor(self).map(|records, act, ctx| {
            act.adopt_all(records, ctx);
            act.guard.started();
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

/// A VM failed: its address goes back to the pool (the next start leases one again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct VmFailed {
    pub name: String,
}

impl Handler<VmFailed> for VmManager {
    type Result = ();
    /// Holds the mailbox until the release is queued, so a start that follows leases afresh.
    fn handle(&mut self, msg: VmFailed, ctx: &mut Context<Self>) {
        ctx.wait(self.release_ip(msg.name).into_actor(self));
    }
}

impl Handler<VmGone> for VmManager {
    type Result = ();
    fn handle(&mut self, msg: VmGone, ctx: &mut Context<Self>) {
        self.vms.remove(&msg.name);
        if self.busy.contains(&msg.name) {
            return;
        }
        // Not a removal: the actor died. Adopt the VM again from its record, once the record
        // holds the last state it set.
        warn!(self.log, "a VM actor stopped; adopting the VM again"; "vm" => &msg.name);
        let paths = Paths::new(&self.vms_dir, &msg.name);
        let load = async move {
            let _ = msg.settled.await;
            blocking(move || Record::load(&paths)).await
        };
        ctx.wait(load.into_actor(self).map(|record, act, ctx| {
            if let Ok(record) = record {
                act.spawn_actor(record, ctx);
            }
        }));
    }
}

impl Handler<CreateVm> for VmManager {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, CreateVm(req): CreateVm, _: &mut Context<Self>) -> Self::Result {
        let checked = (|| {
            vm::validate_name(&req.name)?;
            if self.vms.contains_key(&req.name) || self.busy.contains(&req.name) {
                return Err(Error::new(ErrorKind::Conflict, format!("a VM named {:?} exists", req.name))
                    .with_hint(format!("pick another name, or remove it: banger vm rm {}", req.name)));
            }
            crate::image_cache::images::validate_name(&req.image)?;
            Ok(())
        })();
        if let Err(e) = checked {
            return Box::pin(async move { Err(e) }.into_actor(self));
        }
        self.busy.insert(req.name.clone());
        let name = req.name.clone();
        let paths = Paths::new(&self.vms_dir, &req.name);
        let defaults = self.defaults;
        let supervisor = self.supervisor.clone();
        let work = async move {
            let kernel = req.kernel.clone().unwrap_or_else(|| "default".into());
            let peers = supervisor.send(Lookup).await.unwrap_or_default();
            let kernels = peers.kernels.ok_or_else(crate::kernels::unavailable)?;
            kernels.send(KernelPath(kernel.clone())).await.map_err(|e| Error::internal(e.to_string()))??;
            let images = peers.images.ok_or_else(crate::image_cache::unavailable)?;
            let BaseDiskFor { base, disk_bytes } = images
                .send(BaseDisk {
                    image: req.image.clone(),
                    bytes: req.disk_bytes,
                    default_bytes: defaults.disk_bytes,
                })
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            let lease = match req.network {
                true => {
                    let net = peers.network.ok_or_else(|| restarting("network"))?;
                    Some(
                        net.send(LeaseIp(req.name.clone()))
                            .await
                            .map_err(|e| Error::internal(e.to_string()))??,
                    )
                }
                false => None,
            };
            let info = VmInfo {
                name: req.name.clone(),
                state: VmState::Created,
                spec: VmSpec {
                    cpus: req.cpus.unwrap_or(defaults.cpus),
                    memory_mib: req.memory_mib.unwrap_or(defaults.memory_mib),
                    disk_bytes,
                    image: req.image.clone(),
                    kernel,
                    kernel_args: req.kernel_args.clone(),
                    ip: lease.as_ref().map(|l| l.ip.to_string()),
                    mac: lease.as_ref().map(|l| l.mac.clone()),
                },
                pid: None,
                created_at: now(),
                started_at: None,
                last_exit: None,
            };
            let record = Record { info, running: None };
            let (p, r) = (paths.clone(), record.clone());
            blocking(move || {
                std::fs::create_dir_all(&p.dir)
                    .map_err(|e| Error::internal(format!("cannot create {}: {e}", p.dir.display())))?;
                let made = crate::disk::clone_file(&base, &p.disk())
                    .map_err(Error::internal)
                    .and_then(|()| r.save(&p));
                if made.is_err() {
                    let _ = std::fs::remove_dir_all(&p.dir);
                }
                made
            })
            .await?;
            Ok(record)
        };
        Box::pin(work.into_actor(self).map(move |made, act, ctx| {
            act.busy.remove(&name);
            if made.is_err() {
                ctx.wait(act.release_ip(name.clone()).into_actor(act));
            }
            let record = made?;
            let info = record.info.clone();
            info!(act.log, "created"; "vm" => &info.name);
            act.spawn_actor(record, ctx);
            Ok(info)
        }))
    }
}

impl Handler<Lifecycle> for VmManager {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, msg: Lifecycle, _: &mut Context<Self>) -> Self::Result {
        let name = match &msg {
            Lifecycle::Start(n)
            | Lifecycle::Stop(n, _)
            | Lifecycle::Kill(n)
            | Lifecycle::Restart(n, _)
            | Lifecycle::Inspect(n) => n.clone(),
        };
        let actor = match self.actor(&name) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(e) }.into_actor(self)),
        };
        let boot = self.boot_for(&name, actor.clone());
        let gone = |e: MailboxError| Error::internal(format!("the VM's actor did not answer: {e}"));
        let work = async move {
            match msg {
                Lifecycle::Inspect(_) => actor.send(Info).await.map_err(gone),
                Lifecycle::Stop(_, timeout) => actor.send(Stop { timeout }).await.map_err(gone)?,
                Lifecycle::Kill(_) => actor.send(Kill).await.map_err(gone)?,
                Lifecycle::Start(_) => actor.send(Start { boot: boot.await? }).await.map_err(gone)?,
                Lifecycle::Restart(_, timeout) => {
                    actor.send(Stop { timeout }).await.map_err(gone)??;
                    actor.send(Start { boot: boot.await? }).await.map_err(gone)?
                }
            }
        };
        Box::pin(work.into_actor(self))
    }
}

impl Handler<RemoveVm> for VmManager {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, msg: RemoveVm, _: &mut Context<Self>) -> Self::Result {
        let actor = match self.actor(&msg.name) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(e) }.into_actor(self)),
        };
        self.busy.insert(msg.name.clone());
        let name = msg.name.clone();
        let paths = Paths::new(&self.vms_dir, &msg.name);
        let release = self.release_ip(msg.name.clone());
        let work = async move {
            let gone = |e: MailboxError| Error::internal(format!("the VM's actor did not answer: {e}"));
            if msg.force {
                actor.send(Kill).await.map_err(gone)??;
            }
            actor.send(Destroy).await.map_err(gone)??;
            blocking(move || {
                std::fs::remove_dir_all(&paths.dir)
                    .map_err(|e| Error::internal(format!("cannot remove the VM's files: {e}")))
            })
            .await?;
            release.await;
            Ok(())
        };
        Box::pin(work.into_actor(self).map(move |done, act, _| {
            act.busy.remove(&name);
            if done.is_ok() {
                act.vms.remove(&name);
                info!(act.log, "removed"; "vm" => &name);
            }
            done
        }))
    }
}

impl Handler<ListVms> for VmManager {
    type Result = ResponseFuture<Vec<VmInfo>>;
    fn handle(&mut self, _: ListVms, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self.vms.values().map(|a| a.send(Info)).collect();
        Box::pin(async move {
            let mut all: Vec<VmInfo> = join_all(asks).await.into_iter().filter_map(Result::ok).collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        })
    }
}

/// Remove every VM that is not running; answers with their names.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct PruneVms;

impl Handler<PruneVms> for VmManager {
    type Result = ResponseActFuture<Self, Vec<String>>;
    fn handle(&mut self, _: PruneVms, ctx: &mut Context<Self>) -> Self::Result {
        let me = ctx.address();
        let asks: Vec<_> = self.vms.values().map(|a| a.send(Info)).collect();
        let work = async move {
            let mut removed = vec![];
            for v in join_all(asks).await.into_iter().filter_map(Result::ok) {
                let idle = matches!(v.state, VmState::Stopped | VmState::Created | VmState::Failed(_));
                if idle
                    && matches!(me.send(RemoveVm { name: v.name.clone(), force: false }).await, Ok(Ok(())))
                {
                    removed.push(v.name);
                }
            }
            removed.sort();
            removed
        };
        Box::pin(work.into_actor(self))
    }
}

impl Handler<ConsolePath> for VmManager {
    type Result = Result<PathBuf, Error>;
    fn handle(&mut self, ConsolePath(name): ConsolePath, _: &mut Context<Self>) -> Self::Result {
        self.actor(&name)?;
        Ok(Paths::new(&self.vms_dir, &name).console())
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
        Some(format!("{} VM(s)", self.vms.len()))
    }
}

crate::handle_control!(VmManager);
