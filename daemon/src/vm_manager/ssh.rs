//! Keeps `<state>/ssh/known_hosts` and `config` in step with the VMs (see `crate::ssh`): asked
//! after every change to which VMs exist or where they are reached.

use actix::prelude::*;
use slog::warn;

use super::VmManager;
use crate::fsutil::blocking;

#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshSsh;

impl Handler<RefreshSsh> for VmManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: RefreshSsh, _: &mut Context<Self>) -> Self::Result {
        let (all, files, writing, log) =
            (self.all(), self.ssh.clone(), self.ssh_writing.clone(), self.log.clone());
        Box::pin(async move {
            let _turn = writing.lock().await;
            let written = match all.await {
                Ok(vms) => blocking(move || files.write(&vms)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                warn!(log, "cannot update the ssh files"; "error" => %e.message);
            }
        })
    }
}
