//! The root helper under attack, as a compromised daemon or a planted state dir would attack it:
//! a directory swapped for a symlink while a launch runs, a symlinked `jail`, symlinks planted in
//! a fresh jail, a hard-linked kernel, launch and clean-up raced, and kills of processes that are
//! not the VM's VMM. Each runs with the owner uid 0 and with a non-root owner; files outside the
//! state dir (canaries) must stay untouched, and no Firecracker may outlive its jail.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::protocol::ErrorKind;
use chaos_tests::protocol::channel::{Client, Helper};
use chaos_tests::protocol::helper::{HelperRequest, HelperResponse, LaunchSpec};
use chaos_tests::{JailMount, TEST_KERNEL, TestHelper, capable, firecracker, is_root, other_user};

/// A helper for a fresh state dir holding a kernel, and a client; None where a capability is
/// missing (said why).
struct Setup {
    state: tempfile::TempDir,
    _jails: JailMount,
    outside: tempfile::TempDir,
    helper: TestHelper,
    client: Client<Helper>,
    owner: u32,
}

/// Connects to the helper as `uid`, as the daemon of that owner would. The helper checks the
/// peer's effective uid at connect time, so this thread takes `uid` as its effective uid for the
/// connect alone (a raw setresuid changes only the calling thread; the test runtime runs the
/// connect on this thread).
async fn connect_as(uid: u32, socket: &Path) -> Client<Helper> {
    let set = |euid: u32| {
        // SAFETY: setresuid with -1 keeps the real and saved uids (root), so the change reverts.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, euid, u32::MAX) };
        assert_eq!(r, 0, "setresuid({euid})");
    };
    set(uid);
    let client = Client::<Helper>::connect(socket, "test").await;
    set(0);
    client.unwrap()
}

impl Setup {
    async fn new(owner: u32) -> Option<Setup> {
        if !capable("root", is_root(), "banger-helper runs as root") {
            return None;
        }
        if firecracker().is_none() {
            capable("kvm", false, "firecracker or /dev/kvm is missing");
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        let jails = JailMount(state.path().to_path_buf());
        std::fs::create_dir_all(state.path().join("kernels/test")).unwrap();
        std::fs::create_dir_all(state.path().join("vms/web")).unwrap();
        std::fs::copy(TEST_KERNEL, state.path().join("kernels/test/vmlinux")).unwrap();
        std::fs::write(state.path().join("vms/web/disk.ext4"), b"the VM's own disk").unwrap();
        // The owner reaches the helper's socket through these (the temp dir is 0700).
        std::fs::create_dir_all(state.path().join("run")).unwrap();
        for dir in [state.path(), &state.path().join("run")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let helper = TestHelper::start_in(&state.path().join("run/helper.sock"), owner, state.path()).await;
        let client = connect_as(owner, &helper.socket).await;
        Some(Setup { state, _jails: jails, outside: tempfile::tempdir().unwrap(), helper, client, owner })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.state.path().join(rel)
    }

    /// A root-owned 0600 file outside the state dir, which nothing may change.
    fn canary(&self, name: &str) -> Canary {
        let path = self.outside.path().join(name);
        std::fs::write(&path, format!("canary {name}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Canary { before: std::fs::metadata(&path).unwrap(), path }
    }

    fn spec(&self, vm: &str, disk: &str, config: bool) -> LaunchSpec {
        LaunchSpec {
            vm: vm.into(),
            kernel: self.path("kernels/test/vmlinux").display().to_string(),
            disk: Some(self.path(disk).display().to_string()),
            cpus: 1,
            memory_mib: 32,
            config: config.then(|| r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":32}}"#.into()),
            qemu: None,
            initrd: None,
        }
    }

    fn jail_root(&self, vm: &str) -> PathBuf {
        self.path("jail/firecracker").join(vm).join("root")
    }
}

struct Canary {
    path: PathBuf,
    before: std::fs::Metadata,
}

impl Canary {
    fn untouched(&self) {
        let now = std::fs::symlink_metadata(&self.path).unwrap();
        let name = self.path.file_name().unwrap().to_string_lossy();
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            format!("canary {name}"),
            "{name}'s content"
        );
        assert_eq!((now.uid(), now.gid(), now.mode()), (0, 0, self.before.mode()), "{name}'s owner and mode");
        assert_eq!(now.ino(), self.before.ino(), "{name} is the same file");
    }
}

/// Firecracker processes whose root (the jail the jailer pivoted into) lies under `state`,
/// deleted jails included.
fn vmms_of(state: &Path) -> Vec<(u32, String)> {
    let jail = state.join("jail").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "firecracker")
        })
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")))
        .filter_map(|pid| {
            Some((pid, std::fs::read_link(format!("/proc/{pid}/root")).ok()?.display().to_string()))
        })
        .filter(|(_, root)| root.starts_with(&jail))
        .collect()
}

fn refusal(reply: &HelperResponse) -> Option<&chaos_tests::protocol::Error> {
    match reply {
        HelperResponse::Error(e) => Some(e),
        _ => None,
    }
}

async fn clean(c: &mut Client<Helper>, vm: &str) {
    let reply = c.call(&HelperRequest::CleanJail { vm: vm.into() }).await.unwrap();
    assert_eq!(reply, HelperResponse::Ok, "clean-up of {vm}");
}

fn owners() -> Vec<u32> {
    if is_root() { vec![0, other_user().0] } else { vec![0] }
}

/// Finding 1: `vms/web` swapped with a symlink to a directory outside (RENAME_EXCHANGE, in a
/// tight loop) while the helper launches VMs with `vms/web/disk.ext4`: the jail's disk is the
/// VM's own or the launch is refused, never the file outside.
#[tokio::test]
async fn a_directory_swapped_for_a_symlink_never_puts_a_host_file_in_a_jail() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        let canary = s.canary("disk.ext4");
        std::os::unix::fs::symlink(s.outside.path(), s.path("vms/swap")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicUsize::new(0));
        let swapper = {
            let (vms, stop, swaps) = (s.path("vms"), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let dir = std::fs::File::open(&vms).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let flag = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                    if nix::fcntl::renameat2(&dir, "web", &dir, "swap", flag).is_ok() {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let (mut launched, mut refused) = (0, 0);
        let tries = if owner == 0 { 1000 } else { 300 };
        for _ in 0..tries {
            let reply = s
                .client
                .call(&HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", false)))
                .await
                .unwrap();
            match &reply {
                HelperResponse::Launched { .. } => {
                    launched += 1;
                    let disk = std::fs::read(s.jail_root("web").join("disk.ext4")).unwrap();
                    assert_eq!(disk, b"the VM's own disk", "the jail's disk is the VM's own (owner {owner})");
                }
                HelperResponse::Error(e) => {
                    refused += 1;
                    assert!(
                        [ErrorKind::PermissionDenied, ErrorKind::NotFound, ErrorKind::Internal]
                            .contains(&e.kind),
                        "{e:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
            clean(&mut s.client, "web").await;
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        canary.untouched();
        println!(
            "owner {owner}: {tries} launches against {} swaps: {launched} launched, {refused} refused",
            swaps.load(Ordering::Relaxed)
        );
        assert!(
            launched > 0 && refused > 0,
            "both outcomes happen, so the race was run: {launched} / {refused}"
        );
        assert!(vmms_of(s.state.path()).is_empty(), "no VMM left");
    }
}

/// Finding 2: `<state>/jail` is a symlink to a directory outside: launch and clean-up refuse,
/// naming it, and nothing outside is created, mounted or deleted.
#[tokio::test]
async fn a_symlinked_jail_dir_is_refused() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        let victim = s.outside.path().join("firecracker/web/root");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("keep"), b"keep").unwrap();
        std::os::unix::fs::symlink(s.outside.path(), s.path("jail")).unwrap();
        let reply =
            s.client.call(&HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", true))).await.unwrap();
        let e = refusal(&reply).unwrap_or_else(|| panic!("launch through a symlinked jail: {reply:?}"));
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e:?}");
        assert!(e.message.contains("/jail") && e.message.contains("symlink"), "{e:?}");
        let reply = s.client.call(&HelperRequest::CleanJail { vm: "web".into() }).await.unwrap();
        let e = refusal(&reply).unwrap_or_else(|| panic!("clean-up through a symlinked jail: {reply:?}"));
        assert!(e.message.contains("symlink"), "{e:?}");
        assert_eq!(
            std::fs::read(victim.join("keep")).unwrap(),
            b"keep",
            "the directory outside is untouched"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&s.outside.path().display().to_string()),
            "nothing mounted outside: {mounts}"
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "nothing created outside");
        std::fs::remove_file(s.path("jail")).unwrap();
    }
}

/// Finding 3: while each launch is in flight, a thread with the owner's file-system uid plants
/// symlinks to canaries at every file name a jail root gets, as fast as it can: no canary is
/// truncated, chowned or written.
#[tokio::test]
async fn symlinks_planted_in_a_fresh_jail_write_through_nothing() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        // Firecracker's own copy is the jailer's to make (by path, as root): a root planter would
        // win that race against the jailer itself, so only the non-root owner plants it.
        let mut names =
            vec!["firecracker.log", "metrics.json", "vm.json", "vmlinux", "disk.ext4", "firecracker.pid"];
        if owner != 0 {
            names.push("firecracker");
        }
        let canaries: Vec<Canary> = names.iter().map(|n| s.canary(n)).collect();
        let (stop, launching) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (planted, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let planter = {
            let names = names.clone();
            let (root, outside, stop, launching, busy, planted) = (
                s.jail_root("web"),
                s.outside.path().to_path_buf(),
                stop.clone(),
                launching.clone(),
                busy.clone(),
                planted.clone(),
            );
            std::thread::spawn(move || {
                // setfsuid changes this thread alone: it plants as the owner would.
                // SAFETY: a plain syscall on this thread's credentials.
                unsafe { libc::setfsuid(owner) };
                while !stop.load(Ordering::SeqCst) {
                    // Busy first, then the flag: the launcher, which clears the flag and then
                    // waits for not busy, never has a plant land in a launch it did not attack.
                    busy.store(true, Ordering::SeqCst);
                    if launching.load(Ordering::SeqCst) {
                        for n in &names {
                            if std::os::unix::fs::symlink(outside.join(n), root.join(n)).is_ok() {
                                planted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    busy.store(false, Ordering::SeqCst);
                    std::thread::yield_now();
                }
            })
        };
        // Every other launch is attacked; the others show the helper still launches.
        let (mut launched, mut quiet_launched) = (0, 0);
        for i in 0..200 {
            launching.store(i % 2 == 0, Ordering::SeqCst);
            let reply = s
                .client
                .call(&HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", true)))
                .await
                .unwrap();
            launching.store(false, Ordering::SeqCst);
            while busy.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            if matches!(reply, HelperResponse::Launched { .. }) {
                launched += 1;
                quiet_launched += i % 2;
            } else if i % 2 == 1 {
                println!("an unattacked launch failed: {reply:?}");
            }
            clean(&mut s.client, "web").await;
        }
        stop.store(true, Ordering::SeqCst);
        planter.join().unwrap();
        canaries.iter().for_each(Canary::untouched);
        println!(
            "owner {owner}: 200 launches, 100 attacked, {launched} launched, {} symlinks planted",
            planted.load(Ordering::Relaxed)
        );
        assert_eq!(quiet_launched, 100, "every launch not attacked went through");
        assert!(vmms_of(s.state.path()).is_empty(), "no VMM left");
    }
}

/// Finding 4: a kernel that is a hard link to a root-only file elsewhere is refused.
#[tokio::test]
async fn a_hard_linked_kernel_is_refused() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        let canary = s.canary("shadow");
        std::fs::remove_file(s.path("kernels/test/vmlinux")).unwrap();
        std::fs::hard_link(&canary.path, s.path("kernels/test/vmlinux")).unwrap();
        let reply =
            s.client.call(&HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", true))).await.unwrap();
        let e = refusal(&reply).unwrap_or_else(|| panic!("a hard-linked kernel: {reply:?}"));
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e:?}");
        assert!(e.message.contains("hard link"), "{e:?}");
        assert!(!s.path("jail/firecracker/web").exists(), "no jail was built");
        canary.untouched();
    }
}

/// Finding 5: LaunchVm and CleanJail for one VM sent at once on two connections, 20 times: a
/// clean-up that answers Ok leaves no VMM behind, and a VMM never outlives its jail.
#[tokio::test]
async fn launch_and_clean_at_once_leave_no_vmm_without_a_jail() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        let mut other = connect_as(s.owner, &s.helper.socket).await;
        for i in 0..20 {
            let launch = HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", false));
            let cleanup = HelperRequest::CleanJail { vm: "web".into() };
            let (l, c) = tokio::join!(s.client.call(&launch), other.call(&cleanup));
            let (l, c) = (l.unwrap(), c.unwrap());
            assert_eq!(c, HelperResponse::Ok, "try {i}: clean-up");
            for (pid, root) in vmms_of(s.state.path()) {
                assert!(
                    Path::new(&root).exists() && !root.ends_with("(deleted)"),
                    "try {i}: pid {pid} runs in a deleted jail {root} (launch said {l:?})"
                );
            }
            clean(&mut s.client, "web").await;
            assert!(vmms_of(s.state.path()).is_empty(), "try {i}: a clean-up that said Ok left a VMM");
            assert!(!s.path("jail/firecracker/web").exists(), "try {i}: the jail is gone");
        }
    }
}

/// Finding 5: a kill naming a pid that is not the VM's VMM is refused and kills nothing.
#[tokio::test]
async fn a_kill_of_a_process_that_is_not_the_vmm_is_refused() {
    for owner in owners() {
        let Some(mut s) = Setup::new(owner).await else { return };
        let mut bystander = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = bystander.id();
        let reply =
            s.client.call(&HelperRequest::LaunchVm(s.spec("web", "vms/web/disk.ext4", false))).await.unwrap();
        let HelperResponse::Launched { pid: vmm, .. } = reply else { panic!("{reply:?}") };
        for vm in ["web", "nojail"] {
            let reply = s.client.call(&HelperRequest::KillVm { vm: vm.into(), pid }).await.unwrap();
            let e = refusal(&reply).unwrap_or_else(|| panic!("kill of a bystander for {vm}: {reply:?}"));
            assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e:?}");
            assert!(bystander.try_wait().unwrap().is_none(), "the bystander lives");
        }
        assert_eq!(
            s.client.call(&HelperRequest::KillVm { vm: "web".into(), pid: vmm }).await.unwrap(),
            HelperResponse::Ok
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !vmms_of(s.state.path()).is_empty() {
            assert!(Instant::now() < deadline, "the VMM was killed");
            std::thread::sleep(Duration::from_millis(5));
        }
        clean(&mut s.client, "web").await;
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}

/// The start time of `pid` (/proc/PID/stat field 22), as the daemon records it.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split(' ').nth(19).unwrap().parse().unwrap()
}

/// Finding 5, through the daemon: a VM record forged to name another process (pid and start
/// time) while the daemon was down. `vm kill` must not hang: the helper refuses to kill the
/// bystander, the VM is marked failed with why, and its real VMM is cleaned up.
#[tokio::test]
async fn a_forged_vm_record_fails_the_vm_instead_of_hanging() {
    let Some(mut host) = chaos_tests::vms::VmHost::start().await else { return };
    host.create("forged", "wait");
    host.ok(&["vm", "start", "forged"]);
    let vmm = host.inspect("forged")["pid"].as_u64().unwrap() as u32;
    let mut bystander = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    host.daemon.kill9();
    let path = host.daemon.dir.path().join("vms/forged/vm.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["running"]["pid"] = bystander.id().into();
    record["running"]["start_time"] = start_time(bystander.id()).into();
    record["info"]["pid"] = bystander.id().into();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    host.daemon.restart().await;

    let asked = Instant::now();
    let out = host.cli(&["vm", "kill", "forged"]);
    let took = asked.elapsed();
    println!("vm kill of a forged record answered in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(10), "vm kill hung for {took:?}");
    let said = chaos_tests::stderr(&out);
    assert!(!out.status.success() && said.contains("refusing to kill pid"), "{out:?}");
    let v = host.inspect("forged");
    let reason = v["state"]["Failed"].as_str().unwrap_or_else(|| panic!("not failed: {v}"));
    assert!(reason.contains("could not be killed"), "{reason}");
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander lives");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{vmm}")).exists()
        && !std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap_or_default().contains(") Z ")
    {
        assert!(Instant::now() < deadline, "the VM's real VMM {vmm} was not cleaned up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!host.jail("forged").exists(), "its jail is released");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// Unmounts a tmpfs a test mounted, when the test ends however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tmpfs proves nothing by itself: on a state dir that is a tmpfs, the `jail` directory the
/// helper makes is a root-owned directory on a tmpfs, and must still get a mount of its own
/// (before, it was taken for one, and the owner could fill it).
#[tokio::test]
async fn a_state_dir_on_a_tmpfs_still_gets_a_jail_mount_of_its_own() {
    if !capable("root", is_root(), "banger-helper runs as root") {
        return;
    }
    if firecracker().is_none() {
        capable("kvm", false, "firecracker or /dev/kvm is missing");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some("banger-test"),
        state.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _state_mount = Unmount(state.path().to_path_buf());
    let _jails = JailMount(state.path().to_path_buf());
    std::fs::create_dir_all(state.path().join("kernels/test")).unwrap();
    std::fs::copy(TEST_KERNEL, state.path().join("kernels/test/vmlinux")).unwrap();
    let mut helper = TestHelper::start_in(&state.path().join("run/helper.sock"), 0, state.path()).await;
    let mut c = connect_as(0, &helper.socket).await;
    let spec = LaunchSpec {
        vm: "web".into(),
        kernel: state.path().join("kernels/test/vmlinux").display().to_string(),
        disk: None,
        cpus: 1,
        memory_mib: 32,
        config: None,
        qemu: None,
        initrd: None,
    };
    let reply = c.call(&HelperRequest::LaunchVm(spec)).await.unwrap();
    assert!(matches!(reply, HelperResponse::Launched { .. }), "{reply:?}");
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(dev(&state.path().join("jail")), dev(state.path()), "the jail dir is a mount of its own");
    clean(&mut c, "web").await;
    assert!(helper.terminate().success());
    assert_eq!(dev(&state.path().join("jail")), dev(state.path()), "and it goes with the helper");
}
