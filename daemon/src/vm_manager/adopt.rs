//! Adoption: every VM on disk gets an actor when the manager starts (each checks whether its
//! VMM still runs), and a VM whose actor died gets a new one. A record that cannot be read is
//! kept aside, and the VM stays listed as `damaged` under its name, disk untouched, until the
//! user removes it: it never vanishes, and its name is never reused over its data.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use protocol::vm::{VmInfo, VmSpec, VmState};
use slog::{info, warn};

use super::{VmGone, VmManager};
use crate::fsutil::{blocking, move_aside};
use crate::network::Claim;
use crate::vm::record::{Paths, Record};

/// A VM found on disk; `damage` says what was wrong with its record.
pub struct Found {
    record: Record,
    damage: Option<String>,
}

/// Every VM directory under `dir`, read on the blocking pool. A directory that cannot be listed
/// is an error: an empty list would pass for "no VMs".
pub async fn load_all(dir: PathBuf) -> Result<Vec<Found>, protocol::Error> {
    blocking(move || {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| protocol::Error::internal(format!("cannot list {}: {e}", dir.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            // Staging directories, and names banger would never have made.
            .filter(|name| crate::vm::validate_name(name).is_ok())
            .map(|name| load(&dir, &name))
            .collect())
    })
    .await
}

/// One VM's record; an unreadable one is moved aside and replaced by a `Damaged` record, so
/// the next daemon finds the same thing.
fn load(dir: &Path, name: &str) -> Found {
    let paths = Paths::new(dir, name);
    let why = match Record::load(&paths) {
        Ok(record) => return Found { record, damage: None },
        Err(e) => e.message,
    };
    let why = match paths.record().exists().then(|| move_aside(&paths.record())) {
        Some(Ok(aside)) => format!("{why} (kept as {})", aside.display()),
        Some(Err(e)) => format!("{why} (and it could not be moved aside: {e})"),
        None => why,
    };
    let record = damaged(name, &paths, why.clone());
    if let Err(e) = record.save(&paths) {
        return Found { record, damage: Some(format!("{why}; {}", e.message)) };
    }
    Found { record, damage: Some(why) }
}

/// What banger still knows of a VM whose record is lost: its name and disk.
fn damaged(name: &str, paths: &Paths, why: String) -> Record {
    let disk_bytes = std::fs::metadata(paths.disk()).map(|m| m.len()).unwrap_or(0);
    let spec = VmSpec {
        cpus: 0,
        memory_mib: 0,
        disk_bytes,
        image: String::new(),
        kernel: String::new(),
        kernel_args: vec![],
        ip: None,
        mac: None,
        vmm: Default::default(),
    };
    let info = VmInfo {
        name: name.to_string(),
        state: VmState::Damaged(why),
        spec,
        pid: None,
        created_at: 0,
        started_at: None,
        last_exit: None,
        agent: None,
        ports: vec![],
        workspace: None,
        ssh: None,
    };
    Record { info, running: None }
}

impl VmManager {
    /// Starts an actor for every VM found; returns the addresses their records hold.
    pub(super) fn adopt_all(&mut self, found: Vec<Found>, ctx: &mut Context<Self>) -> Claim {
        let mut claims = vec![];
        for Found { record, damage } in found {
            let name = record.info.name.clone();
            if self.vms.contains_key(&name) {
                continue;
            }
            if let VmState::Damaged(why) = &record.info.state {
                warn!(self.log, "a VM's record is unreadable; it is listed as damaged"; "vm" => &name, "why" => why);
                self.damaged.insert(name.clone(), damage.unwrap_or_else(|| why.clone()));
            }
            if let Some(ip) = record.info.spec.ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
                claims.push((name, ip));
            }
            self.spawn_actor(record, ctx);
        }
        info!(self.log, "VMs adopted"; "count" => self.vms.len(), "damaged" => self.damaged.len());
        Claim(claims)
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
        let (dir, name) = (self.vms_dir.clone(), msg.name.clone());
        let load = async move {
            let _ = msg.settled.await;
            blocking(move || Ok(load(&dir, &name))).await
        };
        ctx.wait(load.into_actor(self).map(|found, act, ctx| {
            if let Ok(found) = found {
                let _ = act.adopt_all(vec![found], ctx);
            }
        }));
    }
}
