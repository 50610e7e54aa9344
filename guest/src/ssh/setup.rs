//! `AgentRequest::Ssh`: the host's keys go where an SSH server looks for them, and an SSH
//! server listens on port 22: the image's OpenSSH `sshd` when it has one (with a config banger
//! writes), else the agent's built-in server (`banger-agent ssh-server`, see `server.rs`).
//!
//! The server runs as a supervised child of the agent's server process: started again if it
//! dies. The request comes after every `Ready`, so a server this process already supervises
//! is left alone (a changed host key restarts it); one left by an earlier agent server process
//! (it died; PID 1 started another) is replaced by a supervised one.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::Error;
use protocol::agent::{AgentEvent, SshSetup};
use protocol::exec::ExecSpec;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use crate::exec::lock;
use crate::outbox::Outbox;
use crate::reaper::Reaper;
use crate::spawn::{ChildStdio, Prepared};

/// OpenSSH's server, where Debian and most images put it.
pub const SSHD: &str = "usr/sbin/sshd";
pub const HOST_KEY: &str = "etc/ssh/ssh_host_ed25519_key";
/// Where banger's own files live in the guest (a tmpfs: gone at the next boot, as they should).
const RUN_DIR: &str = "run/banger";
const PID_FILE: &str = "run/banger/ssh-server.pid";

const MAX_HOST_KEY: usize = 16 * 1024;
const MAX_KEYS: usize = 256;
const MAX_KEY_LINE: usize = 16 * 1024;
/// How long a new server has to listen before the request fails.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// The SSH side of an agent: where its files go and the server it supervises.
pub struct Ssh {
    /// `/` in a guest; a scratch directory when the agent runs as a host process in tests.
    pub root: PathBuf,
    pub port: u16,
    pub reaper: Arc<Reaper>,
    /// In a guest: children get their priority and OOM score reset.
    pub guest: bool,
    running: Mutex<Option<Arc<Supervised>>>,
}

/// Which server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    OpenSsh(PathBuf),
    BuiltIn,
}

impl Kind {
    /// What `AgentEvent::Ssh` says.
    fn describe(&self) -> String {
        match self {
            Kind::OpenSsh(_) => format!("openssh /{SSHD}"),
            Kind::BuiltIn => "banger-agent".into(),
        }
    }
}

/// A server under supervision.
struct Supervised {
    kind: Kind,
    /// The host key it was started with.
    host_key: String,
    pid: AtomicI32,
    /// Set when it is told to stop for good.
    stopped: AtomicBool,
    /// How many times it has been started.
    starts: AtomicI32,
}

impl Ssh {
    pub fn new(root: PathBuf, port: u16, reaper: Arc<Reaper>, guest: bool) -> Ssh {
        Ssh { root, port, reaper, guest, running: Mutex::new(None) }
    }

    /// Answers the request from a thread of its own: a server may take a moment to listen,
    /// and the session's reader must not wait for it.
    pub fn request(self: &Arc<Self>, outbox: &Outbox, setup: SshSetup) {
        let (ssh, out) = (self.clone(), outbox.clone());
        let spawned = std::thread::Builder::new().name("ssh-setup".into()).spawn(move || {
            let event = match ssh.set_up(&setup) {
                Ok(server) => AgentEvent::Ssh { server },
                Err(message) => AgentEvent::Error {
                    id: None,
                    error: Error::new(protocol::ErrorKind::InvalidInput, message),
                },
            };
            out.send(&event);
        });
        if let Err(e) = spawned {
            outbox.send(&AgentEvent::Error {
                id: None,
                error: Error::new(protocol::ErrorKind::Internal, format!("cannot start a thread: {e}")),
            });
        }
    }

    /// Installs the keys and makes sure a server listens; returns which.
    pub fn set_up(&self, setup: &SshSetup) -> Result<String, String> {
        let public = check(setup)?;
        // One request at a time: two at once would start two servers.
        let mut running = lock(&self.running);
        install(&self.root, setup, &public)?;
        let run = self.root.join(RUN_DIR);
        std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
        if let Some(current) = running.as_ref() {
            // Its supervisor keeps it running (authorized_keys is read at every login).
            if current.host_key == setup.host_key {
                return Ok(current.kind.describe());
            }
            // A new host key: the server must read it again.
            stop(current);
            *running = None;
        } else {
            self.stop_orphan();
        }
        if let Some(holder) = self.port_taken() {
            return Err(format!(
                "port {} in the guest is taken by {holder}, which banger did not start: stop it \
                 (banger vm exec … kill), then restart the VM's agent link (banger vm stop/start)",
                self.port
            ));
        }
        let kind = if is_executable(&self.root.join(SSHD)) {
            write_sshd_config(&self.root, self.port)?;
            Kind::OpenSsh(self.root.join(SSHD))
        } else {
            Kind::BuiltIn
        };
        let supervised = Arc::new(Supervised {
            kind: kind.clone(),
            host_key: setup.host_key.clone(),
            pid: AtomicI32::new(0),
            stopped: AtomicBool::new(false),
            starts: AtomicI32::new(0),
        });
        self.supervise(supervised.clone())?;
        *running = Some(supervised.clone());
        drop(running);
        self.wait_listening(&supervised)?;
        Ok(kind.describe())
    }

    /// The argv of the server to run.
    fn command(&self, kind: &Kind) -> Vec<String> {
        match kind {
            Kind::OpenSsh(sshd) => vec![
                sshd.display().to_string(),
                "-D".into(),
                "-e".into(),
                "-f".into(),
                self.root.join(RUN_DIR).join("sshd_config").display().to_string(),
            ],
            Kind::BuiltIn => vec![
                // The agent's own binary, even once the initramfs it came from is gone.
                "/proc/self/exe".into(),
                "ssh-server".into(),
                "--port".into(),
                self.port.to_string(),
                "--host-key".into(),
                self.root.join(HOST_KEY).display().to_string(),
                "--authorized-keys".into(),
                authorized_keys_path(&self.root).display().to_string(),
            ],
        }
    }

    /// Starts the server and a thread that starts it again whenever it exits.
    fn supervise(&self, s: Arc<Supervised>) -> Result<(), String> {
        let (tx, rx) = channel();
        self.start(&s, &tx)?;
        let this = Supervisor {
            argv: self.command(&s.kind),
            reaper: self.reaper.clone(),
            guest: self.guest,
            pid_file: self.root.join(PID_FILE),
        };
        let spawned =
            std::thread::Builder::new().name("ssh-supervisor".into()).spawn(move || this.watch(&s, &rx, &tx));
        spawned.map(drop).map_err(|e| format!("cannot start the SSH server's supervisor thread: {e}"))
    }

    fn start(&self, s: &Supervised, tx: &std::sync::mpsc::Sender<()>) -> Result<(), String> {
        let sup = Supervisor {
            argv: self.command(&s.kind),
            reaper: self.reaper.clone(),
            guest: self.guest,
            pid_file: self.root.join(PID_FILE),
        };
        sup.start(s, tx)
    }

    /// A server an earlier agent server process left running (no longer ours to supervise):
    /// stopped, so that a supervised one can take the port.
    fn stop_orphan(&self) {
        let pid_file = self.root.join(PID_FILE);
        let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return;
        };
        let _ = std::fs::remove_file(&pid_file);
        if pid <= 1 || !is_ssh_server(pid) {
            return;
        }
        crate::log!("stopping the SSH server (pid {pid}) an earlier agent left running");
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while running(pid.as_raw()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(pid, Signal::SIGKILL);
        // Its main thread may be gone while others still hold the listening socket: the port
        // itself tells when it is free.
        while (running(pid.as_raw()) || self.port_taken().is_some())
            && Instant::now() < deadline + Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Who accepts connections on the port, if anyone does.
    fn port_taken(&self) -> Option<String> {
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        Some("another process".into())
    }

    /// Waits until the port accepts connections, or the server keeps dying.
    fn wait_listening(&self, s: &Supervised) -> Result<(), String> {
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + LISTEN_DEADLINE;
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if s.starts.load(Ordering::Relaxed) > 2 || Instant::now() > deadline {
                return Err(format!(
                    "the SSH server ({}) does not listen on port {}: it exited {} times; its \
                     complaints are on the VM's console (banger vm logs)",
                    s.kind.describe(),
                    self.port,
                    s.starts.load(Ordering::Relaxed),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What the supervisor thread needs.
struct Supervisor {
    argv: Vec<String>,
    reaper: Arc<Reaper>,
    guest: bool,
    pid_file: PathBuf,
}

impl Supervisor {
    fn start(&self, s: &Supervised, tx: &std::sync::mpsc::Sender<()>) -> Result<(), String> {
        let spec = ExecSpec {
            argv: self.argv.clone(),
            env: vec![format!("PATH={}", crate::spawn::DEFAULT_PATH)],
            cwd: None,
            user: None,
            tty: None,
            stdin: false,
        };
        let prepared = Prepared::new(&spec, None, self.guest).map_err(|e| e.message)?;
        let stdio = console_stdio().map_err(|e| format!("cannot open the SSH server's output: {e}"))?;
        let tx = tx.clone();
        let on_exit: crate::reaper::OnExit = Box::new(move |status| {
            crate::log!("the SSH server ended ({status})");
            let _ = tx.send(());
        });
        let pid = prepared.spawn(&self.reaper, stdio, on_exit).map_err(|e| {
            format!(
                "cannot start the SSH server {}: {}",
                self.argv.first().map_or("", String::as_str),
                e.message
            )
        })?;
        s.pid.store(pid.as_raw(), Ordering::Relaxed);
        s.starts.fetch_add(1, Ordering::Relaxed);
        let _ = std::fs::write(&self.pid_file, format!("{pid}\n"));
        Ok(())
    }

    /// Starts the server again each time it exits, backing off while it keeps failing.
    fn watch(&self, s: &Supervised, exits: &Receiver<()>, tx: &std::sync::mpsc::Sender<()>) {
        let mut backoff = Duration::from_millis(100);
        let mut started = Instant::now();
        while exits.recv().is_ok() {
            s.pid.store(0, Ordering::Relaxed);
            if s.stopped.load(Ordering::Relaxed) {
                return;
            }
            // A server that ran for a while gets restarted at once; one that dies at once, slower.
            backoff = if started.elapsed() > Duration::from_secs(30) {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(10))
            };
            std::thread::sleep(backoff);
            if s.stopped.load(Ordering::Relaxed) {
                return;
            }
            started = Instant::now();
            while let Err(e) = self.start(s, tx) {
                crate::log!("{e}; trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Stops a supervised server for good and waits (briefly) for it to go.
fn stop(s: &Supervised) {
    s.stopped.store(true, Ordering::Relaxed);
    let pid = s.pid.load(Ordering::Relaxed);
    if pid <= 0 {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.pid.load(Ordering::Relaxed) == pid && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if s.pid.load(Ordering::Relaxed) == pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// stdin from /dev/null, stdout and stderr to the agent's own stderr (the console in a guest).
fn console_stdio() -> std::io::Result<ChildStdio> {
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let err = std::io::stderr();
    let out = std::os::fd::AsFd::as_fd(&err).try_clone_to_owned()?;
    let err = out.try_clone()?;
    Ok(ChildStdio::Pipes { stdin: null, stdout: out, stderr: err })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `pid` has not finished exiting (a zombie has closed its sockets; one still
/// exiting may not have yet).
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Whether `pid` is an SSH server banger starts (not a pid reused by something else).
fn is_ssh_server(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned());
    let first = args.next().unwrap_or_default();
    let second = args.next().unwrap_or_default();
    first.ends_with("sshd") || second == "ssh-server" || first.starts_with("sshd:")
}

/// Checks the request; returns the host key's public half (an `authorized_keys`-style line).
pub fn check(setup: &SshSetup) -> Result<String, String> {
    if setup.host_key.len() > MAX_HOST_KEY {
        return Err(format!(
            "the ssh host key is {} bytes, more than {MAX_HOST_KEY}: send an ed25519 key (ssh-keygen -t ed25519)",
            setup.host_key.len()
        ));
    }
    let key = PrivateKey::from_openssh(setup.host_key.as_bytes()).map_err(|e| {
        format!("the ssh host key is not an OpenSSH private key ({e}): make one with ssh-keygen -t ed25519")
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!(
            "the ssh host key is {}, not ed25519: make one with ssh-keygen -t ed25519",
            key.algorithm()
        ));
    }
    if key.is_encrypted() {
        return Err(
            "the ssh host key is encrypted: the server needs it without a passphrase (ssh-keygen -N '')"
                .into(),
        );
    }
    if setup.authorized_keys.len() > MAX_KEYS {
        return Err(format!("{} authorized keys is more than {MAX_KEYS}", setup.authorized_keys.len()));
    }
    for (n, line) in setup.authorized_keys.iter().enumerate() {
        let n = n + 1;
        if line.len() > MAX_KEY_LINE || line.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "authorized key {n} is not one line of at most {MAX_KEY_LINE} bytes: send \"ssh-ed25519 AAAA… comment\""
            ));
        }
        PublicKey::from_openssh(line.trim()).map_err(|e| {
            format!(
                "authorized key {n} is not an OpenSSH public key ({e}): send \"ssh-ed25519 AAAA… comment\""
            )
        })?;
    }
    key.public_key().to_openssh().map_err(|e| format!("cannot write the host key's public half: {e}"))
}

/// root's `~/.ssh/authorized_keys` (home from the guest's /etc/passwd).
pub fn authorized_keys_path(root: &Path) -> PathBuf {
    let home = crate::users::find(root, |p| p.uid == 0).map_or_else(|| "/root".to_string(), |p| p.home);
    let home = if home.is_empty() || home == "/" { "/root".to_string() } else { home };
    root.join(home.trim_start_matches('/')).join(".ssh/authorized_keys")
}

/// Writes the host key (and its .pub) and root's authorized_keys.
fn install(root: &Path, setup: &SshSetup, public: &str) -> Result<(), String> {
    let host_key = root.join(HOST_KEY);
    let etc_ssh = host_key.parent().unwrap_or(root);
    real_dir(etc_ssh, 0o755, None)?;
    let mut key = setup.host_key.clone();
    if !key.ends_with('\n') {
        key.push('\n');
    }
    write_file(&host_key, key.as_bytes(), 0o600, None)?;
    write_file(&host_key.with_extension("pub"), format!("{public}\n").as_bytes(), 0o644, None)?;

    let root_user = crate::users::find(root, |p| p.uid == 0);
    let owner = root_user.as_ref().map_or((0, 0), |p| (p.uid, p.gid));
    let keys = authorized_keys_path(root);
    let ssh_dir = keys.parent().unwrap_or(root);
    if let Some(home) = ssh_dir.parent()
        && !home.exists()
    {
        real_dir(home, 0o700, Some(owner))?;
    }
    real_dir(ssh_dir, 0o700, Some(owner))?;
    let mut text = String::new();
    for line in &setup.authorized_keys {
        text.push_str(line.trim());
        text.push('\n');
    }
    write_file(&keys, text.as_bytes(), 0o600, Some(owner))
}

/// Makes `dir` a real directory (a symlink the image put there is replaced: files written
/// through it could land anywhere), with `mode` and `owner` when given.
fn real_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            crate::log!("{shown} is not a directory ({:?}): replacing it", m.file_type());
            std::fs::remove_file(dir).map_err(|e| format!("cannot remove {shown}: {e}"))?;
            create_dir(dir, mode)?;
        }
        Err(_) => create_dir(dir, mode)?,
    }
    if let Some((uid, gid)) = owner {
        let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{shown}: {e}"))?;
        if m.uid() != uid || m.gid() != gid {
            nix::unistd::chown(dir, Some(uid.into()), Some(gid.into()))
                .map_err(|e| format!("cannot give {shown} to uid {uid}: {e}"))?;
        }
        // sshd refuses keys under a directory others can write to.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
    }
    Ok(())
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Replaces `path` with a new file (written beside it, then renamed: never through a symlink,
/// and never half-written).
fn write_file(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    let shown = path.display();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.banger-new"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    let done = (|| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        // The umask may have taken bits off; the mode is exact.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {shown}: {e}"));
    }
    Ok(())
}

/// The config banger runs the image's sshd with: only the host key banger gave it, keys only.
fn sshd_config(root: &Path, port: u16) -> String {
    let host_key = root.join(HOST_KEY);
    format!(
        "# Written by banger-agent at every start of the VM's agent link; edits are lost.\n\
         Port {port}\n\
         HostKey {}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         UsePAM no\n\
         PrintMotd no\n\
         AcceptEnv LANG LC_* TERM\n\
         Subsystem sftp internal-sftp\n",
        host_key.display()
    )
}

fn write_sshd_config(root: &Path, port: u16) -> Result<(), String> {
    let run = root.join(RUN_DIR);
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    // sshd's privilege separation directory (Debian's unit makes it; there is no unit here).
    let privsep = root.join("run/sshd");
    std::fs::create_dir_all(&privsep).map_err(|e| format!("cannot create {}: {e}", privsep.display()))?;
    let _ = std::fs::set_permissions(&privsep, std::fs::Permissions::from_mode(0o755));
    write_file(&run.join("sshd_config"), sshd_config(root, port).as_bytes(), 0o644, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A real ed25519 key (ssh-keygen -t ed25519 -N '' -C test), made for these tests only.
    pub const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCCfVUdPtTcn50hACy9F3QuJyeMkWFe4dhE3RFrplsGSAAAAJDCQU5dwkFO
XQAAAAtzc2gtZWQyNTUxOQAAACCCfVUdPtTcn50hACy9F3QuJyeMkWFe4dhE3RFrplsGSA
AAAEBId+U5NNFmkTwqltSlWwtMHDtY3M36XrQTIWD/J+Mw34J9VR0+1NyfnSEALL0XdC4n
J4yRYV7h2ETdEWumWwZIAAAAB3Rlc3RrZXkBAgMEBQY=
-----END OPENSSH PRIVATE KEY-----
";
    const PUBLIC: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKlBEBG7PruFA4LQcbwKDiK/Qg2GiAMnbdwviGRRNDqK user@host";

    fn setup() -> SshSetup {
        SshSetup { host_key: KEY.into(), authorized_keys: vec![PUBLIC.into()] }
    }

    #[test]
    fn a_good_request_passes_and_bad_ones_say_what_to_send() {
        let public = check(&setup()).unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIJ9VR0"), "{public}");

        let mut s = setup();
        s.host_key = "hello".into();
        assert!(check(&s).unwrap_err().contains("ssh-keygen -t ed25519"));
        s.host_key = "x".repeat(MAX_HOST_KEY + 1);
        assert!(check(&s).unwrap_err().contains("more than"));
        let mut s = setup();
        s.authorized_keys = vec![format!("{PUBLIC}\ncommand=\"evil\" {PUBLIC}")];
        assert!(check(&s).unwrap_err().contains("not one line"));
        s.authorized_keys = vec!["ssh-ed25519 notbase64".into()];
        assert!(check(&s).unwrap_err().contains("authorized key 1 is not an OpenSSH public key"));
        s.authorized_keys = vec![PUBLIC.into(); MAX_KEYS + 1];
        assert!(check(&s).unwrap_err().contains("more than"));
    }

    #[test]
    fn files_land_with_their_modes_and_symlinks_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::create_dir_all(r.join("home/boss")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/home/boss:/bin/sh\n").unwrap();
        // The image planted links: to a file outside, and a .ssh that points elsewhere.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "untouched").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), r.join(HOST_KEY)).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("home/boss/.ssh")).unwrap();

        let s = setup();
        install(r, &s, &check(&s).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(outside.path().join("victim")).unwrap(), "untouched");
        assert!(!outside.path().join("authorized_keys").exists());
        let key = std::fs::symlink_metadata(r.join(HOST_KEY)).unwrap();
        assert!(key.is_file());
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(r.join(HOST_KEY)).unwrap(), KEY);
        let public = std::fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA") && public.ends_with('\n'));
        let dir = std::fs::symlink_metadata(r.join("home/boss/.ssh")).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        let keys = r.join("home/boss/.ssh/authorized_keys");
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{PUBLIC}\n"));
        // Again: replaced in place, nothing left over.
        install(r, &s, &check(&s).unwrap()).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(r.join("etc/ssh")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn without_a_passwd_entry_root_lives_in_slash_root() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(authorized_keys_path(root.path()), root.path().join("root/.ssh/authorized_keys"));
    }

    #[test]
    fn the_sshd_config_allows_keys_only_with_banger_s_host_key() {
        let config = sshd_config(Path::new("/"), 22);
        for line in [
            "Port 22",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AllowAgentForwarding no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
        ] {
            assert!(config.lines().any(|l| l == line), "{line} in\n{config}");
        }
        assert_eq!(config.matches("HostKey").count(), 1, "no other host key");
    }
}
