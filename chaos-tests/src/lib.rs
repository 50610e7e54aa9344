//! The harness for system tests: find the real binaries, run a daemon in a private state dir,
//! talk to it, and skip (only) where the host lacks a capability.
//!
//! Binaries come from `BANGER_BIN_DIR`, else the cargo target dir these tests were built into.
//! Build them first with `cargo build --workspace --features bangerd/chaos` (the README's test
//! command does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use protocol::channel::{Client, Daemon as DaemonService, Helper};
use protocol::daemon::{Request, Response, StatusReport};

pub use protocol;

pub mod agent;
pub mod bench;
pub mod guests;
pub mod hostile_registry;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod tree;
pub mod vms;

/// Where bangerd, banger-helper and banger are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BANGER_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    if deps.ends_with("deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --features bangerd/chaos`",
        p.display()
    );
    p
}

/// True when the capability is present. When it is not, prints why the test skips — unless
/// `BANGER_REQUIRE` (set by CI) lists the capability, in which case the skip is a failure.
pub fn capable(capability: &str, present: bool, why: &str) -> bool {
    if present {
        return true;
    }
    let required = std::env::var("BANGER_REQUIRE").unwrap_or_default();
    if required.split(',').any(|c| c.trim() == capability) {
        panic!("capability {capability:?} is required here (BANGER_REQUIRE) but missing: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Raises this process's soft limit on open files to its hard limit (tests that open
/// thousands of connections need it) and returns the new limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// Polls `op` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = op().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A `kB` figure of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line"))
}

/// Processes named `comm` whose command line mentions `needle` (a test's state dir), wherever
/// they were reparented to: (pid, command line).
pub fn processes(comm: &str, needle: &str) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Options for a test daemon.
#[derive(Default)]
pub struct DaemonOpts {
    /// Run bangerd as this uid and gid instead of the test's own.
    pub user: Option<(u32, u32)>,
    pub helper_socket: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
}

/// A real bangerd in its own temporary state dir; killed when dropped.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    opts: DaemonOpts,
    child: Child,
}

impl TestDaemon {
    pub async fn start() -> Self {
        Self::start_with(DaemonOpts::default()).await
    }

    pub async fn start_with(opts: DaemonOpts) -> Self {
        let dir = tempfile::Builder::new().prefix("banger-test-").tempdir().expect("temp dir");
        // Other test users must be able to reach the socket path (its own mode still applies).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self::start_in(dir, opts).await
    }

    /// Starts a daemon on an existing state dir (a tmpfs, say).
    pub async fn start_in(dir: tempfile::TempDir, opts: DaemonOpts) -> Self {
        let socket = dir.path().join("run/bangerd.sock");
        let log = dir.path().join("bangerd.log");
        let child = Self::spawn(dir.path(), &socket, &log, &opts);
        let d = TestDaemon { dir, socket, log, opts, child };
        d.wait_ready().await;
        d
    }

    /// SIGKILLs the daemon: no shutdown, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh daemon on the same state dir (after `kill9`, say).
    pub async fn restart(&mut self) {
        self.kill9();
        self.child = Self::spawn(self.dir.path(), &self.socket, &self.log, &self.opts);
        self.wait_ready().await;
    }

    fn spawn(dir: &Path, socket: &Path, log: &Path, opts: &DaemonOpts) -> Child {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut cmd = Command::new(bin("bangerd"));
        // The tiny test kernel boots only under Firecracker; the guest tests ask for QEMU.
        cmd.arg("--state-dir").arg(dir).arg("--socket").arg(socket).args(["--log-format", "json"]);
        cmd.args(["--vmm", "firecracker"]);
        match &opts.helper_socket {
            Some(p) => cmd.arg("--helper-socket").arg(p),
            None => cmd.arg("--no-helper"),
        };
        if let Some((uid, gid)) = opts.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        if !opts.extra_args.iter().any(|a| a == "--agent") {
            cmd.arg("--agent").arg(agent());
        }
        cmd.args(&opts.extra_args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn bangerd")
    }

    pub async fn wait_ready(&self) {
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(15), "bangerd to answer a ping", || {
            let socket = socket.clone();
            async move {
                let mut c = Client::<DaemonService>::connect(&socket, "test").await.ok()?;
                matches!(c.call(&Request::Ping).await, Ok(Response::Pong)).then_some(())
            }
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> Client<DaemonService> {
        Client::connect(&self.socket, "test").await.expect("connect to bangerd")
    }

    pub async fn call(&self, request: &Request) -> Response {
        self.client().await.call(request).await.expect("daemon call")
    }

    pub async fn status(&self) -> StatusReport {
        match self.call(&Request::Status).await {
            Response::Status(s) => s,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    /// Runs the real CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        banger(self.dir.path(), args)
    }

    /// Waits for the process to exit and returns its status (after SIGTERM or Shutdown).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "bangerd did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The image imports and pulls in progress: their staging dirs under `images/`.
    pub fn staging_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("images"))
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".tmp-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `banger --state-dir DIR ARGS…` with colour off.
pub fn banger(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("banger"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("BANGER_SOCKET")
        .env_remove("BANGER_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run banger")
}

/// A real banger-helper (root only) serving `owner`; killed when dropped.
pub struct TestHelper {
    pub socket: PathBuf,
    child: Child,
}

impl TestHelper {
    pub async fn start(socket: &Path, owner: u32) -> Self {
        let state = socket.parent().expect("socket dir").to_path_buf();
        Self::start_in(socket, owner, &state).await
    }

    /// A helper whose state dir (where VM files may come from, and jails go) is `state_dir`.
    pub async fn start_in(socket: &Path, owner: u32, state_dir: &Path) -> Self {
        let child = Command::new(bin("banger-helper"))
            .arg("--socket")
            .arg(socket)
            .args(["--owner-uid", &owner.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn banger-helper");
        let h = TestHelper { socket: socket.to_path_buf(), child };
        let s = socket.to_path_buf();
        wait_until(Duration::from_secs(10), "banger-helper to answer", || {
            let s = s.clone();
            // Up is: it answers, if only to refuse us (it may serve another uid).
            async move {
                match Client::<Helper>::connect(&s, "test").await {
                    Ok(_) | Err(protocol::channel::ClientError::Refused(_)) => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await;
        h
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it the way systemd does (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait for banger-helper")
    }
}

impl Drop for TestHelper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// banger-helper mounts a tmpfs for jails at `<state dir>/jail` and leaves it mounted (running
/// VMs' jails live there); a test unmounts it when it is done with the state dir, so the temp
/// dir can go. Dropped before the `TempDir` it names.
pub struct JailMount(pub PathBuf);

impl Drop for JailMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("jail"), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Creates (once) an unprivileged user for "another uid" tests and returns its uid and gid.
pub fn other_user() -> (u32, u32) {
    const NAME: &str = "banger-test-other";
    if nix::unistd::User::from_name(NAME).ok().flatten().is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME])
            .output()
            .expect("run useradd");
        // Another test may have created it in the meantime (exit 9: already exists).
        assert!(out.status.success() || out.status.code() == Some(9), "useradd failed: {out:?}");
    }
    let u = nix::unistd::User::from_name(NAME).expect("user lookup").expect("user exists");
    (u.uid.as_raw(), u.gid.as_raw())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Hashes every blob in a daemon's cache: each must match its name; no partial may remain.
pub fn verify_blob_cache(state_dir: &Path) -> usize {
    let (verified, partial) = verify_blob_cache_keeping_partials(state_dir);
    assert_eq!(partial, 0, "a partial blob was left in the cache");
    verified
}

/// Like [`verify_blob_cache`], but counts partial downloads (kept to be resumed) instead.
pub fn verify_blob_cache_keeping_partials(state_dir: &Path) -> (usize, usize) {
    let dir = state_dir.join("cache/oci/blobs/sha256");
    let Ok(entries) = std::fs::read_dir(&dir) else { return (0, 0) };
    let (mut n, mut partial) = (0, 0);
    for e in entries {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial") {
            partial += 1;
            continue;
        }
        let digest = oci::sha256(&std::fs::read(e.path()).expect("read blob"));
        assert_eq!(digest, format!("sha256:{name}"), "blob {name} does not match its digest");
        n += 1;
    }
    (n, partial)
}

/// The tiny test kernel (chaos-tests/testkernel), assembled at build time.
pub const TEST_KERNEL: &str = env!("BANGER_TEST_KERNEL");

/// A static executable that exits 0: the guest agent where a test only needs one to exist.
pub const TEST_AGENT: &str = env!("BANGER_TEST_AGENT");

/// The guest agent test daemons get: `BANGER_AGENT` if set, else `banger-agent` beside the
/// binaries when it is statically linked (the real one, once built), else [`TEST_AGENT`].
pub fn agent() -> PathBuf {
    if let Some(path) = std::env::var_os("BANGER_AGENT") {
        return PathBuf::from(path);
    }
    let built = bin_dir().join("banger-agent");
    match std::fs::read(&built) {
        Ok(elf) if is_static_elf(&elf) => built,
        _ => PathBuf::from(TEST_AGENT),
    }
}

/// An x86-64 ELF without a PT_INTERP program header.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = elf.get(0x20..0x28).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let (Some(phoff), Some(size), Some(n)) = (phoff, u16_at(0x36), u16_at(0x38)) else { return false };
    elf.starts_with(b"\x7fELF")
        && (0..n).all(|i| {
            let at = phoff as usize + i * size;
            elf.get(at..at + 4).is_some_and(|t| t != 3u32.to_le_bytes())
        })
}

/// Where Firecracker is, if this host has it and KVM (`scripts/dev setup` installs it).
pub fn firecracker() -> Option<PathBuf> {
    let bin = ["/usr/local/bin/firecracker", "/usr/bin/firecracker"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())?;
    Path::new("/dev/kvm").exists().then_some(bin)
}

/// Deterministic bytes that do not compress (so sizes on the wire are what they look like).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
