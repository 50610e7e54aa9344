//! The system user and group the system daemon runs as: look-up, creation and removal through
//! the host's own tools (`useradd`, `userdel`, `groupdel`, `gpasswd`), so NSS and shadow stay
//! consistent.

use std::process::Command;

use nix::unistd::{Group, User};
use protocol::{Error, ErrorKind};

/// A user and its primary group.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub group: String,
}

pub fn user(name: &str) -> Result<Option<Account>, Error> {
    let Some(u) =
        User::from_name(name).map_err(|e| Error::internal(format!("cannot look up user {name:?}: {e}")))?
    else {
        return Ok(None);
    };
    let group = Group::from_gid(u.gid).ok().flatten().map(|g| g.name).unwrap_or_else(|| u.gid.to_string());
    Ok(Some(Account { name: u.name, uid: u.uid.as_raw(), group }))
}

pub fn group_exists(name: &str) -> bool {
    Group::from_name(name).ok().flatten().is_some()
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        Error::new(ErrorKind::Unavailable, format!("cannot run {program}: {e}"))
            .with_hint("install the shadow tools (package `passwd` on Debian)")
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Internal,
            format!(
                "`{program} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .with_hint("run it by hand as root to see why, then run this banger command again"))
    }
}

/// Creates a system user with a group of its own name, no login shell, home `home` (not made:
/// the state dir is made by the install). Returns the account and whether it was made now.
pub fn ensure_system_user(name: &str, home: &str) -> Result<(Account, bool), Error> {
    if let Some(a) = user(name)? {
        if a.uid == 0 {
            return Err(Error::new(ErrorKind::InvalidInput, format!("user {name:?} is root"))
                .with_hint("the daemon must run unprivileged: pick another name with --user"));
        }
        return Ok((a, false));
    }
    let mut args = vec!["--system", "--home-dir", home, "--no-create-home", "--shell", "/usr/sbin/nologin"];
    // An existing group of that name becomes its primary group; else useradd makes it.
    if group_exists(name) {
        args.extend(["--gid", name]);
    } else {
        args.push("--user-group");
    }
    args.extend(["--comment", "banger daemon", name]);
    run("useradd", &args)?;
    let a = user(name)?.ok_or_else(|| Error::internal(format!("useradd made no user {name:?}")))?;
    Ok((a, true))
}

/// Removes the user and then its group if no other user has it as primary group.
pub fn remove_user(name: &str) -> Result<bool, Error> {
    let Some(a) = user(name)? else { return Ok(false) };
    run("userdel", &[name])?;
    // userdel removes a user-private group itself (USERGROUPS_ENAB); remove one it left.
    if group_exists(&a.group) && a.group == name {
        run("groupdel", &[name])?;
    }
    Ok(true)
}
