//! Firecracker through its jailer: a chroot on a tmpfs at `<state>/jail`, the daemon's uid and
//! gid, cgroup limits for CPU and memory, a new PID namespace. The kernel and disk are
//! bind-mounted into the jail before the jailer runs; the console is the descriptor the daemon
//! passed.
//!
//! Every file here is reached through descriptors (`beneath`): the state dir is opened without
//! following a symlink, and everything below it with `RESOLVE_NO_SYMLINKS`. The jail is built by
//! root, with root as its owner, and handed to the VM's uid only once it is complete. The VMM is
//! held by pidfd (`process`), and the operations on one VM run one at a time, so a clean-up can
//! never run beside the launch it undoes.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use protocol::helper::LaunchSpec;
use protocol::{Error, ErrorKind};

use crate::beneath::{Dir, explain, fd_path};
use crate::process::{NotOurs, Vmm};
use crate::{qemu, validate};

/// One VM's slot: held while an operation on that VM runs, with its VMM once launched.
type Slot = Arc<Mutex<Option<Vmm>>>;

pub struct Jails {
    pub state_dir: PathBuf,
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub qemu: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
    /// Firecracker's file name: the jailer's directory for it, and the VMM's command.
    exec_name: String,
    /// The cgroup all of this banger's VMs go under. VM names are only unique per state dir,
    /// and cgroups are host-wide, so it is named for the state dir.
    parent_cgroup: String,
    vms: Mutex<HashMap<String, Slot>>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// A refusal: something in the state dir is not what banger made.
fn refused(what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::PermissionDenied, format!("refusing {what}: {why}"))
}

/// Which VMM a jail holds. Each has its own directory of jails: the jailer's is named for
/// Firecracker's file, QEMU's is `qemu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Firecracker,
    Qemu,
}

const KINDS: [Kind; 2] = [Kind::Firecracker, Kind::Qemu];

/// How long a clean-up waits for a killed VMM to be gone before it gives up (and keeps the jail).
const EXIT_WAIT: Duration = Duration::from_secs(5);

impl Jails {
    pub fn new(
        state_dir: PathBuf,
        (firecracker, jailer, qemu): (PathBuf, PathBuf, PathBuf),
        uid: Uid,
        gid: Gid,
    ) -> Jails {
        use sha2::Digest;
        let exec_name = firecracker
            .file_name()
            .map_or_else(|| "firecracker".into(), |n| n.to_string_lossy().into_owned());
        let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
        let parent_cgroup = format!("banger-{}", hex::encode(&digest[..6]));
        Jails {
            state_dir,
            firecracker,
            jailer,
            qemu,
            uid,
            gid,
            exec_name,
            parent_cgroup,
            vms: Mutex::new(HashMap::new()),
        }
    }

    /// `<state>/jail/<kind's dir>/<vm>/root`, where the jailer puts it (for the daemon's paths).
    fn root(&self, kind: Kind, vm: &str) -> PathBuf {
        self.state_dir.join("jail").join(self.dir_name(kind)).join(vm).join("root")
    }

    /// The directory of a kind's jails: the jailer names it for Firecracker's file.
    fn dir_name(&self, kind: Kind) -> &str {
        match kind {
            Kind::Firecracker => &self.exec_name,
            Kind::Qemu => "qemu",
        }
    }

    /// The VMM's program file name, whose first 15 bytes are its command.
    fn program(&self, kind: Kind) -> String {
        match kind {
            Kind::Firecracker => self.exec_name.clone(),
            Kind::Qemu => {
                self.qemu.file_name().map_or_else(|| "qemu".into(), |n| n.to_string_lossy().into_owned())
            }
        }
    }

    /// The state dir, opened for this request without following a symlink. Opened afresh each
    /// time: it may be made after the helper starts and removed by `system uninstall --purge`.
    /// It must belong to the owner or root.
    pub fn state(&self) -> Result<Dir, Error> {
        let shown = self.state_dir.display();
        let dir =
            Dir::open(&self.state_dir).map_err(|e| refused(&format!("the state dir {shown}"), explain(e)))?;
        let st = dir.stat().map_err(|e| internal("cannot stat the state dir", e))?;
        if st.st_uid != self.uid.as_raw() && st.st_uid != 0 {
            return Err(refused(
                &format!("the state dir {shown}"),
                format!("it belongs to uid {}", st.st_uid),
            ));
        }
        Ok(dir)
    }

    /// The VM's slot, locked: operations on one VM wait for each other.
    fn slot(&self, vm: &str) -> Slot {
        let mut vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        vms.entry(vm.to_string()).or_default().clone()
    }

    /// `<state>/jail`: the helper's tmpfs (mounted here on first use), owned by root.
    fn jail_base(&self, state: &Dir) -> Result<Dir, Error> {
        let what = format!("{}/jail", self.state_dir.display());
        let base = state.make_dir("jail", 0o711).map_err(|e| refused(&what, explain(e)))?;
        if self.is_jail_mount(state, &base)? {
            return Ok(base);
        }
        if !base.entries().map_err(|e| internal(&what, e))?.is_empty() {
            return Err(refused(&what, "it holds files but is not banger's tmpfs; remove it"));
        }
        // Mounted through the descriptor, so the mount lands on the directory just checked.
        nix::mount::mount(
            Some("banger-jails"),
            fd_path(base.fd()).as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=0711"),
        )
        .map_err(|e| internal(&format!("cannot mount a tmpfs at {what}"), e))?;
        // The descriptor names the directory under the mount; look again to get the tmpfs, and
        // check it is (the owner may have renamed the directory away meanwhile).
        let base = state.dir(Path::new("jail")).map_err(|e| refused(&what, explain(e)))?;
        if !self.is_jail_mount(state, &base)? {
            return Err(refused(&what, "it changed while the helper mounted its tmpfs"));
        }
        // Private: the jails' mounts do not spread to other mount namespaces.
        let private = MsFlags::MS_PRIVATE;
        nix::mount::mount(None::<&str>, fd_path(base.fd()).as_str(), None::<&str>, private, None::<&str>)
            .map_err(|e| internal(&format!("cannot make {what} private"), e))?;
        Ok(base)
    }

    /// Whether `base` is the root of a root-owned tmpfs mounted on the state dir's `jail`: a
    /// tmpfs by itself proves nothing (the state dir may be on one).
    fn is_jail_mount(&self, state: &Dir, base: &Dir) -> Result<bool, Error> {
        let what = format!("{}/jail", self.state_dir.display());
        let fs = nix::sys::statfs::fstatfs(base.fd()).map_err(|e| internal(&what, e))?;
        let st = base.stat().map_err(|e| internal(&what, e))?;
        let parent = state.stat().map_err(|e| internal(&what, e))?;
        let mounted = fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC && st.st_dev != parent.st_dev;
        if mounted && st.st_uid != 0 {
            return Err(refused(&what, "it is a tmpfs that root did not mount"));
        }
        Ok(mounted)
    }

    /// `<jail>/<kind's dir>/<vm>` as a directory, for the kind whose jail the VM has, if any.
    fn vm_dir(&self, base: &Dir, vm: &str) -> Result<Option<(Kind, Dir)>, Error> {
        for kind in KINDS {
            match base.dir(&Path::new(self.dir_name(kind)).join(vm)) {
                Ok(d) => return Ok(Some((kind, d))),
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(refused(&format!("the jail of {vm}"), explain(e))),
            }
        }
        Ok(None)
    }

    pub fn launch(&self, spec: &LaunchSpec, console: Option<OwnedFd>) -> Result<(u32, PathBuf), Error> {
        validate::vm_name(&spec.vm)?;
        if !(1..=32).contains(&spec.cpus) || !(16..=1 << 20).contains(&spec.memory_mib) {
            return Err(Error::new(ErrorKind::InvalidInput, "cpus must be 1-32 and memory 16 MiB-1 TiB"));
        }
        if let Some(q) = &spec.qemu {
            qemu::validate(q)?;
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
        let state = self.state()?;
        let file = |path: &str| validate::owned_file(&state, &self.state_dir, self.uid, path);
        let files = VmFiles {
            kernel: file(&spec.kernel)?,
            initrd: spec.initrd.as_deref().map(file).transpose()?,
            disk: spec.disk.as_deref().map(file).transpose()?,
        };
        let slot = self.slot(&spec.vm);
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        let base = self.jail_base(&state)?;
        self.clean_locked(&base, &spec.vm, &mut held)?;
        let (kind, run) = match &spec.qemu {
            Some(q) => (Kind::Qemu, self.run_qemu(&base, spec, q, &files, console)),
            None => (Kind::Firecracker, self.build_and_run(&base, spec, &files, console)),
        };
        match run {
            Ok(vmm) => {
                let pid = vmm.pid;
                *held = Some(vmm);
                Ok((pid, self.root(kind, &spec.vm)))
            }
            Err(e) => {
                // A launch that fails leaves nothing: no jail, no mount, no process.
                if let Err(undo) = self.clean_locked(&base, &spec.vm, &mut held) {
                    return Err(Error::internal(format!(
                        "{}; and cleaning up after it failed: {}",
                        e.message, undo.message
                    )));
                }
                Err(e)
            }
        }
    }

    /// The VM's jail, `<jail>/<kind's dir>/<vm>/root`, built by root with root as owner, so
    /// nothing can be planted in it while it is built: the VM's files bound in (the kernel as
    /// `kernel_name`). Directories above the root are traversable (0711, no listing): the
    /// daemon, as its owner, reaches the VMM's sockets through them.
    fn new_jail(
        &self,
        base: &Dir,
        kind: Kind,
        vm: &str,
        files: &VmFiles,
        kernel_name: &str,
    ) -> Result<Dir, Error> {
        let fail = |e: Errno| internal(&format!("cannot build the jail of {vm}"), explain(e));
        let exec = base.make_dir(self.dir_name(kind), 0o711).map_err(fail)?;
        let vm_dir = exec.new_dir(vm, 0o711).map_err(fail)?;
        // QEMU's uid reads its way in; the jailer opens Firecracker's root itself.
        let root_mode = if kind == Kind::Qemu { 0o755 } else { 0o700 };
        let root = vm_dir.new_dir("root", root_mode).map_err(fail)?;
        for (dir, mode) in [(&exec, 0o711), (&vm_dir, 0o711), (&root, root_mode)] {
            nix::sys::stat::fchmod(dir.fd(), Mode::from_bits_truncate(mode)).map_err(fail)?;
        }
        bind_into(&files.kernel, &root, kernel_name)?;
        if let Some(initrd) = &files.initrd {
            bind_into(initrd, &root, qemu::INITRD)?;
        }
        if let Some(disk) = &files.disk {
            bind_into(disk, &root, qemu::DISK)?;
        }
        Ok(root)
    }

    /// Builds the VM's jail and runs the jailer in it: the VMM, held by pidfd.
    fn build_and_run(
        &self,
        base: &Dir,
        spec: &LaunchSpec,
        files: &VmFiles,
        console: Option<OwnedFd>,
    ) -> Result<Vmm, Error> {
        let fail = |e: Errno| internal(&format!("cannot build the jail of {}", spec.vm), explain(e));
        // Firecracker's log and metrics files and its configuration go in too.
        let root = self.new_jail(base, Kind::Firecracker, &spec.vm, files, BOUND[0])?;
        for name in ["firecracker.log", "metrics.json"] {
            let file = root.create(name, 0o600).map_err(fail)?;
            nix::unistd::fchown(file.as_fd(), Some(self.uid), Some(self.gid)).map_err(fail)?;
        }
        let mut firecracker_args = vec!["--api-sock".to_string(), "/api.sock".to_string()];
        if let Some(config) = &spec.config {
            let mut file = root.create("vm.json", 0o600).map_err(fail)?;
            file.write_all(config.as_bytes())
                .map_err(|e| internal("cannot write the VM configuration", e))?;
            nix::unistd::fchown(file.as_fd(), Some(self.uid), Some(self.gid)).map_err(fail)?;
            firecracker_args.extend(["--config-file".into(), "/vm.json".into()]);
        }
        // The root stays root's: the jailer copies Firecracker into it by path, as root, and
        // gives it to the VM's uid itself once it has pivoted into it.
        let (stdout, stderr) = console_stdio(console)?;
        let mut jailer = Command::new(&self.jailer);
        jailer
            .args(["--id", &spec.vm, "--exec-file"])
            .arg(&self.firecracker)
            .args(["--uid", &self.uid.to_string(), "--gid", &self.gid.to_string(), "--chroot-base-dir"])
            .arg(self.state_dir.join("jail"));
        if cgroup_v2() {
            jailer.args(cgroups_v2(spec)).args(["--parent-cgroup", &self.parent_cgroup]);
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
            .map_err(|e| internal("cannot run the jailer", e))?;
        if !status.success() {
            return Err(Error::internal(format!(
                "the jailer failed ({status}); the VM's console log says why"
            )));
        }
        let pid = read_pid(&root, Kind::Firecracker)?;
        let vmm = Vmm::launched(pid, &self.exec_name).map_err(|e| match e {
            NotOurs::Gone => Error::internal(format!(
                "Firecracker of {} exited at once; its console log says why",
                spec.vm
            )),
            NotOurs::Other(why) => refused(&format!("the pid file of {}", spec.vm), why),
        })?;
        self.confine(&vmm, &spec.vm);
        Ok(vmm)
    }

    /// Puts the VMM in its VM's cgroups if it is not in them. Under load (two helpers busy at
    /// once) a VMM was seen now and then in the root cgroup although its jailer had joined the
    /// VM's, and once even after it was moved back: so this is best effort, said in the log;
    /// the VMM is held by its pidfd either way.
    fn confine(&self, vmm: &Vmm, vm: &str) {
        let cgroup = self.cgroup_of(vm);
        if vmm.exited() || Vmm::in_cgroup(vmm.pid, &cgroup).is_ok() {
            return;
        }
        for dir in cgroup_dirs(&self.parent_cgroup, vm) {
            let _ = std::fs::write(dir.join("cgroup.procs"), vmm.pid.to_string());
        }
        if Vmm::in_cgroup(vmm.pid, &cgroup).is_err() && !vmm.exited() {
            eprintln!(
                "banger-helper[{}]: pid {} of {vm} is not in its cgroup {cgroup}",
                std::process::id(),
                vmm.pid
            );
        }
    }

    /// The VM's cgroup as `/proc/PID/cgroup` names it: root-made, so only what the helper
    /// launched for this VM is in it.
    fn cgroup_of(&self, vm: &str) -> String {
        format!("/{}/{vm}", self.parent_cgroup)
    }

    /// SIGKILLs the VM's Firecracker: the one this helper launched, or, after a helper restart,
    /// the process `pid` once it is shown to live in the VM's jail. A process that is gone already
    /// is fine; a live `pid` that is not the VM's VMM is refused, and nothing is killed.
    pub fn kill(&self, vm: &str, pid: u32) -> Result<(), Error> {
        validate::vm_name(vm)?;
        let slot = self.slot(vm);
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        let base = self.existing_base(&self.state()?)?;
        match self.find(base.as_ref(), vm, &mut held, pid)? {
            Some(vmm) => vmm.kill().map_err(|e| internal(&format!("cannot kill pid {pid}"), e)),
            None => Ok(()),
        }
    }

    /// The VM's running VMM, taken by pidfd: the held one, or `pid` (the jail's pid file where no
    /// `pid` is given) verified against the jail. None when it is gone.
    fn find<'a>(
        &self,
        base: Option<&Dir>,
        vm: &str,
        held: &'a mut Option<Vmm>,
        pid: u32,
    ) -> Result<Option<&'a Vmm>, Error> {
        if let Some(v) = held.as_ref() {
            if v.exited() {
                v.reap();
                let same = v.pid == pid;
                *held = None;
                if same {
                    return Ok(None);
                }
            } else if pid != 0 && v.pid != pid {
                let why = format!("VM {vm}'s Firecracker is pid {}", v.pid);
                return Err(refused(&format!("to kill pid {pid}"), why));
            }
        }
        if held.is_none() {
            *held = self.adopt(base, vm, pid)?;
        }
        Ok(held.as_ref())
    }

    /// A VMM this helper holds no pidfd of (it restarted since the launch): `pid`, or the one the
    /// jail's pid file names where no `pid` is given, once shown to live in the VM's jail. None
    /// when there is none, or it is gone.
    fn adopt(&self, base: Option<&Dir>, vm: &str, pid: u32) -> Result<Option<Vmm>, Error> {
        let dir = match base {
            Some(base) => self.vm_dir(base, vm)?,
            None => None,
        };
        let Some((kind, dir)) = dir else {
            if pid != 0 && Path::new(&format!("/proc/{pid}")).exists() {
                let why = format!("VM {vm} has no jail, so pid {pid} is not its VMM");
                return Err(refused(&format!("to kill pid {pid}"), why));
            }
            return Ok(None);
        };
        let root = match dir.dir(Path::new("root")) {
            Ok(r) => r,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(refused(&format!("the jail of {vm}"), explain(e))),
        };
        let pid = match pid {
            0 => match read_pid(&root, kind) {
                Ok(p) => p,
                Err(_) => return Ok(None),
            },
            pid => pid,
        };
        let jail_root = root.stat().map_err(|e| internal("cannot stat the jail", e))?;
        match Vmm::verify(pid, &jail_root, &self.program(kind)) {
            Ok(v) => Ok(Some(v)),
            Err(NotOurs::Gone) => Ok(None),
            Err(NotOurs::Other(why)) => Err(refused(&format!("to kill pid {pid} for VM {vm}"), why)),
        }
    }

    /// Unmounts the jails' tmpfs when no jail is left in it (a helper stopping with no VM
    /// running), so nothing of banger stays mounted; returns whether it did.
    pub fn unmount_if_idle(&self) -> bool {
        let Ok(state) = self.state() else { return false };
        let Ok(Some(base)) = self.existing_base(&state) else { return false };
        let idle = KINDS.iter().all(|&k| {
            base.dir(Path::new(self.dir_name(k))).map_or(true, |d| d.entries().is_ok_and(|e| e.is_empty()))
        });
        idle && nix::mount::umount2(fd_path(base.fd()).as_str(), MntFlags::MNT_DETACH).is_ok()
    }

    /// cgroup v1: makes the VM's cpu and memory cgroups with their limits, and has the jailer's
    /// process join them itself between fork and exec. Why not the jailer's `--cgroup`: it
    /// moves a whole process by writing its pid to `cgroup.procs`, which takes the kernel's
    /// global threadgroup lock and waits out an RCU grace period (5-20 ms per launch on this
    /// kind of host); a lone thread moving itself through `tasks` skips that lock (0.2 ms).
    fn enter_cgroups_v1(&self, spec: &LaunchSpec, jailer: &mut Command) -> Result<(), Error> {
        let tasks = self.make_cgroups(spec)?;
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

    /// Makes the VM's cgroups with their limits; returns the files a process writes "0" to, to
    /// join them (v1: `tasks`; v2: `cgroup.procs`, with the controllers enabled on the way).
    fn make_cgroups(&self, spec: &LaunchSpec) -> Result<Vec<std::ffi::CString>, Error> {
        let (quota, memory) = limits(spec);
        let fail = |what: &str, dir: &Path, e: std::io::Error| {
            Error::internal(format!("cannot {what} the cgroup {}: {e}", dir.display()))
        };
        let mut joins = vec![];
        let dirs = cgroup_dirs(&self.parent_cgroup, &spec.vm);
        type Settings<'a> = Vec<(PathBuf, Vec<(&'a str, String)>, &'a str)>;
        let settings: Settings = if cgroup_v2() {
            let root = Path::new(CGROUP_ROOT);
            for dir in [root, &root.join(&self.parent_cgroup)] {
                std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
                std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory")
                    .map_err(|e| fail("enable controllers in", dir, e))?;
            }
            let limits = vec![("cpu.max", format!("{quota} 100000")), ("memory.max", memory.to_string())];
            dirs.into_iter().map(|d| (d, limits.clone(), "cgroup.procs")).collect()
        } else {
            let values = V1_LIMITS.iter().zip([quota, memory]).map(|((_, f), v)| vec![(*f, v.to_string())]);
            dirs.into_iter().zip(values).map(|(d, l)| (d, l, "tasks")).collect()
        };
        for (dir, limits, join) in settings {
            std::fs::create_dir_all(&dir).map_err(|e| fail("create", &dir, e))?;
            for (file, value) in limits {
                std::fs::write(dir.join(file), value)
                    .map_err(|e| fail(&format!("set {file} of"), &dir, e))?;
            }
            joins.push(
                std::ffi::CString::new(dir.join(join).into_os_string().into_encoded_bytes())
                    .map_err(|_| Error::internal("a cgroup path holds a NUL byte"))?,
            );
        }
        Ok(joins)
    }

    /// Builds the VM's QEMU jail and starts QEMU chrooted in it (see `qemu`). The root is
    /// root's and read-only to the VM's uid; only `run/` (its sockets) is the uid's.
    fn run_qemu(
        &self,
        base: &Dir,
        spec: &LaunchSpec,
        q: &protocol::helper::QemuSpec,
        files: &VmFiles,
        console: Option<OwnedFd>,
    ) -> Result<Vmm, Error> {
        let fail = |e: Errno| internal(&format!("cannot build the jail of {}", spec.vm), explain(e));
        let root = self.new_jail(base, Kind::Qemu, &spec.vm, files, qemu::KERNEL)?;
        for dir in ["etc", "dev"] {
            // Made under the helper's tight umask: opened up so QEMU's uid can reach inside.
            let made = root.new_dir(dir, 0o755).map_err(fail)?;
            nix::sys::stat::fchmod(made.fd(), Mode::from_bits_truncate(0o755)).map_err(fail)?;
        }
        for (host, inside, is_dir) in qemu::LENT {
            lend(&root, host, inside, is_dir)?;
        }
        for (link, target) in qemu::LINKS {
            nix::unistd::symlinkat(target, root.fd(), link).map_err(fail)?;
        }
        if q.kvm {
            // A node of its own, owned by the VM's uid (which has no kvm group in the jail).
            let dev = root.dir(Path::new("dev")).map_err(fail)?;
            let kvm = nix::sys::stat::makedev(10, 232);
            nix::sys::stat::mknodat(dev.fd(), "kvm", SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), kvm)
                .map_err(fail)?;
            let no_follow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
            nix::unistd::fchownat(dev.fd(), "kvm", Some(self.uid), Some(self.gid), no_follow)
                .map_err(fail)?;
        }
        let run = root.new_dir(qemu::RUN, 0o700).map_err(fail)?;
        nix::unistd::fchown(run.fd(), Some(self.uid), Some(self.gid)).map_err(fail)?;
        let tap = match q.tap {
            Some(_) => {
                Some(qemu::passable(&qemu::open_tap(&crate::net::tap_name(&self.state_dir, &spec.vm))?)?)
            }
            None => None,
        };
        let (stdout, stderr) = console_stdio(console)?;
        let mut command = Command::new(&self.qemu);
        command
            .args(qemu::args(spec, q, tap.is_some()))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        use std::os::fd::AsRawFd;
        qemu::Confinement::new(
            root.fd().as_raw_fd(),
            self.make_cgroups(spec)?,
            tap.as_ref().map(|t| t.as_raw_fd()),
            self.uid,
            self.gid,
        )?
        .apply(&mut command);
        // spawn returns once QEMU has been exec'd (or says why it was not).
        let child =
            command.spawn().map_err(|e| internal(&format!("cannot start QEMU for {}", spec.vm), e))?;
        let pid = child.id();
        let mut file = root.create(qemu::PID_FILE, 0o600).map_err(fail)?;
        file.write_all(pid.to_string().as_bytes()).map_err(|e| internal("cannot write the pid file", e))?;
        let vmm = Vmm::launched(pid, &self.program(Kind::Qemu)).map_err(|e| match e {
            NotOurs::Gone => {
                Error::internal(format!("QEMU of {} exited at once; its console log says why", spec.vm))
            }
            NotOurs::Other(why) => refused(&format!("the QEMU of {}", spec.vm), why),
        })?;
        self.confine(&vmm, &spec.vm);
        Ok(vmm)
    }

    /// Kills a Firecracker still running in the jail and waits until it is gone, then removes the
    /// jail dir and the cgroups the jailer made; absent is fine.
    pub fn clean(&self, vm: &str) -> Result<(), Error> {
        validate::vm_name(vm)?;
        let slot = self.slot(vm);
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.state()?;
        match self.existing_base(&state)? {
            Some(base) => self.clean_locked(&base, vm, &mut held),
            None => self.remove_cgroups(vm),
        }
    }

    fn clean_locked(
        &self,
        base: &Dir,
        vm: &str,
        held: &mut MutexGuard<'_, Option<Vmm>>,
    ) -> Result<(), Error> {
        if let Some(vmm) = self.find(Some(base), vm, held, 0)? {
            vmm.kill().map_err(|e| internal(&format!("cannot kill pid {}", vmm.pid), e))?;
            if !vmm.wait(EXIT_WAIT) {
                return Err(Error::internal(format!(
                    "Firecracker of {vm} (pid {}) did not exit after SIGKILL; its jail is kept",
                    vmm.pid
                )));
            }
            vmm.reap();
        }
        **held = None;
        self.kill_cgroup(vm)?;
        if let Some((kind, dir)) = self.vm_dir(base, vm)? {
            if let Ok(root) = dir.dir(Path::new("root")) {
                for file in BOUND {
                    unbind(&root, file)?;
                }
            }
            let exec =
                base.dir(Path::new(self.dir_name(kind))).map_err(|e| refused("the jails", explain(e)))?;
            exec.remove_tree(vm).map_err(|e| internal(&format!("cannot remove the jail of {vm}"), e))?;
        }
        self.remove_cgroups(vm)
    }

    /// `<state>/jail` if it exists.
    /// `<state>/jail` if it is the jails' tmpfs; anything else there holds no jail of the helper's.
    fn existing_base(&self, state: &Dir) -> Result<Option<Dir>, Error> {
        match state.dir(Path::new("jail")) {
            Ok(d) if self.is_jail_mount(state, &d)? => Ok(Some(d)),
            Ok(_) | Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(refused(&format!("{}/jail", self.state_dir.display()), explain(e))),
        }
    }

    /// Kills whatever still runs in the VM's cgroups (a VMM the helper holds no pidfd of: its pid
    /// file was forged, or its launch failed half-way) and waits until they are gone.
    fn kill_cgroup(&self, vm: &str) -> Result<(), Error> {
        for dir in cgroup_dirs(&self.parent_cgroup, vm) {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else { continue };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                // Taken by pidfd, then checked to be in this cgroup still: the pid may be reused.
                let Ok(vmm) = Vmm::in_cgroup(pid, &self.cgroup_of(vm)) else { continue };
                vmm.kill().map_err(|e| internal(&format!("cannot kill pid {pid} of {vm}'s cgroup"), e))?;
                if !vmm.wait(EXIT_WAIT) {
                    return Err(Error::internal(format!(
                        "pid {pid} of {vm}'s cgroup did not exit after SIGKILL"
                    )));
                }
                vmm.reap();
            }
        }
        Ok(())
    }

    /// The cgroups of the VM, and the state dir's parent cgroup with its last VM.
    fn remove_cgroups(&self, vm: &str) -> Result<(), Error> {
        for cgroup in cgroup_dirs(&self.parent_cgroup, vm) {
            if !cgroup.exists() {
                continue;
            }
            // A cgroup empties a moment after its last process exits; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while cgroup.exists() && std::fs::remove_dir(&cgroup).is_err() {
                if Instant::now() > deadline {
                    return Err(Error::internal(format!(
                        "cannot remove {}: it is still in use",
                        cgroup.display()
                    )));
                }
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

/// The VM's limits: its vCPUs' worth of CPU time, and its memory plus what the VMM needs of
/// its own (QEMU: its TCG translation cache too; see `qemu::OVERHEAD_MIB`).
fn limits(spec: &LaunchSpec) -> (u64, u64) {
    let overhead = if spec.qemu.is_some() { qemu::OVERHEAD_MIB } else { 64 };
    (u64::from(spec.cpus) * 100_000, (u64::from(spec.memory_mib) + overhead) << 20)
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

/// The jail's pid file, written by the jailer (or by the helper, for QEMU).
fn read_pid(root: &Dir, kind: Kind) -> Result<u32, Error> {
    let file = match kind {
        Kind::Firecracker => "firecracker.pid",
        Kind::Qemu => qemu::PID_FILE,
    };
    let text =
        root.read_small(file, 32).map_err(|e| Error::internal(format!("no pid file in the jail: {e}")))?;
    text.trim().parse().map_err(|_| Error::internal("the jail's pid file does not hold a pid"))
}

/// What a jail holds that lives outside it, bind-mounted in (QEMU's: `qemu::LENT` too).
const BOUND: [&str; 8] =
    ["vmlinux", "disk.ext4", qemu::KERNEL, qemu::INITRD, "usr", "etc/ld.so.cache", "dev/null", "dev/kvm"];

/// Bind-mounts `source` (a checked file's descriptor) at `name` in the jail root, made empty
/// first. Both ends are named by descriptor, so neither can be redirected since its check.
fn bind_into(source: &OwnedFd, root: &Dir, name: &str) -> Result<(), Error> {
    let fail = |e: String| Error::internal(format!("cannot put {name} into the jail: {e}"));
    let target = root.create(name, 0o600).map_err(|e| fail(explain(e)))?;
    nix::mount::mount(
        Some(fd_path(source.as_fd()).as_str()),
        fd_path(target.as_fd()).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail(e.to_string()))
}

/// A VM's files, checked and opened by descriptor (`validate::owned_file`): what its jail binds in.
struct VmFiles {
    kernel: OwnedFd,
    initrd: Option<OwnedFd>,
    disk: Option<OwnedFd>,
}

/// The VMM's stdout and stderr: the console log the daemon passed, or nothing.
fn console_stdio(console: Option<OwnedFd>) -> Result<(Stdio, Stdio), Error> {
    match console {
        Some(fd) => {
            let copy = fd.try_clone().map_err(|e| Error::internal(e.to_string()))?;
            Ok((Stdio::from(fd), Stdio::from(copy)))
        }
        None => Ok((Stdio::null(), Stdio::null())),
    }
}

/// Binds a host path (trusted: root's own files) read-only at `inside` in the jail root, made
/// empty first.
fn lend(root: &Dir, host: &str, inside: &str, is_dir: bool) -> Result<(), Error> {
    let fail = |e: String| Error::internal(format!("cannot lend {host} to the jail: {e}"));
    let target = match is_dir {
        true => {
            root.new_dir(inside, 0o755).map(|d| d.fd().try_clone_to_owned()).map_err(|e| fail(explain(e)))?
        }
        false => {
            let (dir, name) = inside.rsplit_once('/').map_or((None, inside), |(d, n)| (Some(d), n));
            let file = match dir {
                Some(d) => root.dir(Path::new(d)).and_then(|d| d.create(name, 0o600)),
                None => root.create(name, 0o600),
            };
            Ok(OwnedFd::from(file.map_err(|e| fail(explain(e)))?))
        }
    }
    .map_err(|e: std::io::Error| fail(e.to_string()))?;
    let at = fd_path(target.as_fd());
    nix::mount::mount(
        Some(host),
        at.as_str(),
        None::<&str>,
        // Not recursive: a mount under the lent path would keep its own (writable) flags.
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail(e.to_string()))?;
    // The descriptor names what lies under the new mount; looked up again, the path reaches
    // the mount itself, which is what a remount changes.
    let mounted = root.handle(Path::new(inside)).map_err(|e| fail(explain(e)))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    nix::mount::mount(None::<&str>, fd_path(mounted.as_fd()).as_str(), None::<&str>, ro, None::<&str>)
        .map_err(|e| fail(e.to_string()))
}

/// Undoes `bind_into`: unmounts `name` in the jail root if it is a mount. A symlink there is not
/// followed (and is then removed with the jail).
fn unbind(root: &Dir, name: &str) -> Result<(), Error> {
    let handle = match root.handle(Path::new(name)) {
        Ok(h) => h,
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(()),
        Err(e) => return Err(internal(&format!("cannot reach {name} in the jail"), explain(e))),
    };
    let here = root.stat().map_err(|e| internal("cannot stat the jail", e))?;
    let st = nix::sys::stat::fstat(&handle).map_err(|e| internal("cannot stat the jail", e))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if st.st_dev == here.st_dev || ![SFlag::S_IFREG, SFlag::S_IFDIR, SFlag::S_IFCHR].contains(&kind) {
        return Ok(());
    }
    match nix::mount::umount2(fd_path(handle.as_fd()).as_str(), MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(e) => Err(internal(&format!("cannot unmount {name} in the jail"), e)),
    }
}
