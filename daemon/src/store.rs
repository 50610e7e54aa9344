//! Store: owns the state directory (`images/`, `kernels/`, `vms/`). Creates it with private
//! permissions at start; later issues add the atomic per-object writes. Takes `Describe` and
//! `Control` from the supervisor.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use actix::prelude::*;
use slog::{Logger, error, info};

use crate::child::{ChildCtx, ChildGuard, Describe};

const SUBDIRS: [&str; 3] = ["images", "kernels", "vms"];

pub struct Store {
    root: PathBuf,
    log: Logger,
    guard: ChildGuard,
}

impl Store {
    pub fn new(cx: ChildCtx) -> Self {
        Store { root: cx.config.layout.state_dir.clone(), log: cx.log, guard: cx.guard }
    }

    fn prepare(&self) -> std::io::Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for sub in SUBDIRS {
            b.create(self.root.join(sub))?;
        }
        Ok(())
    }

    fn free_space(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).ok()?;
        Some(st.blocks_available() * st.fragment_size())
    }
}

impl Actor for Store {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.prepare() {
            error!(self.log, "cannot prepare the state directory"; "dir" => %self.root.display(), "error" => %e);
            self.guard.exiting(format!("cannot prepare {}: {e}", self.root.display()));
            ctx.stop();
            return;
        }
        info!(self.log, "state directory ready"; "dir" => %self.root.display());
        self.guard.started();
    }
}

impl Handler<Describe> for Store {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        let free = self.free_space().map(|b| format!(" ({:.1} GiB free)", b as f64 / (1u64 << 30) as f64));
        Some(format!("{}{}", self.root.display(), free.unwrap_or_default()))
    }
}

crate::handle_control!(Store);
