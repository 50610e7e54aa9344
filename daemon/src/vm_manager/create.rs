//! `vm create`: every setting checked against the host and the VMM's limits first, then the
//! kernel checked, the disk sized against the image (the image store refuses one too small for
//! it) and cloned, the guest agent written into it (and, for a kernel with modules, the VM's
//! initrd made), an address leased, and the record written.

use actix::prelude::*;
use protocol::Error;
use protocol::vm::{VmCreate, VmInfo, VmSpec, VmState};
use slog::info;

use super::{VmError, VmManager};
use crate::fsutil::{blocking, now};
use crate::image_cache::{BaseDisk, BaseDiskFor};
use crate::kernels::{GetKernelFiles, initrd};
use crate::network::LeaseIp;
use crate::vm::record::{Paths, Record};

#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct CreateVm(pub VmCreate);

/// Firecracker's limit on vCPUs.
const MAX_VCPUS: u32 = 32;
/// Below this no Linux guest boots (banger's test kernel needs far less, but is no guest).
const MIN_MEMORY_MIB: u32 = 16;

/// Defaults derived from the host, overridable per VM.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    /// What the host has: the upper bounds of `cpus` and `memory_mib`.
    pub host_cpus: u32,
    pub host_memory_mib: u32,
}

impl Defaults {
    /// The host's (`protocol::vm::HostDefaults`, shared with `banger doctor`).
    pub fn for_host() -> Self {
        let h = protocol::vm::HostDefaults::probe();
        Defaults {
            cpus: h.cpus,
            memory_mib: h.memory_mib,
            disk_bytes: h.disk_bytes,
            host_cpus: h.host_cpus,
            host_memory_mib: h.host_memory_mib,
        }
    }

    /// The settings file's values where it gives them.
    pub fn with(self, file: crate::config::VmDefaults) -> Self {
        Defaults {
            cpus: file.cpus.unwrap_or(self.cpus),
            memory_mib: file.memory_mib.unwrap_or(self.memory_mib),
            disk_bytes: file.disk_bytes.unwrap_or(self.disk_bytes),
            ..self
        }
    }

    /// The vCPUs and memory a VM gets, refused here if the host or the VMM cannot give them.
    pub fn settle(&self, cpus: Option<u32>, memory_mib: Option<u32>) -> Result<(u32, u32), VmError> {
        let (cpus, memory_mib) = (cpus.unwrap_or(self.cpus), memory_mib.unwrap_or(self.memory_mib));
        let max_cpus = self.host_cpus.min(MAX_VCPUS);
        if !(1..=max_cpus).contains(&cpus) {
            return Err(VmError::OutOfRange {
                what: "--cpus",
                asked: cpus.to_string(),
                allowed: format!("1 to {max_cpus} (this host has {} CPUs)", self.host_cpus),
            });
        }
        if !(MIN_MEMORY_MIB..=self.host_memory_mib).contains(&memory_mib) {
            return Err(VmError::OutOfRange {
                what: "--memory",
                asked: format!("{memory_mib} MiB"),
                allowed: format!("{MIN_MEMORY_MIB} MiB to {} MiB (this host's memory)", self.host_memory_mib),
            });
        }
        Ok((cpus, memory_mib))
    }
}

impl Handler<CreateVm> for VmManager {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, CreateVm(req): CreateVm, _: &mut Context<Self>) -> Self::Result {
        let checked = (|| {
            crate::vm::validate_name(&req.name)?;
            // A damaged VM's name is taken too: its disk is still there.
            if self.vms.contains_key(&req.name) || self.busy.contains(&req.name) {
                return Err(VmError::Exists(req.name.clone()).into());
            }
            crate::image_cache::images::validate_name(&req.image)?;
            for (i, forward) in req.ports.iter().enumerate() {
                crate::vm::ports::check(forward)?;
                if req.ports[..i].iter().any(|p| p.host_port == forward.host_port) {
                    return Err(Error::new(
                        protocol::ErrorKind::InvalidInput,
                        format!("host port {} is forwarded twice", forward.host_port),
                    )
                    .with_hint("give each -p its own host port"));
                }
            }
            Ok(self.defaults.settle(req.cpus, req.memory_mib)?)
        })();
        let (cpus, memory_mib) = match checked {
            Ok(settled) => settled,
            Err(e) => return Box::pin(async move { Err(e) }.into_actor(self)),
        };
        self.busy.insert(req.name.clone());
        let name = req.name.clone();
        let paths = Paths::new(&self.vms_dir, &req.name);
        let defaults = self.defaults;
        let default_vmm = self.vmms.default;
        let peers = self.peers.clone();
        let agent = self.agent.clone();
        let ssh = self.ssh.clone();
        let work = async move {
            let kernel = req.kernel.clone().unwrap_or_else(|| "default".into());
            let files = peers.kernels().ask(GetKernelFiles(kernel.clone())).await?;
            let BaseDiskFor { base, disk_bytes } = peers
                .images()
                .ask(BaseDisk {
                    image: req.image.clone(),
                    bytes: req.disk_bytes,
                    default_bytes: defaults.disk_bytes,
                })
                .await?;
            let lease = match req.network {
                true => Some(peers.network().ask(LeaseIp(req.name.clone())).await?),
                false => None,
            };
            let info = VmInfo {
                name: req.name.clone(),
                state: VmState::Created,
                spec: VmSpec {
                    cpus,
                    memory_mib,
                    disk_bytes,
                    image: req.image.clone(),
                    kernel,
                    kernel_args: req.kernel_args.clone(),
                    ip: lease.as_ref().map(|l| l.ip.to_string()),
                    mac: lease.as_ref().map(|l| l.mac.clone()),
                    vmm: req.vmm.unwrap_or(default_vmm),
                },
                pid: None,
                created_at: now(),
                started_at: None,
                last_exit: None,
                agent: None,
                ports: req.ports.clone(),
                workspace: None,
                ssh: None,
            };
            let (p, mut r) = (paths.clone(), Record { info, running: None });
            blocking(move || {
                let agent = crate::guest_agent::load(&agent)?;
                // Never over a directory already there: it would be another VM's data.
                std::fs::create_dir(&p.dir).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => VmError::Exists(r.info.name.clone()).into(),
                    _ => Error::internal(format!("cannot create {}: {e}", p.dir.display())),
                })?;
                let made = crate::disk::clone_file(&base, &p.disk())
                    .and_then(|()| guest_files(&p, &agent, files.modules_cpio.as_deref()))
                    .map_err(Error::internal)
                    .and_then(|()| {
                        ssh.client_public()?;
                        r.info.ssh = Some(Box::new(crate::ssh::make_host_key(&p.dir, &r.info.name)?));
                        r.save(&p)
                    });
                if made.is_err() {
                    let _ = std::fs::remove_dir_all(&p.dir);
                }
                made.map(|()| r)
            })
            .await
        };
        Box::pin(
            work.into_actor(self)
                .map(move |made, act, ctx| {
                    act.busy.remove(&name);
                    if made.is_err() {
                        ctx.wait(act.release_ip(name.clone()).into_actor(act));
                    }
                    let record = made?;
                    let info = record.info.clone();
                    info!(act.log, "created"; "vm" => &info.name);
                    act.spawn_actor(record, ctx);
                    Ok(info)
                })
                .then(|made, act, _| act.refreshed(made).into_actor(act)),
        )
    }
}

/// The agent written into the VM's disk, and the VM's initrd when its kernel has modules.
fn guest_files(p: &Paths, agent: &[u8], modules_cpio: Option<&std::path::Path>) -> Result<(), String> {
    let copy = p.dir.join("agent.tmp");
    std::fs::write(&copy, agent).map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
    let installed = crate::disk::install_agent(&p.disk(), &copy);
    let _ = std::fs::remove_file(&copy);
    installed?;
    if let Some(modules) = modules_cpio {
        initrd::write(modules, agent, &p.initrd())?;
    }
    Ok(())
}
