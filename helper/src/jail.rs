//! Firecracker through its jailer: a chroot on a tmpfs at `<state>/jail`, the daemon's uid and
//! gid, cgroup limits for CPU and memory, a new PID namespace. The kernel and disk are
//! bind-mounted into the jail before the jailer runs; the console is the descriptor the daemon
//! passed.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};
use protocol::helper::LaunchSpec;
use protocol::{Error, ErrorKind};

use crate::validate;

pub struct Jails {
    pub state_dir: PathBuf,
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
}

impl Jails {
    fn base(&self) -> PathBuf {
        self.state_dir.join("jail")
    }

    fn exec_name(&self) -> String {
        self.firecracker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into())
    }

    /// `<state>/jail/<exec name>/<vm>`: the jailer's own layout.
    fn dir(&self, vm: &str) -> PathBuf {
        self.base().join(self.exec_name()).join(vm)
    }

    /// The cgroup all of this banger's VMs go under. VM names are only unique per state dir,
    /// and cgroups are host-wide, so the parent is named for the state dir.
    fn parent_cgroup(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.state_dir.as_os_str().as_encoded_bytes());
        format!("banger-{}", hex::encode(&digest[..6]))
    }

    pub fn root(&self, vm: &str) -> PathBuf {
        self.dir(vm).join("root")
    }

    pub fn launch(&self, spec: &LaunchSpec, console: Option<OwnedFd>) -> Result<(u32, PathBuf), Error> {
        validate::vm_name(&spec.vm)?;
        let kernel = validate::owned_file(&self.state_dir, &spec.kernel)?;
        let disk = spec.disk.as_deref().map(|d| validate::owned_file(&self.state_dir, d)).transpose()?;
        if !(1..=32).contains(&spec.cpus) || !(16..=1 << 20).contains(&spec.memory_mib) {
            return Err(Error::new(ErrorKind::InvalidInput, "cpus must be 1-32 and memory 16 MiB-1 TiB"));
        }
        if spec
            .config
            .as_ref()
            .is_some_and(|c| c.len() > 64 << 10 || serde_json::from_str::<serde_json::Value>(c).is_err())
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the VM configuration is not JSON of at most 64 KiB",
            ));
        }
        ensure_tmpfs(&self.base())?;
        self.clean(&spec.vm)?;
        // The jail root, made before the jailer runs so Firecracker finds its files at once: the
        // kernel and disk bind-mounted in, its log and metrics files, its configuration.
        let root = self.root(&spec.vm);
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::internal(format!("cannot create the jail: {e}")))?;
        nix::unistd::chown(&root, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::internal(format!("cannot chown the jail: {e}")))?;
        let mut dir = self.base();
        for part in [self.exec_name(), spec.vm.clone()] {
            // The daemon may run as its (unprivileged) owner and must reach the API socket:
            // the directories above the jail root are traversable (0711: no listing).
            let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711));
            dir = dir.join(part);
        }
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711));
        bind_into(&kernel, &root.join(BOUND[0]))?;
        if let Some(disk) = &disk {
            bind_into(disk, &root.join(BOUND[1]))?;
        }
        for name in ["firecracker.log", "metrics.json"] {
            let file = root.join(name);
            std::fs::File::create(&file)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", file.display())))?;
            nix::unistd::chown(&file, Some(self.uid), Some(self.gid))
                .map_err(|e| Error::internal(format!("cannot chown {}: {e}", file.display())))?;
        }
        let (stdout, stderr) = match console {
            Some(fd) => {
                let copy = fd.try_clone().map_err(|e| Error::internal(e.to_string()))?;
                (Stdio::from(fd), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut firecracker_args = vec!["--api-sock".to_string(), "/api.sock".to_string()];
        if let Some(config) = &spec.config {
            let file = root.join("vm.json");
            std::fs::write(&file, config)
                .map_err(|e| Error::internal(format!("cannot write the VM configuration: {e}")))?;
            nix::unistd::chown(&file, Some(self.uid), Some(self.gid))
                .map_err(|e| Error::internal(format!("cannot chown {}: {e}", file.display())))?;
            firecracker_args.extend(["--config-file".into(), "/vm.json".into()]);
        }
        let mut jailer = Command::new(&self.jailer);
        jailer
            .args(["--id", &spec.vm, "--exec-file"])
            .arg(&self.firecracker)
            .args(["--uid", &self.uid.to_string(), "--gid", &self.gid.to_string(), "--chroot-base-dir"])
            .arg(self.base());
        if cgroup_v2() {
            jailer.args(cgroups_v2(spec)).args(["--parent-cgroup", &self.parent_cgroup()]);
        } else {
            self.enter_cgroups_v1(spec, &mut jailer)?;
        }
        let status = jailer
            .args(["--new-pid-ns", "--"])
            .args(&firecracker_args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .map_err(|e| Error::internal(format!("cannot run the jailer: {e}")))?;
        if !status.success() {
            return Err(Error::internal(format!(
                "the jailer failed ({status}); the VM's console log says why"
            )));
        }
        let pid = read_pid(&root)?;
        Ok((pid, root))
    }

    /// SIGKILLs the VM's Firecracker if `pid` is still it (its jail's pid file says so, and it
    /// is a firecracker process); a process that is gone already is fine.
    pub fn kill(&self, vm: &str, pid: u32) -> Result<(), Error> {
        validate::vm_name(vm)?;
        let recorded = read_pid(&self.root(vm)).ok();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if recorded != Some(pid) || comm.trim() != "firecracker" {
            return Ok(());
        }
        match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::internal(format!("cannot kill pid {pid}: {e}"))),
        }
    }

    /// Unmounts the jails' tmpfs when no jail is left in it (a helper stopping with no VM
    /// running), so nothing of banger stays mounted; returns whether it did.
    pub fn unmount_if_idle(&self) -> bool {
        let base = self.base();
        let idle = std::fs::read_dir(base.join(self.exec_name())).map_or(true, |mut d| d.next().is_none());
        idle && is_tmpfs(&base) && nix::mount::umount2(&base, MntFlags::empty()).is_ok()
    }

    /// cgroup v1: makes the VM's cpu and memory cgroups with their limits, and has the jailer's
    /// process join them itself between fork and exec. Why not the jailer's `--cgroup`: it
    /// moves a whole process by writing its pid to `cgroup.procs`, which takes the kernel's
    /// global threadgroup lock and waits out an RCU grace period (5-20 ms per launch on this
    /// kind of host); a lone thread moving itself through `tasks` skips that lock (0.2 ms).
    fn enter_cgroups_v1(&self, spec: &LaunchSpec, jailer: &mut Command) -> Result<(), Error> {
        let (quota, memory) = limits(spec);
        let mut tasks = vec![];
        let dirs = cgroup_dirs(&self.parent_cgroup(), &spec.vm);
        for ((dir, (_, file)), value) in dirs.iter().zip(V1_LIMITS).zip([quota, memory]) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::internal(format!("cannot create the cgroup {}: {e}", dir.display())))?;
            std::fs::write(dir.join(file), value.to_string())
                .map_err(|e| Error::internal(format!("cannot set {file} of {}: {e}", dir.display())))?;
            tasks.push(
                std::ffi::CString::new(dir.join("tasks").into_os_string().into_encoded_bytes())
                    .map_err(|_| Error::internal("a cgroup path holds a NUL byte"))?,
            );
        }
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: open, write and close on paths built before the fork.
        unsafe {
            jailer.pre_exec(move || {
                for path in &tasks {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the calling thread, which is the whole process after fork.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Kills a Firecracker still running in the jail (a launch whose reply was lost), then
    /// removes the jail dir and the cgroups the jailer made; absent is fine.
    pub fn clean(&self, vm: &str) -> Result<(), Error> {
        validate::vm_name(vm)?;
        if let Ok(pid) = read_pid(&self.root(vm)) {
            self.kill(vm, pid)?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while Path::new(&format!("/proc/{pid}/comm")).exists()
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for file in BOUND {
            // Not mounted (or no jail): nothing to do.
            let _ = nix::mount::umount2(&self.root(vm).join(file), MntFlags::MNT_DETACH);
        }
        let dir = self.dir(vm);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::internal(format!("cannot remove {}: {e}", dir.display()))),
        }
        for cgroup in cgroup_dirs(&self.parent_cgroup(), vm) {
            if !cgroup.exists() {
                continue;
            }
            // A cgroup empties a moment after its last process exits; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while cgroup.exists() && std::fs::remove_dir(&cgroup).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            // The state dir's parent goes with its last VM (it fails while others remain).
            if let Some(parent) = cgroup.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The VM's limits: its vCPUs' worth of CPU time, and its memory plus what Firecracker needs
/// of its own.
fn limits(spec: &LaunchSpec) -> (u64, u64) {
    (u64::from(spec.cpus) * 100_000, (u64::from(spec.memory_mib) + 64) << 20)
}

/// cgroup v2: the jailer makes the cgroup and moves itself in.
fn cgroups_v2(spec: &LaunchSpec) -> Vec<String> {
    let (quota, memory) = limits(spec);
    vec![
        "--cgroup-version".into(),
        "2".into(),
        "--cgroup".into(),
        format!("cpu.max={quota} 100000"),
        "--cgroup".into(),
        format!("memory.max={memory}"),
    ]
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// cgroup v1: the controllers a VM is limited by, each with its limit file.
const V1_LIMITS: [(&str, &str); 2] = [("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")];

/// The VM's cgroups: one on v2; on v1 one per controller, in `V1_LIMITS` order.
fn cgroup_dirs(parent: &str, vm: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(CGROUP_ROOT);
    if cgroup_v2() {
        vec![root.join(parent).join(vm)]
    } else {
        V1_LIMITS.iter().map(|(c, _)| root.join(c).join(parent).join(vm)).collect()
    }
}

fn read_pid(root: &Path) -> Result<u32, Error> {
    let file = root.join("firecracker.pid");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::internal(format!("no pid file in the jail: {e}")))?;
    text.trim().parse().map_err(|_| Error::internal(format!("{} does not hold a pid", file.display())))
}

/// The files a jail holds that live outside it, bind-mounted in.
const BOUND: [&str; 2] = ["vmlinux", "disk.ext4"];

/// Bind-mounts the file `from` at `to` (made empty first). `from` was validated by path; it is
/// opened without following a symlink and the mount names that descriptor, so a symlink swapped
/// in since cannot point the jail elsewhere.
fn bind_into(from: &Path, to: &Path) -> Result<(), Error> {
    let fail = |e: String| Error::internal(format!("cannot put {} into the jail: {e}", from.display()));
    let source = nix::fcntl::open(
        from,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(e.to_string()))?;
    std::fs::File::create(to).map_err(|e| fail(e.to_string()))?;
    let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&source));
    nix::mount::mount(Some(via.as_str()), to, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| fail(e.to_string()))
}

fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Mounts a tmpfs of its own at `base` unless it is one already or holds anything (jails from
/// before, on disk, stay where they are). Jails hold only what a running VMM needs: the jailer's
/// copy of Firecracker (2.9 MB per VM), sockets, logs, device nodes. Written to disk for every VM,
/// they kept the host's filesystem busy and every later file operation slowed (the jailer
/// 2.2 → 6.7 ms over a few hundred VMs). It stays mounted across helper restarts, since running
/// VMs' jails live there, until a helper stops with none left (`unmount_if_idle`).
fn ensure_tmpfs(base: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(base)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", base.display())))?;
    let empty = std::fs::read_dir(base).is_ok_and(|mut d| d.next().is_none());
    if is_tmpfs(base) || !empty {
        return Ok(());
    }
    nix::mount::mount(Some("banger-jails"), base, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0711"))
        .map_err(|e| Error::internal(format!("cannot mount a tmpfs at {}: {e}", base.display())))
}
