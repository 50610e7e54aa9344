//! Routes VM and kernel requests to the VmManager and KernelStore.

use std::os::fd::OwnedFd;
use std::time::Duration;

use protocol::channel::{Channel, WireError};
use protocol::daemon::{Request, Response};
use protocol::vm::VmState;
use protocol::{Error, ErrorKind};

use super::Deps;
use crate::kernels::{ImportKernel, ListKernels, RemoveKernel};
use crate::network::RemoveBridge;
use crate::supervisor::Lookup;
use crate::vm_manager::{ConsolePath, CreateVm, Lifecycle, ListVms, PruneVms, RemoveVm};

fn reply<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => ok(v),
        Err(e) => Response::Error(e),
    }
}

fn gone(e: actix::MailboxError) -> Error {
    Error::internal(format!("the actor did not answer: {e}"))
}

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
                        kernels
                            .send(ImportKernel { name, source: file, input: std::fs::File::from(fd) })
                            .await
                            .map_err(gone)
                            .and_then(|r| r),
                        Response::Kernel,
                    ),
                    None => Response::Error(Error::new(
                        ErrorKind::InvalidInput,
                        "a kernel import needs the file passed as a descriptor",
                    )),
                },
                Request::KernelList => {
                    reply(kernels.send(ListKernels).await.map_err(gone).and_then(|r| r), Response::Kernels)
                }
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
                        reply(kernels.send(RemoveKernel(name)).await.map_err(gone).and_then(|r| r), |()| {
                            Response::Ok
                        })
                    }
                }
                _ => Response::Error(Error::internal("not a kernel request")),
            }
        }
        _ => {
            let Some(vms) = peers.vms else {
                return chan.send(&Response::Error(restarting("VM manager")), false).await;
            };
            let life = |l: Lifecycle| async { vms.send(l).await.map_err(gone).and_then(|r| r) };
            match request {
                Request::VmCreate(create) => {
                    reply(vms.send(CreateVm(create)).await.map_err(gone).and_then(|r| r), Response::Vm)
                }
                Request::VmStart { name } => reply(life(Lifecycle::Start(name)).await, Response::Vm),
                Request::VmStop { name, timeout_ms } => {
                    reply(life(Lifecycle::Stop(name, Duration::from_millis(timeout_ms))).await, Response::Vm)
                }
                Request::VmKill { name } => reply(life(Lifecycle::Kill(name)).await, Response::Vm),
                Request::VmRestart { name, timeout_ms } => reply(
                    life(Lifecycle::Restart(name, Duration::from_millis(timeout_ms))).await,
                    Response::Vm,
                ),
                Request::VmInspect { name } => reply(life(Lifecycle::Inspect(name)).await, Response::Vm),
                Request::VmRemove { name, force } => {
                    reply(vms.send(RemoveVm { name, force }).await.map_err(gone).and_then(|r| r), |()| {
                        Response::Ok
                    })
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
                            Some(net) => {
                                reply(net.send(RemoveBridge).await.map_err(gone).and_then(|r| r), |bridge| {
                                    Response::Removed(vec![
                                        format!("bridge {bridge}"),
                                        format!("nftables table {bridge}"),
                                    ])
                                })
                            }
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
    let path = match vms.send(ConsolePath(name.clone())).await.map_err(gone).and_then(|r| r) {
        Ok(p) => p,
        Err(e) => return chan.send(&Response::Error(e), false).await,
    };
    let mut sent = 0usize;
    loop {
        let bytes = tokio::fs::read(&path).await.unwrap_or_default();
        if bytes.len() < sent {
            sent = 0; // trimmed under its cap: start again from what is there
        }
        for chunk in bytes[sent..].chunks(32 << 10) {
            chan.send(&Response::Log(chunk.to_vec()), true).await?;
        }
        sent = bytes.len();
        if !follow {
            break;
        }
        let running = vms
            .send(Lifecycle::Inspect(name.clone()))
            .await
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|v| matches!(v.state, VmState::Starting | VmState::Running | VmState::Stopping));
        if !running {
            let tail = tokio::fs::read(&path).await.unwrap_or_default();
            if tail.len() > sent {
                chan.send(&Response::Log(tail[sent..].to_vec()), true).await?;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chan.send(&Response::Ok, false).await
}
