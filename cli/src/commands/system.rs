//! `banger system install|uninstall`: banger as a system service. The daemon runs as a system
//! user (`banger`), the helper as root; the files written are listed in a manifest so that
//! `uninstall` removes exactly those (and a user only if the install made it).

use std::path::{Path, PathBuf};

use nix::unistd::Uid;
use protocol::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accounts;
use crate::args::{Global, SystemCommand, SystemInstallArgs, SystemUninstallArgs};
use crate::commands::daemon::{find_binary, system_units, systemctl};
use crate::output::Output;
use crate::systemd;

/// Where the manifest goes, relative to the root.
const MANIFEST: &str = "etc/banger/system-install.json";
const STATE_DIR: &str = "var/lib/banger";
const CACHE_DIR: &str = "var/cache/banger";
const UNIT_DIR: &str = "etc/systemd/system";
/// Where the man pages go (`man banger-vm-run` finds them there).
const MAN_DIR: &str = "usr/local/share/man/man1";

/// Completion scripts: where each shell looks for vendor ones installed outside the package
/// manager.
const COMPLETIONS: &[(clap_complete::Shell, &str)] = &[
    (clap_complete::Shell::Bash, "usr/local/share/bash-completion/completions/banger"),
    (clap_complete::Shell::Zsh, "usr/local/share/zsh/site-functions/_banger"),
    (clap_complete::Shell::Fish, "usr/local/share/fish/vendor_completions.d/banger.fish"),
];

/// What an install made, so an uninstall removes that and nothing else.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    user: String,
    /// Whether the install created the user (a user that existed before is left alone).
    created_user: bool,
    /// Files written, relative to the root.
    files: Vec<PathBuf>,
    /// Directories the install made for them (not the state and cache dirs), parents first.
    #[serde(default)]
    dirs: Vec<PathBuf>,
}

/// What one install run wrote, relative to the root.
#[derive(Default)]
struct Written {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Written {
    /// Creates `rel`'s directory and its missing parents, remembering which were missing.
    fn make_dirs(&mut self, root: &Path, rel: &Path) -> Result<(), Error> {
        let mut missing: Vec<PathBuf> = rel
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !root.join(a).exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        self.dirs.extend(missing);
        Ok(())
    }

    fn file(&mut self, root: &Path, rel: &str, text: &[u8]) -> Result<(), Error> {
        let rel = Path::new(rel);
        if let Some(dir) = rel.parent() {
            self.make_dirs(root, dir)?;
        }
        let path = root.join(rel);
        std::fs::write(&path, text).map_err(io("write", &path))?;
        self.files.push(rel.to_path_buf());
        Ok(())
    }

    /// Removes what was written: files, then the directories made for them (when empty).
    fn undo(&self, root: &Path) {
        for rel in &self.files {
            let _ = std::fs::remove_file(root.join(rel));
        }
        for rel in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(root.join(rel));
        }
    }
}

pub async fn run(global: &Global, cmd: SystemCommand, out: &Output) -> Result<(), Error> {
    match cmd {
        SystemCommand::Install(args) => install(&args, out),
        SystemCommand::Uninstall(args) => uninstall(global, &args, out).await,
    }
}

fn need_root(what: &str) -> Result<(), Error> {
    if Uid::effective().is_root() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::PermissionDenied, format!("{what} changes users and system files"))
            .with_hint(format!("run it as root: `sudo banger {what}`")))
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let msg = format!("cannot {what} {}", path.display());
    move |e| Error::internal(format!("{msg}: {e}"))
}

/// A directory owned by the daemon's user, 0750 (its group may read, others nothing).
fn owned_dir(
    root: &Path,
    rel: &str,
    account: &accounts::Account,
    written: &mut Written,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let rel = Path::new(rel);
    if let Some(parent) = rel.parent() {
        written.make_dirs(root, parent)?;
    }
    let path = &root.join(rel);
    std::fs::create_dir_all(path).map_err(io("create", path))?;
    let gid = nix::unistd::Group::from_name(&account.group).ok().flatten().map(|g| g.gid);
    nix::unistd::chown(path, Some(Uid::from_raw(account.uid)), gid)
        .map_err(|e| Error::internal(format!("cannot chown {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o750)).map_err(io("chmod", path))
}

fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut text = vec![];
    clap_complete::generate(shell, &mut crate::args::Cli::command(), "banger", &mut text);
    text
}

fn install(args: &SystemInstallArgs, out: &Output) -> Result<(), Error> {
    need_root("system install")?;
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    // Both binaries are found before anything changes: a missing one changes nothing.
    find_binary("bangerd")?;
    find_binary("banger-helper")?;
    let home = format!("/{STATE_DIR}");
    // An install run again keeps what the first one made (its user, its directories) to remove.
    let earlier: Option<Manifest> =
        std::fs::read(root.join(MANIFEST)).ok().and_then(|t| serde_json::from_slice(&t).ok());
    if let Some(m) = earlier.as_ref().filter(|m| m.user != args.user) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("banger is installed under {} for user {:?}", root.display(), m.user),
        )
        .with_hint("uninstall it first: `sudo banger system uninstall`, then install with the new --user"));
    }
    let (account, created_now) = accounts::ensure_system_user(&args.user, &home)?;
    let created_user = created_now || earlier.as_ref().is_some_and(|m| m.created_user);
    let mut w = Written::default();
    let result = (|| {
        owned_dir(&root, STATE_DIR, &account, &mut w)?;
        owned_dir(&root, CACHE_DIR, &account, &mut w)?;
        for (name, text) in system_units(&account, None)? {
            w.file(&root, &format!("{UNIT_DIR}/{name}"), text.as_bytes())?;
        }
        for (shell, rel) in COMPLETIONS {
            w.file(&root, rel, &completion(*shell))?;
        }
        for (name, page) in crate::docs::man_pages() {
            w.file(&root, &format!("{MAN_DIR}/{name}"), &page)?;
        }
        if let Some(dir) = Path::new(MANIFEST).parent() {
            w.make_dirs(&root, dir)?;
        }
        let mut dirs = earlier.as_ref().map(|m| m.dirs.clone()).unwrap_or_default();
        dirs.extend(w.dirs.iter().cloned());
        let manifest = Manifest { user: account.name.clone(), created_user, files: w.files.clone(), dirs };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::internal(e.to_string()))?;
        let path = root.join(MANIFEST);
        std::fs::write(&path, text).map_err(io("write", &path))
    })();
    if let Err(e) = result {
        // Undo what this run made, so a failed install can simply be run again.
        w.undo(&root);
        if created_now {
            let _ = accounts::remove_user(&account.name);
        }
        return Err(e);
    }
    let files = w.files;
    let units = [systemd::HELPER_UNIT, systemd::DAEMON_UNIT];
    let here = args.root.is_none();
    let enable = here && !args.no_enable && systemd::running();
    if enable {
        systemctl(&[], &["daemon-reload"])?;
        systemctl(&[], &["enable", "--now", units[0], units[1]])?;
    }
    let group = account.group.clone();
    if out.json {
        out.json(&json!({
            "user": account.name, "uid": account.uid, "group": group, "created_user": created_user,
            "root": root, "written": files, "enabled": enable,
        }));
        return Ok(());
    }
    let made = if created_now { "created" } else { "using existing" };
    println!("{made} system user {} (uid {}), group {group}", account.name, account.uid);
    for f in &files {
        println!("wrote {}", root.join(f).display());
    }
    if enable {
        println!("enabled and started {}", units.join(", "));
    } else {
        let why = if !here {
            "the files went under --root"
        } else if args.no_enable {
            "--no-enable"
        } else {
            "systemd is not running here"
        };
        println!(
            "not started ({why}); where systemd runs: `systemctl daemon-reload && systemctl enable --now {} {}`",
            units[0], units[1]
        );
    }
    println!(
        "members of group {group} use banger without sudo: `sudo usermod -aG {group} $USER`, log in again, \
         then `banger --system vm ls` (or set BANGER_SOCKET={})",
        Path::new(protocol::paths::SYSTEM_RUN_DIR).join(protocol::paths::DAEMON_SOCKET).display()
    );
    Ok(())
}

async fn uninstall(global: &Global, args: &SystemUninstallArgs, out: &Output) -> Result<(), Error> {
    // A test's `--state-dir X system uninstall` must never reach the host's system install.
    let own_layout = global.state_dir.is_some() || global.socket.is_some();
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let manifest_path = root.join(MANIFEST);
    let installed = (args.root.is_some() || !own_layout) && manifest_path.exists();
    if !installed {
        if args.root.is_some() || args.purge {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no system install under {} ({} is missing)", root.display(), manifest_path.display()),
            )
            .with_hint("`banger system install` makes one; without one, `banger system uninstall` removes the network only"));
        }
        // What `system uninstall` always did: the daemon removes its bridge and NAT table.
        return crate::commands::vm::system_uninstall(global, out).await;
    }
    need_root("system uninstall")?;
    let text = std::fs::read(&manifest_path).map_err(io("read", &manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        Error::internal(format!("{} is not a banger install manifest: {e}", manifest_path.display()))
            .with_hint("remove the units and the user by hand, then this file")
    })?;
    let here = args.root.is_none();
    let mut removed: Vec<String> = vec![];
    if here {
        removed.extend(remove_network(global).await?);
        let units = [systemd::DAEMON_UNIT, systemd::HELPER_UNIT];
        if systemd::running() {
            systemctl(&[], &["disable", "--now", units[0], units[1]])?;
        } else if !out.json {
            println!(
                "systemd is not running here; where it runs this would be `systemctl disable --now {} {}`",
                units[0], units[1]
            );
        }
    }
    for rel in &manifest.files {
        let path = root.join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
    }
    if here && systemd::running() {
        systemctl(&[], &["daemon-reload"])?;
    }
    if args.purge {
        for rel in [STATE_DIR, CACHE_DIR] {
            let path = root.join(rel);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
                removed.push(path.display().to_string());
            }
        }
    }
    if manifest.created_user && accounts::remove_user(&manifest.user)? {
        removed.push(format!("user {}", manifest.user));
    }
    std::fs::remove_file(&manifest_path).map_err(io("remove", &manifest_path))?;
    // The directories the install made, when nothing else (e.g. bangerd.toml) is in them.
    for rel in manifest.dirs.iter().rev() {
        let _ = std::fs::remove_dir(root.join(rel));
    }
    if out.json {
        out.json(&json!({ "removed": removed, "kept_state": !args.purge }));
        return Ok(());
    }
    for r in &removed {
        println!("removed {r}");
    }
    if !args.purge {
        println!(
            "kept {} (images, VMs, kernels); `banger system uninstall --purge` removes it",
            root.join(STATE_DIR).display()
        );
    }
    Ok(())
}

/// The bridge and NAT table: through the daemon when it answers (it refuses while VMs run),
/// else directly, by the names the system daemon gives them.
async fn remove_network(global: &Global) -> Result<Vec<String>, Error> {
    let socket = global.socket();
    match crate::client::connect(&socket).await {
        Ok(mut c) => {
            use protocol::daemon::{Request, Response};
            return match crate::client::call(&mut c, &socket, &Request::SystemUninstall).await? {
                Response::Removed(what) => Ok(what),
                other => Err(crate::client::unexpected(&other)),
            };
        }
        Err(e) if e.kind == ErrorKind::Unavailable => {}
        Err(e) => return Err(e),
    }
    let bridge = bridge_for(Path::new(protocol::paths::SYSTEM_STATE_DIR));
    let mut removed = vec![];
    if Path::new("/sys/class/net").join(&bridge).exists() {
        run_tool("ip", &["link", "del", &bridge])?;
        removed.push(format!("bridge {bridge}"));
    }
    let listed = std::process::Command::new("nft").args(["list", "table", "ip", &bridge]).output();
    if listed.is_ok_and(|o| o.status.success()) {
        run_tool("nft", &["delete", "table", "ip", &bridge])?;
        removed.push(format!("nftables table {bridge}"));
    }
    Ok(removed)
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), Error> {
    let o = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::internal(format!("cannot run {program}: {e}")))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
        .with_hint("stop every VM first (`banger vm stop NAME`), then run the uninstall again"))
    }
}

/// The bridge (and NAT table) name the daemon gives a state dir: `banger` and 8 hex digits of
/// the path's SHA-256 (the daemon's `config::bridge_for`; its config file may name another).
fn bridge_for(state_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("banger{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_name_matches_the_daemons() {
        // daemon/src/config.rs `bridge_for` of the same path; `printf /var/lib/banger | sha256sum`.
        assert_eq!(bridge_for(Path::new("/var/lib/banger")), "banger36db15ab");
    }
}
