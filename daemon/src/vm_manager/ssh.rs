//! Keeps `<state>/ssh/known_hosts` and `config` in step with the VMs (see `crate::ssh`): asked
//! after every change to which VMs exist or where they are reached.

use actix::prelude::*;
use protocol::Error;
use slog::warn;

use super::VmManager;
use crate::fsutil::blocking;

#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshSsh;

impl Handler<RefreshSsh> for VmManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: RefreshSsh, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.refresh_ssh())
    }
}

impl VmManager {
    /// Rewrites the files for the VMs as they are now; resolves once they are written, so a
    /// create or rm answers with its entry already there or gone.
    pub(super) fn refresh_ssh(&self) -> impl Future<Output = ()> + use<> {
        let (all, files, writing, log) =
            (self.all(), self.ssh.clone(), self.ssh_writing.clone(), self.log.clone());
        async move {
            let _turn = writing.lock().await;
            let written = match all.await {
                Ok(vms) => blocking(move || files.write(&vms)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                warn!(log, "cannot update the ssh files"; "error" => %e.message);
            }
        }
    }

    /// `answer`, once a success has rewritten the files.
    pub(super) fn refreshed<T>(
        &self,
        answer: Result<T, Error>,
    ) -> impl Future<Output = Result<T, Error>> + use<T> {
        let refresh = answer.is_ok().then(|| self.refresh_ssh());
        async move {
            if let Some(refresh) = refresh {
                refresh.await;
            }
            answer
        }
    }
}
