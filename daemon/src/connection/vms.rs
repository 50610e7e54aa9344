//! Routes VM and kernel requests to the VmManager and KernelStore.

use std::io::SeekFrom;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use protocol::channel::{Channel, WireError};
use protocol::daemon::{Request, Response};
use protocol::vm::VmState;
use protocol::{Error, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Deps, ask, reply};
use crate::kernels::{ImportKernel, ListKernels, RemoveKernel};
use crate::network::RemoveBridge;
use crate::supervisor::Lookup;
use crate::vm_manager::{ConsolePath, CreateVm, Lifecycle, ListVms, PruneVms, RemoveVm};

pub async fn route(
    chan: &Channel,
    request: Request,
    fd: Option<OwnedFd>,
    deps: &Deps,
) -> Result<(), WireError> {
    let peers = deps.supervisor.send(Lookup).await.unwrap_or_default();
    let restarting = |what: &str| {
        Error::new(ErrorKind::Unavailable, format!("the {what} is restarting")).with_hint("retry in a moment")
    };
    let response = match request {
        Request::KernelImport { .. } | Request::KernelList | Request::KernelRemove { .. } => {
            let Some(kernels) = peers.kernels else {
                return chan.send(&Response::Error(restarting("kernel store")), false).await;
            };
            match request {
                Request::KernelImport { name, file } => match fd {
                    Some(fd) => reply(
                        ask(&kernels, ImportKernel { name, source: file, input: std::fs::File::from(fd) })
                            .await,
                        Response::Kernel,
                    ),
                    None => Response::Error(Error::new(
                        ErrorKind::InvalidInput,
                        "a kernel import needs the file passed as a descriptor",
                    )),
                },
                Request::KernelList => reply(ask(&kernels, ListKernels).await, Response::Kernels),
                Request::KernelRemove { name } => {
                    let vms = match &peers.vms {
                        Some(v) => v.send(ListVms).await.unwrap_or_default(),
                        None => vec![],
                    };
                    if let Some(user) = vms.iter().find(|v| v.spec.kernel == name) {
                        Response::Error(Error::new(
                            ErrorKind::Conflict,
                            format!("VM {} uses kernel {name}", user.name),
                        ))
                    } else {
                        reply(ask(&kernels, RemoveKernel(name)).await, |()| Response::Ok)
                    }
                }
                _ => Response::Error(Error::internal("not a kernel request")),
            }
        }
        _ => {
            let Some(vms) = peers.vms else {
                return chan.send(&Response::Error(restarting("VM manager")), false).await;
            };
            match request {
                Request::VmCreate(create) => reply(ask(&vms, CreateVm(create)).await, Response::Vm),
                Request::VmStart { name } => reply(ask(&vms, Lifecycle::Start(name)).await, Response::Vm),
                Request::VmStop { name, timeout_ms } => reply(
                    ask(&vms, Lifecycle::Stop(name, Duration::from_millis(timeout_ms))).await,
                    Response::Vm,
                ),
                Request::VmKill { name } => reply(ask(&vms, Lifecycle::Kill(name)).await, Response::Vm),
                Request::VmRestart { name, timeout_ms } => reply(
                    ask(&vms, Lifecycle::Restart(name, Duration::from_millis(timeout_ms))).await,
                    Response::Vm,
                ),
                Request::VmInspect { name } => reply(ask(&vms, Lifecycle::Inspect(name)).await, Response::Vm),
                Request::VmRemove { name, force } => {
                    reply(ask(&vms, RemoveVm { name, force }).await, |()| Response::Ok)
                }
                Request::VmList { all } => {
                    let list = vms.send(ListVms).await.unwrap_or_default();
                    Response::Vms(list.into_iter().filter(|v| all || v.state == VmState::Running).collect())
                }
                Request::VmPrune => Response::Removed(vms.send(PruneVms).await.unwrap_or_default()),
                Request::VmLogs { name, follow } => return logs(chan, &vms, name, follow).await,
                Request::SystemUninstall => {
                    let list = vms.send(ListVms).await.unwrap_or_default();
                    if let Some(v) = list.iter().find(|v| v.state == VmState::Running) {
                        Response::Error(
                            Error::new(ErrorKind::Conflict, format!("VM {} is running", v.name))
                                .with_hint("stop every VM first: banger vm stop NAME"),
                        )
                    } else {
                        match peers.network.clone() {
                            Some(net) => reply(ask(&net, RemoveBridge).await, |bridge| {
                                Response::Removed(vec![
                                    format!("bridge {bridge}"),
                                    format!("nftables table {bridge}"),
                                ])
                            }),
                            None => Response::Error(restarting("network")),
                        }
                    }
                }
                _ => Response::Error(Error::internal("not a VM request")),
            }
        }
    };
    chan.send(&response, false).await
}

/// The console log, then (with `follow`) what is appended until the VM stops running.
async fn logs(
    chan: &Channel,
    vms: &actix::Addr<crate::vm_manager::VmManager>,
    name: String,
    follow: bool,
) -> Result<(), WireError> {
    let path = match ask(vms, ConsolePath(name.clone())).await {
        Ok(p) => p,
        Err(e) => return chan.send(&Response::Error(e), false).await,
    };
    let mut sent = 0;
    loop {
        // Asked before reading: what a VM wrote before it stopped is read on this last pass.
        let running = follow
            && ask(vms, Lifecycle::Inspect(name.clone()))
                .await
                .is_ok_and(|v| matches!(v.state, VmState::Starting | VmState::Running | VmState::Stopping));
        sent = send_new(chan, &path, sent).await?;
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chan.send(&Response::Ok, false).await
}

/// Sends what the log holds past byte `sent` (all of it if it was trimmed under its cap since);
/// returns how far it has been sent.
async fn send_new(chan: &Channel, path: &Path, sent: u64) -> Result<u64, WireError> {
    let Ok(file) = tokio::fs::File::open(path).await else { return Ok(sent) };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let from = if len < sent { 0 } else { sent };
    let mut file = file;
    let mut new = vec![];
    if file.seek(SeekFrom::Start(from)).await.is_err()
        || file.take(len - from).read_to_end(&mut new).await.is_err()
    {
        return Ok(sent);
    }
    for chunk in new.chunks(32 << 10) {
        chan.send(&Response::Log(chunk.to_vec()), true).await?;
    }
    Ok(from + new.len() as u64)
}
