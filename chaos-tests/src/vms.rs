//! A daemon and helper ready to run VMs: a root helper sharing the daemon's state dir, the test
//! kernel imported as `default`, and a tiny image `base`.

use std::path::PathBuf;
use std::process::Output;

use crate::oci::LayerTar;
use crate::{DaemonOpts, TEST_KERNEL, TestDaemon, TestHelper, capable, firecracker, is_root, stderr};

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub struct VmHost {
    pub daemon: TestDaemon,
    pub helper: TestHelper,
    pub bridge: String,
}

/// The bridge and subnet a test daemon runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// A bridge and subnet named for the test (so tests run side by side).
    Own,
    /// The daemon's default bridge (named from its state dir), a subnet of the test's.
    DefaultBridge,
    /// A bridge of the test's, the subnet the daemon picks (and saves).
    DefaultSubnet,
}

/// The bridge bangerd names for a state dir: `banger` + 8 hex digits of sha256(path).
pub fn default_bridge(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("banger{}", hex::encode(&digest[..4]))
}

/// A temporary state dir and its helper socket's path (its `run/` made), both given to
/// `owner` where the daemon runs as someone else.
pub fn state_dir(prefix: &str, owner: Option<(u32, u32)>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
    let socket = dir.path().join("run/helper.sock");
    let run = socket.parent().expect("run dir");
    std::fs::create_dir_all(run).expect("run dir");
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
        for d in [dir.path(), run] {
            nix::unistd::chown(d, Some(uid), Some(gid)).expect("chown");
        }
    }
    (dir, socket)
}

impl VmHost {
    /// `None` (after saying why) where this host cannot run VMs.
    pub async fn start() -> Option<Self> {
        Self::start_as(None).await
    }

    /// With `owner`, bangerd runs as that uid and gid (the helper stays root and serves it).
    pub async fn start_as(owner: Option<(u32, u32)>) -> Option<Self> {
        Self::start_with(owner, Net::Own).await
    }

    /// With `net`, the bridge and subnet the daemon is given.
    pub async fn start_with(owner: Option<(u32, u32)>, net: Net) -> Option<Self> {
        Self::start_full(owner, net, None).await
    }

    /// With `settings` as the daemon's bangerd.toml.
    pub async fn start_configured(settings: &str) -> Option<Self> {
        Self::start_full(None, Net::Own, Some(settings)).await
    }

    async fn start_full(owner: Option<(u32, u32)>, net: Net, settings: Option<&str>) -> Option<Self> {
        if !capable("root", is_root(), "VMs need the root helper") {
            return None;
        }
        if firecracker().is_none() {
            capable(
                "kvm",
                false,
                "firecracker or /dev/kvm is missing (scripts/dev setup installs Firecracker)",
            );
            return None;
        }
        let (dir, socket) = state_dir("banger-vm-test-", owner);
        if let Some(settings) = settings {
            std::fs::write(dir.path().join("bangerd.toml"), settings).expect("write bangerd.toml");
        }
        let helper = TestHelper::start_in(&socket, owner.map_or(0, |o| o.0), dir.path()).await;
        // A bridge and subnet of its own: tests run side by side on one host.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + std::process::id() as usize % 64 * 4;
        let (own_bridge, subnet) = (format!("bangert{:x}", n % 0xffff), format!("10.250.{}.0/24", n % 250));
        let (bridge, extra_args) = match net {
            Net::Own => (own_bridge.clone(), vec!["--bridge".into(), own_bridge, "--subnet".into(), subnet]),
            Net::DefaultBridge => (default_bridge(dir.path()), vec!["--subnet".into(), subnet]),
            Net::DefaultSubnet => (own_bridge.clone(), vec!["--bridge".into(), own_bridge]),
        };
        let opts = DaemonOpts { helper_socket: Some(socket), extra_args, user: owner, ..Default::default() };
        let daemon = TestDaemon::start_in(dir, opts).await;
        let host = VmHost { daemon, helper, bridge };
        host.ok(&["kernel", "import", TEST_KERNEL, "--name", "default"]);
        let rootfs = host.daemon.dir.path().join("rootfs.tar");
        std::fs::write(&rootfs, LayerTar::default().dir("etc").file("etc/hostname", b"test\n").bytes())
            .expect("tar");
        host.ok(&["image", "import", rootfs.to_str().expect("path"), "--name", "base"]);
        Some(host)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.daemon.cli(args)
    }

    /// Runs the CLI and insists it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "banger {}: {}", args.join(" "), stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vm create NAME` from the image `base` with a 96 MiB disk and `args`; the spec line.
    fn create_with(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["vm", "create", name, "--image", "base", "--disk", "96M"];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// Creates a small VM whose test kernel waits for Ctrl-Alt-Del (or resets at once).
    pub fn create(&self, name: &str, mode: &str) {
        let arg = format!("banger.mode={mode}");
        self.create_with(name, &["--no-net", "--cpus", "1", "--memory", "32", "--kernel-arg", &arg]);
    }

    /// Creates a networked VM whose test kernel waits for Ctrl-Alt-Del; returns the spec line.
    pub fn create_networked(&self, name: &str) -> String {
        self.create_with(name, &["--kernel-arg", "banger.mode=wait"])
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", name])).expect("inspect JSON")
    }

    pub fn jail(&self, name: &str) -> PathBuf {
        self.daemon.dir.path().join("jail/firecracker").join(name)
    }

    /// The cgroup the helper puts this state dir's VMs under:
    /// `banger-<first 12 hex of sha256(state dir)>`.
    pub fn cgroup_parent(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.daemon.dir.path().as_os_str().as_encoded_bytes());
        format!("banger-{}", hex::encode(&digest[..6]))
    }

    /// The cgroups left for `name`; with `""`, the state dir's parent cgroups left.
    pub fn cgroups_left(&self, name: &str) -> Vec<PathBuf> {
        let parent = self.cgroup_parent();
        let root = PathBuf::from("/sys/fs/cgroup");
        [root.join(&parent), root.join("cpu").join(&parent), root.join("memory").join(&parent)]
            .into_iter()
            .map(|p| if name.is_empty() { p } else { p.join(name) })
            .filter(|p| p.exists())
            .collect()
    }

    /// The CPU quota (µs per 100 ms) and memory limit (bytes) of the cgroups process `pid` is
    /// in, checking that they are `name`'s (cgroup v1 controllers, or v2).
    pub fn cgroup_limits(&self, name: &str, pid: u64) -> (u64, u64) {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
        let want = format!("/{}/{name}", self.cgroup_parent());
        let path_of = |controller: &str| {
            membership
                .lines()
                .find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                    (ctl.split(',').any(|c| c == controller) || ctl.is_empty()).then(|| path.to_string())
                })
                .unwrap_or_else(|| panic!("no {controller} cgroup in {membership}"))
        };
        let read = |file: PathBuf| std::fs::read_to_string(&file).expect("a cgroup file").trim().to_string();
        let root = PathBuf::from("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            assert_eq!(path_of(""), want);
            let dir = root.join(want.trim_start_matches('/'));
            let cpu = read(dir.join("cpu.max"));
            let quota = cpu.split_whitespace().next().expect("cpu.max").parse().expect("a quota");
            (quota, read(dir.join("memory.max")).parse().expect("a limit"))
        } else {
            assert_eq!(path_of("cpu"), want, "the VMM runs in its cpu cgroup");
            assert_eq!(path_of("memory"), want, "the VMM runs in its memory cgroup");
            let dir = |c: &str| root.join(c).join(want.trim_start_matches('/'));
            (
                read(dir("cpu").join("cpu.cfs_quota_us")).parse().expect("a quota"),
                read(dir("memory").join("memory.limit_in_bytes")).parse().expect("a limit"),
            )
        }
    }
}

/// A failed test must not leave VMs running: kill every VMM this daemon recorded, and every one
/// a jail still names (a VM the daemon gave up on before its clean-up ran).
impl Drop for VmHost {
    fn drop(&mut self) {
        let dir = self.daemon.dir.path();
        let read = |p: PathBuf| std::fs::read(p).ok();
        let records = std::fs::read_dir(dir.join("vms")).into_iter().flatten().flatten();
        let recorded = records.filter_map(|e| {
            let record: serde_json::Value = serde_json::from_slice(&read(e.path().join("vm.json"))?).ok()?;
            record["running"]["pid"].as_i64()
        });
        let jails = std::fs::read_dir(dir.join("jail/firecracker")).into_iter().flatten().flatten();
        let jailed = jails.filter_map(|e| {
            String::from_utf8(read(e.path().join("root/firecracker.pid"))?).ok()?.trim().parse().ok()
        });
        for pid in recorded.chain(jailed) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(crate::JailMount(dir.to_path_buf()));
        // And no bridge or NAT table of its own is left on the host.
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ = std::process::Command::new("nft").args(["delete", "table", "ip", &self.bridge]).output();
    }
}
