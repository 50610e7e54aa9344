//! Who may use the daemon's socket. The socket's mode is the first gate; this is the second:
//! SO_PEERCRED is checked on every connection, so a socket whose mode was loosened by mistake
//! still serves only its owner, root, and the configured group.

use nix::unistd::{Gid, Uid, User, getgrouplist};
use protocol::{Error, ErrorKind};
use tokio_seqpacket::UCred;

use crate::config::Config;

/// The daemon's own uid and root: admitted without a lookup, and given the reserved seats.
pub fn is_owner(config: &Config, uid: u32) -> bool {
    let uid = Uid::from_raw(uid);
    uid == config.owner || uid.is_root()
}

/// Whether `cred` may use the daemon. Looks users and groups up (NSS), which may block: call it
/// off the runtime's threads.
pub fn admit(config: &Config, cred: &UCred) -> Result<(), Error> {
    if is_owner(config, cred.uid()) {
        return Ok(());
    }
    let uid = Uid::from_raw(cred.uid());
    let user = User::from_uid(uid).ok().flatten();
    if let Some((gid, _)) = &config.group {
        let in_group = Gid::from_raw(cred.gid()) == *gid
            || user.as_ref().is_some_and(|u| {
                std::ffi::CString::new(u.name.as_str())
                    .ok()
                    .and_then(|name| getgrouplist(&name, u.gid).ok())
                    .is_some_and(|groups| groups.contains(gid))
            });
        if in_group {
            return Ok(());
        }
    }
    let who = match &user {
        Some(u) => format!("uid {} ({})", uid, u.name),
        None => format!("uid {uid}"),
    };
    let owner = User::from_uid(config.owner)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| config.owner.to_string());
    let hint = match &config.group {
        Some((_, group)) => format!("ask an administrator to add you to group {group}, then log in again"),
        None => format!("this daemon serves only {owner}; run your own with `banger daemon start`"),
    };
    Err(Error::new(ErrorKind::PermissionDenied, format!("{who} may not use this bangerd (owner: {owner})"))
        .with_hint(hint))
}
