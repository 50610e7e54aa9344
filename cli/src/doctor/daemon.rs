//! The daemon's socket (reachable, its mode and group, this user's membership) and the helper
//! link the daemon reports.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User, getgroups};
use protocol::daemon::{ActorStatus, Request, Response, StatusReport};
use protocol::vm::KernelInfo;
use protocol::{Error, ErrorKind};

use super::Check;
use crate::client;

/// What the daemon said, asked once.
pub struct Answer {
    pub status: Result<StatusReport, Error>,
    pub kernels: Option<Vec<KernelInfo>>,
    /// The bridge its network actor reports.
    pub bridge: Option<String>,
}

/// A daemon that takes longer than this to answer a status is reported as not answering.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn ask(socket: &Path) -> Answer {
    let status = tokio::time::timeout(PATIENCE, async {
        let mut c = client::connect(socket).await?;
        let status = match client::call(&mut c, socket, &Request::Status).await? {
            Response::Status(s) => s,
            other => return Err(client::unexpected(&other)),
        };
        let kernels = match client::call(&mut c, socket, &Request::KernelList).await {
            Ok(Response::Kernels(k)) => Some(k),
            _ => None,
        };
        Ok((status, kernels))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("bangerd on {} did not answer within {PATIENCE:?}", socket.display()),
        )
        .with_hint("see its log, or restart it: `banger daemon restart`"))
    });
    match status {
        Ok((s, kernels)) => {
            let bridge = actor(&s.root, "network")
                .and_then(|a| a.detail.as_deref())
                .and_then(|d| d.split_whitespace().next())
                .map(str::to_string);
            Answer { status: Ok(s), kernels, bridge }
        }
        Err(e) => Answer { status: Err(e), kernels: None, bridge: None },
    }
}

fn actor<'a>(a: &'a ActorStatus, name: &str) -> Option<&'a ActorStatus> {
    if a.name == name {
        return Some(a);
    }
    a.children.iter().find_map(|c| actor(c, name))
}

pub fn check(answer: &Answer, socket: &Path) -> Check {
    let perms = permissions(socket);
    match &answer.status {
        Ok(s) => Check::ok(
            "daemon",
            format!(
                "{} (pid {}, up {} s) on {}{perms}",
                s.version.software,
                s.pid,
                s.uptime_ms / 1000,
                socket.display()
            ),
        ),
        Err(e) => {
            let fix = e.hint.clone().unwrap_or_else(|| "banger daemon start".into());
            Check::fail("daemon", format!("{}{perms}", e.message), fix)
        }
    }
}

/// `, socket 0660 root:banger, you are in banger` — or nothing when there is no socket.
fn permissions(socket: &Path) -> String {
    let Ok(m) = std::fs::symlink_metadata(socket) else {
        return String::new();
    };
    let user = User::from_uid(Uid::from_raw(m.uid())).ok().flatten().map_or(m.uid().to_string(), |u| u.name);
    let group =
        Group::from_gid(Gid::from_raw(m.gid())).ok().flatten().map_or(m.gid().to_string(), |g| g.name);
    let member = Uid::effective().is_root()
        || Uid::effective().as_raw() == m.uid()
        || getgroups().is_ok_and(|gs| gs.contains(&Gid::from_raw(m.gid())))
        || Gid::effective().as_raw() == m.gid();
    let you = if member { "" } else { ", and you are neither its owner nor in its group" };
    format!(" (socket {:04o} {user}:{group}{you})", m.permissions().mode() & 0o7777)
}

pub fn helper(answer: &Answer) -> Check {
    let Ok(s) = &answer.status else {
        return Check::fail(
            "helper",
            "unknown: the daemon is not answering",
            "start the daemon (it starts banger-helper as root): `sudo banger daemon start`",
        );
    };
    let detail = actor(&s.root, "helper").and_then(|a| a.detail.clone()).unwrap_or_default();
    if detail.starts_with("connected") {
        return Check::ok("helper", detail);
    }
    let fix = if Path::new("/etc/systemd/system/banger-helper.service").exists() {
        "sudo systemctl restart banger-helper"
    } else {
        "sudo banger daemon restart"
    };
    let finding = if detail.is_empty() { "the daemon reports no helper link".into() } else { detail };
    Check::fail("helper", format!("{finding} (taps and VMMs need the root helper)"), fix)
}
