//! The VmManager's routing and the VM state machine, against a recording [`Vmm`] (a test double:
//! it runs a `sleep` as the "VMM", so the pidfd watch, stop and kill are real) and real
//! KernelStore and ImageCache actors on a temporary state dir. System tests use Firecracker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use protocol::vm::{VmCreate, VmInfo, VmState};
use protocol::{Error, ErrorKind};

use super::*;
use crate::child::{ChildCtx, ChildExited, ChildGuard, ChildStarted};
use crate::config::Config;
use crate::image_cache::{ImageCache, StartImport};
use crate::kernels::{ImportKernel, KernelStore};
use crate::peers::Started;
use crate::vmm::{Boot, Running, Vmm};

/// What the double was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Boot(String),
    Shutdown,
    Kill(String),
    Cleanup(String),
}

#[derive(Default)]
struct RecordingVmm {
    calls: Mutex<Vec<Call>>,
    children: Mutex<Vec<std::process::Child>>,
}

impl RecordingVmm {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
    /// Ends the "VMM" as a guest that powered off would.
    fn end(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        if let Some(c) = children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Vmm for RecordingVmm {
    fn boot(&self, boot: Boot, _console: std::os::fd::OwnedFd) -> BoxFuture<'_, Result<Running, Error>> {
        self.record(Call::Boot(boot.vm.clone()));
        let child = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
        let running = Running {
            pid: child.id(),
            start_time: crate::vmm::start_time(child.id()).unwrap_or(0),
            control: "/nonexistent".into(),
        };
        self.children.lock().unwrap().push(child);
        async move { Ok(running) }.boxed()
    }
    fn shutdown<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        self.record(Call::Shutdown);
        self.end(running.pid);
        async { Ok(()) }.boxed()
    }
    fn kill<'a>(&'a self, vm: &'a str, running: &'a Running) -> BoxFuture<'a, Result<(), Error>> {
        self.record(Call::Kill(vm.into()));
        self.end(running.pid);
        async { Ok(()) }.boxed()
    }
    fn cleanup<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.record(Call::Cleanup(vm.into()));
        async { Ok(()) }.boxed()
    }
    fn alive<'a>(&'a self, running: &'a Running) -> BoxFuture<'a, bool> {
        let alive = crate::vmm::start_time(running.pid) == Some(running.start_time);
        async move { alive }.boxed()
    }
    fn exit_code(&self, _: &Running, _: &std::path::Path) -> Option<i32> {
        Some(0)
    }
    /// No guest here: the link keeps trying and the VM stays "waiting" for its agent.
    fn agent<'a>(&'a self, _: &'a Running) -> BoxFuture<'a, std::io::Result<tokio::net::UnixStream>> {
        async { Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no guest")) }.boxed()
    }
}

/// Stands in for the supervisor: takes the children's start and exit reports.
struct Parent;
impl Actor for Parent {
    type Context = Context<Self>;
}
impl Handler<ChildExited> for Parent {
    type Result = ();
    fn handle(&mut self, _: ChildExited, _: &mut Context<Self>) {}
}
impl Handler<ChildStarted> for Parent {
    type Result = ();
    fn handle(&mut self, _: ChildStarted, _: &mut Context<Self>) {}
}

struct Setup {
    dir: tempfile::TempDir,
    vmm: Arc<RecordingVmm>,
    vms: Addr<VmManager>,
    peers: Peers,
}

fn cx(dir: &std::path::Path, name: &'static str, peers: &Peers, parent: &Addr<Parent>) -> ChildCtx {
    ChildCtx {
        config: Config::for_tests(dir),
        log: slog::Logger::root(slog::Discard, slog::o!()),
        guard: ChildGuard::new(name, 1, parent.clone().recipient(), parent.clone().recipient(), false),
        peers: peers.clone(),
    }
}

/// Starts the manager on `dir` (a fresh one if `None`), with a kernel `default` and a `base`
/// image made by hand in the image store's layout.
async fn setup(dir: Option<tempfile::TempDir>) -> Setup {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let parent = Parent.start();
    let peers = Peers::default();
    let kernels = KernelStore::new(cx(dir.path(), "kernels", &peers, &parent)).start();
    peers.started(Started::Kernels(kernels.clone()));
    let images = ImageCache::new(cx(dir.path(), "images", &peers, &parent)).start();
    peers.started(Started::Images(images.clone()));
    if !dir.path().join("kernels/default").exists() {
        // A static ELF stands in for the guest agent (Config::for_tests looks for it here).
        std::fs::write(dir.path().join("banger-agent"), crate::kernels::test_elf(0x2000, 1, 0x1000)).unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, crate::kernels::test_elf(0x2000, 1, 0x1000)).unwrap();
        let input = std::fs::File::open(&path).unwrap();
        let import = ImportKernel { name: "default".into(), source: "test".into(), input };
        kernels.send(import).await.unwrap().unwrap();
        let tar = dir.path().join("rootfs.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, "etc/hostname", &b"test\n"[..]).unwrap();
        builder.finish().unwrap();
        let input = std::fs::File::open(&tar).unwrap();
        let import =
            StartImport { name: "base".into(), file: "rootfs.tar".into(), size: None, replace: false, input };
        let handle = images.send(import).await.unwrap();
        handle.result.await.unwrap().unwrap();
    }
    let vmm = Arc::new(RecordingVmm::default());
    let vmms = crate::vmm::Backends {
        firecracker: vmm.clone(),
        qemu: vmm.clone(),
        default: protocol::vm::VmmKind::Firecracker,
    };
    let vms = VmManager::new(cx(dir.path(), "vms", &peers, &parent), vmms).start();
    peers.started(Started::Vms(vms.clone()));
    Setup { dir, vmm, vms, peers }
}

fn create(name: &str) -> CreateVm {
    CreateVm(VmCreate {
        name: name.into(),
        image: "base".into(),
        kernel: None,
        cpus: Some(1),
        memory_mib: Some(32),
        disk_bytes: Some(96 << 20),
        network: false,
        kernel_args: vec![],
        vmm: None,
        ports: vec![],
    })
}

async fn ask<M, T>(s: &Setup, msg: M) -> Result<T, Error>
where
    VmManager: Handler<M>,
    M: Message<Result = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    s.peers.vms().ask(msg).await
}

fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
    r.unwrap_err().kind
}

#[actix_rt::test]
async fn create_start_stop_remove_through_the_manager() {
    let s = setup(None).await;
    let made: VmInfo = ask(&s, create("web")).await.unwrap();
    assert_eq!((made.state, made.spec.cpus, made.spec.memory_mib), (VmState::Created, 1, 32));
    assert!(s.dir.path().join("vms/web/disk.ext4").exists());
    let running = ask(&s, Lifecycle::Start("web".into())).await.unwrap();
    assert_eq!(running.state, VmState::Running);
    assert_eq!(s.vmm.calls(), [Call::Boot("web".into())]);
    assert_eq!(kind(ask(&s, Lifecycle::Start("web".into())).await), ErrorKind::Conflict, "already running");
    assert_eq!(kind(ask(&s, RemoveVm { name: "web".into(), force: false }).await), ErrorKind::Conflict);
    let listed = ask(&s, ListVms { all: false }).await.unwrap();
    assert_eq!(listed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["web"]);
    let stopped = ask(&s, Lifecycle::Stop("web".into(), Duration::from_secs(5))).await.unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(s.vmm.calls()[1..], [Call::Shutdown, Call::Cleanup("web".into())]);
    assert!(ask(&s, ListVms { all: false }).await.unwrap().is_empty(), "only running ones without --all");
    assert_eq!(ask(&s, ListVms { all: true }).await.unwrap().len(), 1);
    ask(&s, RemoveVm { name: "web".into(), force: false }).await.unwrap();
    assert!(!s.dir.path().join("vms/web").exists());
    assert_eq!(kind(ask(&s, Lifecycle::Inspect("web".into())).await), ErrorKind::NotFound);
}

#[actix_rt::test]
async fn settings_out_of_range_are_refused_at_create_and_leave_nothing() {
    let s = setup(None).await;
    let host = Defaults::for_host();
    for (cpus, memory, says) in [
        (Some(0), Some(32), "--cpus 0"),
        (Some(33), Some(32), "--cpus 33"),
        (Some(host.host_cpus + 1), Some(32), "--cpus"),
        (Some(1), Some(0), "--memory 0 MiB"),
        (Some(1), Some(host.host_memory_mib + 1), "--memory"),
    ] {
        let mut c = create("bad");
        (c.0.cpus, c.0.memory_mib) = (cpus, memory);
        let e = ask(&s, c).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
        assert!(e.message.starts_with(says), "{says}: {}", e.message);
        assert!(e.hint.as_deref().is_some_and(|h| h.starts_with("use ")), "{e:?}");
    }
    assert!(!s.dir.path().join("vms/bad").exists(), "a refused VM leaves no directory");
    let mut c = create("bad");
    c.0.kernel = Some("Bad/Name".into());
    let e = ask(&s, c).await.unwrap_err();
    assert!(e.message.starts_with("invalid kernel name"), "{}", e.message);
}

#[actix_rt::test]
async fn images_and_kernels_in_use_are_kept() {
    let s = setup(None).await;
    ask(&s, create("user")).await.unwrap();
    let e = ask(&s, RemoveImage { name: "base".into(), force: false }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.message, "image base is used by VM(s) user");
    let e = ask(&s, RemoveKernel("default".into())).await.unwrap_err();
    assert_eq!(e.message, "kernel default is used by VM(s) user");
    assert!(s.dir.path().join("kernels/default/vmlinux").exists());
    ask(&s, RemoveVm { name: "user".into(), force: false }).await.unwrap();
    ask(&s, RemoveKernel("default".into())).await.unwrap();
    assert!(!s.dir.path().join("kernels/default").exists(), "unused: removed");
}

#[actix_rt::test]
async fn a_corrupt_record_is_listed_damaged_keeps_its_name_and_disk_until_removed() {
    let s = setup(None).await;
    ask(&s, create("good")).await.unwrap();
    ask(&s, create("bad")).await.unwrap();
    let dir = s.dir;
    let vm_dir = dir.path().join("vms/bad");
    std::fs::write(vm_dir.join("vm.json"), b"{ not json").unwrap();
    std::fs::write(vm_dir.join("disk.ext4"), b"precious").unwrap();
    let s = setup(Some(dir)).await;
    let all = ask(&s, ListVms { all: true }).await.unwrap();
    assert_eq!(all.len(), 2, "the bad record hides no other VM: {all:?}");
    let VmState::Damaged(why) = &all[0].state else { panic!("bad is damaged: {all:?}") };
    assert!(why.contains("vm.json") && why.contains("kept as"), "{why}");
    let aside: Vec<_> = std::fs::read_dir(&vm_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"{ not json");
    let taken = ask(&s, create("bad")).await.unwrap_err();
    assert_eq!(taken.kind, ErrorKind::Conflict, "its name is taken: {taken:?}");
    assert_eq!(kind(ask(&s, Lifecycle::Start("bad".into())).await), ErrorKind::Conflict);
    assert_eq!(std::fs::read(vm_dir.join("disk.ext4")).unwrap(), b"precious", "disk untouched");
    assert!(ask(&s, PruneVms).await.unwrap() == ["good"], "prune keeps a damaged VM's disk");
    // The good one still works.
    let describe = s.vms.send(crate::child::Describe).await.unwrap().unwrap();
    assert!(describe.contains("bad is damaged"), "{describe}");
    // A daemon started again finds it damaged still (its record says so now).
    let dir = s.dir;
    let s = setup(Some(dir)).await;
    let all = ask(&s, ListVms { all: true }).await.unwrap();
    assert!(matches!(all[0].state, VmState::Damaged(_)), "{all:?}");
    ask(&s, RemoveVm { name: "bad".into(), force: false }).await.unwrap();
    assert!(!vm_dir.exists(), "removed only when the user asked");
}

#[actix_rt::test]
async fn a_manager_that_is_gone_is_an_error_never_an_empty_answer() {
    let s = setup(None).await;
    ask(&s, create("web")).await.unwrap();
    s.vms.send(crate::child::Control::Stop).await.unwrap();
    // Its mailbox closes as it stops.
    for _ in 0..100 {
        if !s.vms.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = ask(&s, ListVms { all: true }).await.unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Unavailable, "the VM manager is restarting"));
    assert_eq!(e.hint.as_deref(), Some("retry in a moment"));
    assert_eq!(
        kind(ask(&s, RemoveImage { name: "base".into(), force: false }).await),
        ErrorKind::Unavailable
    );
    assert!(s.dir.path().join("images/base").exists());
}

#[actix_rt::test]
async fn a_workspace_record_is_kept_across_a_restart_and_can_be_forgotten() {
    let s = setup(None).await;
    ask(&s, create("ws")).await.unwrap();
    let workspace = protocol::vm::Workspace {
        host_dir: "/home/u/repo".into(),
        guest_dir: "/workspace".into(),
        commit: Some("a".repeat(40)),
        tree: "b".repeat(40),
        copied_at: 1_700_000_000,
    };
    let set = SetWorkspace { name: "ws".into(), workspace: Some(workspace.clone()) };
    assert_eq!(ask(&s, set).await.unwrap().workspace.as_deref(), Some(&workspace));
    let bad = protocol::vm::Workspace { guest_dir: "relative".into(), ..workspace.clone() };
    let e = ask(&s, SetWorkspace { name: "ws".into(), workspace: Some(bad) }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
    let e = ask(&s, SetWorkspace { name: "nope".into(), workspace: None }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // Answered once on disk: a daemon started again reads it back.
    let dir = s.dir;
    let s = setup(Some(dir)).await;
    let info = ask(&s, Lifecycle::Inspect("ws".into())).await.unwrap();
    assert_eq!(info.workspace.as_deref(), Some(&workspace));
    let info = ask(&s, SetWorkspace { name: "ws".into(), workspace: None }).await.unwrap();
    assert_eq!(info.workspace, None);
}
