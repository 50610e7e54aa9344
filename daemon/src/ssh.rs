//! ssh into VMs with no trust on first use. The daemon makes each VM's ed25519 host key at
//! create (the agent installs it in the guest) and keeps, under `<state>/ssh/`:
//!
//! - `id_ed25519` (+ `.pub`): the user's client key, made on first use; the agent puts its
//!   public half in root's `authorized_keys`;
//! - `known_hosts`: one `NAME.banger` line per VM with its host key, so the first connection is
//!   already verified (`StrictHostKeyChecking yes`);
//! - `config`: a `Host NAME.banger` block per VM (through `banger vm proxy`, the agent's
//!   channel: no guest network needed), and `Host NAME.direct.banger` for a VM with an address
//!   (for tools that cannot run a ProxyCommand). `banger ssh-config install` includes it from
//!   `~/.ssh/config`.
//!
//! Both files are rewritten from the VM list whenever it changes: entries appear on create and
//! vanish on rm.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use protocol::vm::{SshInfo, VmInfo};
use protocol::{Error, ErrorKind};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

/// The guest user ssh logs in as.
pub const USER: &str = "root";
/// The host-name suffix of banger's VMs in ssh (`web.banger`).
pub const SUFFIX: &str = ".banger";
/// A VM's host key, in its directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// The files under `<state>/ssh/`, and how the config reaches `banger vm proxy`.
#[derive(Debug, Clone)]
pub struct SshFiles {
    dir: PathBuf,
    /// `"/path/banger" --socket "/path/bangerd.sock"`: the ProxyCommand's start.
    banger: String,
}

impl SshFiles {
    pub fn new(state_dir: &Path, socket: &Path) -> SshFiles {
        // The CLI installed beside bangerd, else the one on PATH.
        let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("banger")));
        let cli = beside.filter(|p| p.is_file()).map_or_else(|| "banger".to_string(), |p| quote(&p));
        SshFiles { dir: state_dir.join("ssh"), banger: format!("{cli} --socket {}", quote(socket)) }
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The client key's public line, made (with its private half, 0600) if there is none.
    pub fn client_public(&self) -> Result<String, Error> {
        let public = self.client_key().with_extension("pub");
        if let Ok(line) = std::fs::read_to_string(&public)
            && self.client_key().is_file()
        {
            return Ok(line.trim().to_string());
        }
        make_dir(&self.dir)?;
        let (private, line) = new_key("banger")?;
        write_private(&self.client_key(), private.as_bytes())?;
        write_file(&public, format!("{line}\n").as_bytes())?;
        Ok(line)
    }

    /// Rewrites `known_hosts` and `config` for these VMs (those with ssh keys).
    pub fn write(&self, vms: &[VmInfo]) -> Result<(), Error> {
        make_dir(&self.dir)?;
        let mut known = String::new();
        let mut config = String::from(
            "# Written by bangerd: one entry per VM (`ssh NAME.banger`), rewritten whenever VMs\n\
             # are created or removed. Do not edit; see `banger ssh-config install`.\n",
        );
        for vm in vms {
            let Some(ssh) = &vm.ssh else { continue };
            let alias = format!("{}{SUFFIX}", vm.name);
            known.push_str(&format!("{alias} {}\n", ssh.host_key));
            config.push_str(&self.block(
                &alias,
                ssh,
                &format!("ProxyCommand {} vm proxy %n 22", self.banger),
            ));
            if let Some(ip) = &vm.spec.ip {
                let direct = format!("{}.direct{SUFFIX}", vm.name);
                config.push_str(
                    &self
                        .block(&direct, ssh, &format!("HostName {ip}"))
                        .replace(&format!("HostKeyAlias {direct}"), &format!("HostKeyAlias {alias}")),
                );
            }
        }
        write_file(&self.known_hosts(), known.as_bytes())?;
        write_file(&self.config(), config.as_bytes())
    }

    fn block(&self, host: &str, ssh: &SshInfo, how: &str) -> String {
        format!(
            "\nHost {host}\n    {how}\n    User {}\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
             UserKnownHostsFile {}\n    HostKeyAlias {host}\n    StrictHostKeyChecking yes\n    \
             ForwardAgent no\n    LogLevel ERROR\n",
            ssh.user,
            quote(&self.client_key()),
            quote(&self.known_hosts()),
        )
    }
}

/// A new ed25519 key: its OpenSSH private-key text and its public line.
pub fn new_key(comment: &str) -> Result<(String, String), Error> {
    let fail = |e: ssh_key::Error| Error::internal(format!("cannot make an ssh key: {e}"));
    let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).map_err(fail)?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(fail)?.to_string();
    let public = key.public_key().to_openssh().map_err(fail)?;
    Ok((private, public))
}

/// Makes a VM's host key in its directory (0600); what the VM's record keeps of it.
pub fn make_host_key(vm_dir: &Path, name: &str) -> Result<SshInfo, Error> {
    let (private, public) = new_key(&format!("{name}{SUFFIX}"))?;
    write_private(&vm_dir.join(HOST_KEY_FILE), private.as_bytes())?;
    Ok(SshInfo { user: USER.into(), host_key: public, server: None })
}

/// A path as one ssh-config argument. Paths with a `"` cannot be quoted there; they are not
/// made by banger.
fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

fn make_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::fsutil::replace_atomic(path, bytes)
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
}

/// A new file only its owner can read (a key); an existing one is replaced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::new(ErrorKind::Internal, format!("cannot write the key {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_are_openssh_ed25519_and_private_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let info = make_host_key(dir.path(), "web").unwrap();
        assert!(info.host_key.starts_with("ssh-ed25519 AAAA"), "{}", info.host_key);
        let file = dir.path().join(HOST_KEY_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = PrivateKey::from_openssh(&text).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), info.host_key);

        let files = SshFiles::new(dir.path(), Path::new("/run/b.sock"));
        let first = files.client_public().unwrap();
        assert_eq!(files.client_public().unwrap(), first, "made once, then kept");
        assert_eq!(std::fs::metadata(files.client_key()).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn config_has_a_proxy_entry_per_vm_and_a_direct_one_with_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let files = SshFiles::new(dir.path(), Path::new("/run/b.sock"));
        let vm = |name: &str, ip: Option<&str>, ssh: bool| {
            let mut info: VmInfo = serde_json::from_value(serde_json::json!({
                "name": name, "state": "Running", "pid": null, "created_at": 0, "started_at": null,
                "last_exit": null,
                "spec": {"cpus": 1, "memory_mib": 256, "disk_bytes": 1, "image": "i", "kernel": "k",
                         "kernel_args": [], "ip": ip, "mac": null},
            }))
            .unwrap();
            let host_key = format!("ssh-ed25519 K{name}");
            info.ssh = ssh.then(|| Box::new(SshInfo { user: "root".into(), host_key, server: None }));
            info
        };
        files
            .write(&[vm("web", Some("10.0.0.2"), true), vm("db", None, true), vm("old", None, false)])
            .unwrap();
        let known = std::fs::read_to_string(files.known_hosts()).unwrap();
        assert_eq!(known, "web.banger ssh-ed25519 Kweb\ndb.banger ssh-ed25519 Kdb\n");
        let config = std::fs::read_to_string(files.config()).unwrap();
        assert!(config.contains("Host web.banger\n    ProxyCommand "), "{config}");
        assert!(config.contains("--socket \"/run/b.sock\" vm proxy %n 22"), "{config}");
        assert!(config.contains("Host web.direct.banger\n    HostName 10.0.0.2\n"), "{config}");
        assert_eq!(
            config.matches("HostKeyAlias web.banger\n").count(),
            2,
            "both ways check one key: {config}"
        );
        assert!(config.contains("Host db.banger") && !config.contains("db.direct"), "{config}");
        assert!(!config.contains("old."), "a VM without keys has no entry: {config}");
        assert_eq!(config.matches("StrictHostKeyChecking yes").count(), 3);
        files.write(&[vm("db", None, true)]).unwrap();
        let config = std::fs::read_to_string(files.config()).unwrap();
        assert!(!config.contains("web."), "a removed VM's entry is gone: {config}");
    }
}
