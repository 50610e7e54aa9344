//! A daemon and helper ready to boot real Linux guests through QEMU: the distro kernel imported
//! as `default` (with its generated initrd: modules and banger-agent as /init), and a small
//! image `busybox` made here from the host's static busybox, so a guest has a shell, `cat`,
//! `stty`, `tar` and friends without a registry.
//!
//! What the host needs (capability `qemu`): `/usr/bin/qemu-system-x86_64`, a static busybox
//! (Debian's busybox-static), the kernel to import named by `BANGER_GUEST_KERNEL` (what
//! `banger kernel import` takes: Debian's cloud kernel package), root for the helper, and
//! banger-agent beside bangerd.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::oci::{Entry, LayerTar};
use crate::vms::VmHost;
use crate::{DaemonOpts, TestDaemon, TestHelper, capable, is_root, stderr};

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The commands the `busybox` image links to busybox.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "sleep",
    "stty",
    "true",
    "false",
    "id",
    "pwd",
    "stat",
    "wc",
    "kill",
    "tar",
    "ls",
    "env",
    "head",
    "mkdir",
    "chmod",
    "chown",
    "touch",
    "ln",
    "readlink",
    "sha256sum",
    "dd",
    "rm",
    "test",
    "nc",
];

/// The `/etc/os-release` of the `busybox` image, which `vm run busybox -- cat /etc/os-release`
/// must print.
pub const OS_RELEASE: &str = "PRETTY_NAME=\"banger test guest\"\nNAME=\"banger-test\"\nID=bangertest\n";

/// The host's static busybox, if it has one.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"].map(PathBuf::from).into_iter().find(|p| {
        // A dynamic one would need the host's libc in the image.
        p.is_file() && std::fs::read(p).is_ok_and(|elf| !elf.windows(16).any(|w| w == b"/lib64/ld-linux-"))
    })
}

/// The kernel to import as `default`: `BANGER_GUEST_KERNEL`.
pub fn guest_kernel() -> Option<PathBuf> {
    std::env::var_os("BANGER_GUEST_KERNEL").map(PathBuf::from).filter(|p| p.is_file())
}

/// The Debian 12 root filesystem with OpenSSH's server and git that `scripts/dev debian-image`
/// makes: `BANGER_DEBIAN_IMAGE` (capability `debian`).
pub fn debian_image() -> Option<PathBuf> {
    let tar = std::env::var_os("BANGER_DEBIAN_IMAGE").map(PathBuf::from).filter(|p| p.is_file());
    let why = "BANGER_DEBIAN_IMAGE does not name the Debian image tar (scripts/dev debian-image makes it)";
    capable("debian", tar.is_some(), why).then_some(tar).flatten()
}

/// The busybox root filesystem as a flat tar: a shell and the usual commands, root and an
/// unprivileged `app` user (1000), and an `/etc/os-release` of its own.
pub fn busybox_rootfs(busybox: &Path) -> LayerTar {
    let binary = std::fs::read(busybox).expect("read busybox");
    let mut tar = LayerTar::default();
    for d in ["bin", "etc", "root", "proc", "sys", "dev", "run", "srv", "home", "var", "usr", "usr/bin"] {
        tar = tar.dir(d);
    }
    tar = tar
        .entry(Entry { mode: 0o1777, ..Entry::new("tmp", tar::EntryType::Directory) })
        .entry(Entry {
            mode: 0o755,
            uid: 1000,
            gid: 1000,
            ..Entry::new("home/app", tar::EntryType::Directory)
        })
        .entry(Entry { mode: 0o755, data: &binary, ..Entry::new("bin/busybox", tar::EntryType::Regular) })
        .file("etc/os-release", OS_RELEASE.as_bytes())
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        .file("etc/group", b"root:x:0:\napp:x:1000:\n");
    for a in APPLETS {
        tar = tar.symlink(&format!("bin/{a}"), "busybox");
    }
    tar
}

pub struct GuestHost {
    pub host: VmHost,
}

impl GuestHost {
    /// `None` (after saying why) where this host cannot boot a real guest.
    pub async fn start() -> Option<Self> {
        Self::start_as(None).await
    }

    /// With `owner`, bangerd runs as that uid and gid, and so do its VMMs.
    pub async fn start_as(owner: Option<(u32, u32)>) -> Option<Self> {
        if !capable("root", is_root(), "VMs need the root helper") {
            return None;
        }
        let qemu = Path::new(QEMU).is_file();
        let (busybox, kernel) = (busybox(), guest_kernel());
        let why = if !qemu {
            format!("{QEMU} is missing (apt-get install qemu-system-x86)")
        } else if busybox.is_none() {
            "no static busybox for the test image (apt-get install busybox-static)".into()
        } else {
            "BANGER_GUEST_KERNEL does not name the kernel to import (scripts/dev fetches Debian's cloud kernel)"
                .into()
        };
        let (Some(busybox), Some(kernel), true) = (busybox, kernel, qemu) else {
            capable("qemu", false, &why);
            return None;
        };
        let (dir, socket) = crate::vms::state_dir("banger-guest-test-", owner);
        let helper = TestHelper::start_in(&socket, owner.map_or(0, |o| o.0), dir.path()).await;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + std::process::id() as usize % 64 * 4;
        let (bridge, subnet) = (format!("bangerg{:x}", n % 0xffff), format!("10.251.{}.0/24", n % 250));
        let extra_args = vec!["--bridge".into(), bridge.clone(), "--subnet".into(), subnet];
        let opts = DaemonOpts { helper_socket: Some(socket), extra_args, user: owner, ..Default::default() };
        let daemon = TestDaemon::start_in(dir, opts).await;
        let guests = GuestHost { host: VmHost { daemon, helper, bridge } };
        guests.ok(&["kernel", "import", kernel.to_str().expect("kernel path"), "--name", "default"]);
        let rootfs = guests.host.daemon.dir.path().join("busybox.tar");
        std::fs::write(&rootfs, busybox_rootfs(&busybox).bytes()).expect("write the rootfs tar");
        guests.ok(&["image", "import", rootfs.to_str().expect("path"), "--name", "busybox"]);
        Some(guests)
    }

    /// Imports the Debian image (sshd, git) as `debian`; `None` (after saying why) without it.
    pub fn import_debian(&self) -> Option<()> {
        let tar = debian_image()?;
        self.ok(&["image", "import", tar.to_str().expect("path"), "--name", "debian"]);
        Some(())
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.host.cli(args)
    }

    /// Runs the CLI and insists it succeeds; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.host.ok(args)
    }

    /// The options every test VM is made with: QEMU, one vCPU, enough memory for a distro
    /// kernel, no network (the tests that need one say so).
    pub const VM: [&'static str; 7] = ["--vmm", "qemu", "--cpus", "1", "--memory", "256", "--no-net"];

    /// `vm run -d` of the busybox image as `name`: a running VM whose agent is ready.
    pub fn run_detached(&self, name: &str) {
        let mut args = vec!["vm", "run", "-d", "--name", name];
        args.extend(Self::VM);
        args.push("busybox");
        let out = self.cli(&args);
        assert!(out.status.success(), "vm run -d: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name, "-d prints the VM's name");
    }

    /// A `banger` command for this daemon, for tests that spawn it themselves (ptys, signals).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::bin("banger"));
        cmd.arg("--state-dir")
            .arg(self.host.daemon.dir.path())
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("BANGER_SOCKET")
            .env_remove("BANGER_STATE_DIR");
        cmd
    }
}
