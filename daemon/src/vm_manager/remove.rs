//! Removing: a VM (`vm rm`), every idle VM (`vm prune`), and the checks that need every VM:
//! an image or kernel in use is kept (`image rm`, `kernel rm`, an image pull's `--replace`),
//! and the host's network is not taken down under a VM that may be running (`system uninstall`).

use actix::prelude::*;
use protocol::Error;
use protocol::vm::VmAction;
use slog::info;

use super::{VmError, VmManager};
use crate::fsutil::blocking;
use crate::image_cache;
use crate::kernels;
use crate::network::RemoveBridge;
use crate::vm::record::Paths;
use crate::vm::{Destroy, Kill};

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveVm {
    pub name: String,
    pub force: bool,
}

/// Remove every VM that is not running; answers with their names.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, Error>")]
pub struct PruneVms;

/// `image rm`: refused while a VM was made from the image, unless `force` (a VM's disk is a
/// clone, so removing its image breaks nothing; still, it is kept unless the user insists).
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveImage {
    pub name: String,
    pub force: bool,
}

/// Asked by the ImageCache before a pull or import with `--replace` swaps an image: the same
/// rule as `image rm` without `--force`, so VMs made from an image keep telling where from.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct MayReplaceImage(pub String);

/// `kernel rm`: refused while a VM boots the kernel.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveKernel(pub String);

/// `system uninstall`: the bridge and its NAT table go, once no VM may be running.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, Error>")]
pub struct Uninstall;

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
            let gone = |_: MailboxError| Error::from(VmError::ActorGone(msg.name.clone()));
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
        Box::pin(
            work.into_actor(self)
                .map(move |done, act, _| {
                    act.busy.remove(&name);
                    if done.is_ok() {
                        act.vms.remove(&name);
                        act.damaged.remove(&name);
                        info!(act.log, "removed"; "vm" => &name);
                    }
                    done
                })
                .then(|done, act, _| act.refreshed(done).into_actor(act)),
        )
    }
}

impl Handler<PruneVms> for VmManager {
    type Result = ResponseFuture<Result<Vec<String>, Error>>;
    fn handle(&mut self, _: PruneVms, ctx: &mut Context<Self>) -> Self::Result {
        let (me, all) = (ctx.address(), self.all());
        Box::pin(async move {
            let mut removed = vec![];
            // Damaged VMs are kept: their disk may hold what the user wants back.
            let idle = all
                .await?
                .into_iter()
                .filter(|v| v.state.allows(VmAction::Remove) && v.state.allows(VmAction::Start));
            for v in idle {
                if matches!(me.send(RemoveVm { name: v.name.clone(), force: false }).await, Ok(Ok(()))) {
                    removed.push(v.name);
                }
            }
            Ok(removed)
        })
    }
}

impl Handler<RemoveImage> for VmManager {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, msg: RemoveImage, _: &mut Context<Self>) -> Self::Result {
        let (all, images) = (self.all(), self.peers.images());
        Box::pin(async move {
            let users: Vec<String> =
                all.await?.into_iter().filter(|v| v.spec.image == msg.name).map(|v| v.name).collect();
            if !msg.force && !users.is_empty() {
                let hint = format!("remove them first, or `banger image rm --force {}`", msg.name);
                return Err(VmError::InUse { what: format!("image {}", msg.name), users, hint }.into());
            }
            images.ask(image_cache::RemoveImage { name: msg.name }).await
        })
    }
}

impl Handler<MayReplaceImage> for VmManager {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, MayReplaceImage(name): MayReplaceImage, _: &mut Context<Self>) -> Self::Result {
        let all = self.all();
        Box::pin(async move {
            let users: Vec<String> =
                all.await?.into_iter().filter(|v| v.spec.image == name).map(|v| v.name).collect();
            if users.is_empty() {
                return Ok(());
            }
            let hint = format!(
                "remove those VMs first, or `banger image rm --force {name}` and then pull or import \
                 again; or give the new image another --name"
            );
            Err(VmError::InUse { what: format!("image {name}"), users, hint }.into())
        })
    }
}

impl Handler<RemoveKernel> for VmManager {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, RemoveKernel(name): RemoveKernel, _: &mut Context<Self>) -> Self::Result {
        let (all, kernels) = (self.all(), self.peers.kernels());
        Box::pin(async move {
            let users: Vec<String> =
                all.await?.into_iter().filter(|v| v.spec.kernel == name).map(|v| v.name).collect();
            if !users.is_empty() {
                let hint = "remove those VMs first: banger vm rm NAME".to_string();
                return Err(VmError::InUse { what: format!("kernel {name}"), users, hint }.into());
            }
            kernels.ask(kernels::RemoveKernel(name)).await
        })
    }
}

impl Handler<Uninstall> for VmManager {
    type Result = ResponseFuture<Result<Vec<String>, Error>>;
    fn handle(&mut self, _: Uninstall, _: &mut Context<Self>) -> Self::Result {
        let (all, network) = (self.all(), self.peers.network());
        Box::pin(async move {
            // Starting and stopping VMs hold taps on the bridge just as running ones do.
            let active: Vec<String> =
                all.await?.into_iter().filter(|v| v.state.is_active()).map(|v| v.name).collect();
            if !active.is_empty() {
                let hint = "stop every VM first: banger vm stop NAME".to_string();
                return Err(VmError::InUse { what: "the host network".into(), users: active, hint }.into());
            }
            let bridge = network.ask(RemoveBridge).await?;
            Ok(vec![format!("bridge {bridge}"), format!("nftables table {bridge}")])
        })
    }
}
