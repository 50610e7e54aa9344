//! `banger vm ssh`, `banger vm proxy` (ssh's ProxyCommand) and `banger ssh-config`. The daemon
//! keeps `<state>/ssh/config` and `known_hosts` current (one `Host NAME.banger` per VM, its host
//! key pinned); these commands only point the system's ssh at them.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::daemon::Request;
use protocol::exec::ExecEvent;
use protocol::vm::{AgentState, VmInfo, VmState};
use protocol::{Error, ErrorKind};
use serde_json::json;

use super::port::PORTS_SINCE;
use crate::args::{Global, SshConfigCommand};
use crate::client::{self, DaemonClient};
use crate::escape::escape;
use crate::output::Output;
use crate::session::Session;

/// How long `vm ssh` waits for a booting VM's ssh server.
const SSH_WAIT: Duration = Duration::from_secs(90);
/// How long `vm proxy` retries a refused port: a service the guest is still starting.
const REFUSED_WAIT: Duration = Duration::from_secs(10);
/// The line before banger's `Include` in `~/.ssh/config`; `uninstall` removes both.
const MARKER: &str =
    "# Added by `banger ssh-config install` (VMs as NAME.banger); `banger ssh-config uninstall` removes it.";

/// The file the daemon keeps current.
fn config_file(global: &Global) -> PathBuf {
    global.layout().state_dir.join("ssh").join("config")
}

/// `banger vm ssh NAME [-- CMD]`: the system ssh, with banger's config, in this process's place.
pub async fn ssh(global: &Global, name: &str, direct: bool, command: Vec<String>) -> Result<i32, Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, PORTS_SINCE, "ssh")?;
    let v = wait_for_ssh(&mut c, &socket, name).await?;
    if direct && v.spec.ip.is_none() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("VM {name} has no network address"))
            .with_hint(format!("drop --direct: `banger vm ssh {name}` goes through the daemon")));
    }
    // A blocking git call is fine here: ssh replaces this process next.
    super::workspace::warn_if_changed(&v);
    let host = if direct { format!("{name}.direct.banger") } else { format!("{name}.banger") };
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F").arg(config_file(global)).arg(&host);
    if !command.is_empty() {
        ssh.arg("--").args(&command);
    }
    let e = ssh.exec();
    Err(Error::new(ErrorKind::NotFound, format!("cannot run ssh: {e}"))
        .with_hint("install OpenSSH's client (Debian: apt-get install openssh-client)"))
}

/// Waits until the VM runs and its guest has started an ssh server.
async fn wait_for_ssh(c: &mut DaemonClient, socket: &Path, name: &str) -> Result<VmInfo, Error> {
    let started = Instant::now();
    loop {
        let v = super::vm::vm(c, socket, Request::VmInspect { name: name.to_string() }).await?;
        if v.state != VmState::Running && v.state != VmState::Starting {
            return Err(Error::new(ErrorKind::Conflict, format!("VM {name} is {}", v.state))
                .with_hint(format!("start it first: banger vm start {name}")));
        }
        let Some(ssh) = &v.ssh else {
            return Err(Error::new(ErrorKind::Conflict, format!("VM {name} was made before banger had ssh"))
                .with_hint("make a new VM: its host key is made at create"));
        };
        if ssh.server.is_some() {
            return Ok(v);
        }
        if let Some(AgentState::Degraded(why)) = &v.agent {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("VM {name}'s agent does not answer: {why}"),
            )
            .with_hint(format!("its console may say why: banger vm logs {name}")));
        }
        if started.elapsed() > SSH_WAIT {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("VM {name} started no ssh server within {} s", SSH_WAIT.as_secs()),
            )
            .with_hint(format!("the daemon's log and `banger vm logs {name}` say why")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `banger vm proxy NAME PORT`: stdin to the guest's port, its bytes to stdout.
pub async fn proxy(global: &Global, name: &str, port: u16) -> Result<i32, Error> {
    let name = name.strip_suffix(".banger").unwrap_or(name);
    let request = Request::VmConnect { name: name.to_string(), port };
    let started = Instant::now();
    // Nothing is read from stdin before the guest accepted: a refused try loses no bytes.
    let mut session = loop {
        let mut session = Session::open(&global.socket(), &request).await?;
        match session.next().await? {
            Some(ExecEvent::Started { .. }) => break session,
            Some(ExecEvent::Failed { message, .. })
                if message.starts_with("connection refused") && started.elapsed() < REFUSED_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(ExecEvent::Failed { code, message }) => {
                eprintln!("banger: {}", escape(&message));
                return Ok(code);
            }
            other => {
                return Err(Error::new(ErrorKind::Protocol, format!("unexpected first event {other:?}")));
            }
        }
    };
    super::exec::read_stdin(session.input());
    let mut stdout = std::io::stdout().lock();
    loop {
        match session.next().await? {
            Some(ExecEvent::Output { data, .. }) => {
                if stdout.write_all(&data).and_then(|()| stdout.flush()).is_err() {
                    return Ok(0);
                }
            }
            Some(ExecEvent::Exited(_)) | None => return Ok(0),
            Some(ExecEvent::Failed { code, message }) => {
                eprintln!("banger: {}", escape(&message));
                return Ok(code);
            }
            Some(ExecEvent::Started { .. }) => {}
        }
    }
}

/// `banger ssh-config install|uninstall|path`.
pub fn config(global: &Global, cmd: SshConfigCommand, out: &Output) -> Result<(), Error> {
    let ours = config_file(global);
    if let SshConfigCommand::Path = cmd {
        if out.json {
            out.json(&json!({ "config": ours }));
        } else {
            println!("{}", ours.display());
        }
        return Ok(());
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).ok_or_else(|| {
        Error::new(ErrorKind::InvalidInput, "HOME is not set").with_hint("set HOME to your home directory")
    })?;
    let user_config = home.join(".ssh").join("config");
    let include = format!("Include \"{}\"", ours.display());
    let changed = match cmd {
        SshConfigCommand::Install => edit(&user_config, |text| installed(text, &include))?,
        _ => edit(&user_config, |text| Some(uninstalled(text)))?,
    };
    if out.json {
        out.json(&json!({ "file": user_config, "include": ours, "changed": changed }));
    } else {
        let what = match (matches!(cmd, SshConfigCommand::Install), changed) {
            (true, true) => "added banger's Include to",
            (true, false) => "banger's Include is already in",
            (false, true) => "removed banger's Include from",
            (false, false) => "banger's Include is not in",
        };
        println!("{what} {}", user_config.display());
    }
    Ok(())
}

/// `text` with banger's block first (ssh takes the first value it finds, and an `Include`
/// inside a `Host` block would apply to that host only); `None` if it is already so.
fn installed(text: &str, include: &str) -> Option<String> {
    let block = format!("{MARKER}\n{include}\n");
    if text.starts_with(&block) {
        return None;
    }
    Some(format!("{block}{}", uninstalled(text)))
}

/// `text` without banger's marker line and the line after it; the rest byte for byte.
fn uninstalled(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skip_next = false;
    for line in text.split_inclusive('\n') {
        if skip_next {
            skip_next = false;
            if line.trim_start().starts_with("Include ") {
                continue;
            }
        }
        if line.trim_end_matches('\n') == MARKER {
            skip_next = true;
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Rewrites `path` (through a symlink, as dotfile managers make) with what `change` returns;
/// whether it changed. A file banger's removal leaves empty is removed.
fn edit(path: &Path, change: impl FnOnce(&str) -> Option<String>) -> Result<bool, Error> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let fail = |what: &str, e: std::io::Error| {
        Error::new(ErrorKind::Internal, format!("cannot {what} {}: {e}", path.display()))
    };
    let (text, mode) = match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::new(ErrorKind::InvalidInput, format!("{} is not UTF-8 text", path.display()))
                    .with_hint("add the Include line by hand: see `banger ssh-config path`")
            })?;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
            (text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(fail("read", e)),
    };
    let Some(new) = change(&text) else { return Ok(false) };
    if new == text {
        return Ok(false);
    }
    if new.is_empty() {
        std::fs::remove_file(&path).map_err(|e| fail("remove", e))?;
        return Ok(true);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(|e| fail("create the folder of", e))?;
    }
    let tmp = dir.join(".config.banger-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(new.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail("write", e)
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const INCLUDE: &str = "Include \"/s/ssh/config\"";

    #[test]
    fn install_puts_the_block_first_once_and_uninstall_restores_every_byte() {
        let before = "Host *\n  ServerAliveInterval 30\n\n# mine\nHost box\n  User me"; // no final newline
        let once = installed(before, INCLUDE).unwrap();
        assert!(once.starts_with(&format!("{MARKER}\n{INCLUDE}\n")), "{once}");
        assert_eq!(installed(&once, INCLUDE), None, "a second install changes nothing");
        assert_eq!(uninstalled(&once), before, "byte for byte");
        // A block moved down (or another state dir's) is replaced, not added twice.
        let moved = format!("{before}\n{MARKER}\n{INCLUDE}\n");
        let again = installed(&moved, "Include \"/t/ssh/config\"").unwrap();
        assert_eq!(again.matches(MARKER).count(), 1, "{again}");
        assert_eq!(installed("", INCLUDE).unwrap(), format!("{MARKER}\n{INCLUDE}\n"));
    }

    #[test]
    fn uninstall_leaves_a_users_own_includes() {
        let text = format!("Include ~/.ssh/work\n{MARKER}\n{INCLUDE}\nHost a\n");
        assert_eq!(uninstalled(&text), "Include ~/.ssh/work\nHost a\n");
    }

    #[test]
    fn edits_keep_the_files_mode_follow_symlinks_and_remove_what_they_made() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-config");
        std::fs::write(&real, "Host a\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join(".ssh/config");
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(edit(&link, |t| installed(t, INCLUDE)).unwrap());
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays");
        assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!edit(&link, |t| installed(t, INCLUDE)).unwrap());
        assert!(edit(&link, |t| Some(uninstalled(t))).unwrap());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "Host a\n");

        let fresh = dir.path().join("new/.ssh/config");
        assert!(edit(&fresh, |t| installed(t, INCLUDE)).unwrap());
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(fresh.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(edit(&fresh, |t| Some(uninstalled(t))).unwrap());
        assert!(!fresh.exists(), "a file only banger wrote goes with its line");
    }
}
