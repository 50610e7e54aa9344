//! Encoded sample messages, byte for byte. If this fails, the wire format changed: either the
//! change was a mistake, or it is deliberate and needs a protocol version bump
//! (`docs/protocol.md`) before the snapshot is updated (`cargo insta review`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banger_protocol::agent::{AgentEvent, AgentReady, AgentRequest, BootTimings, SshSetup};
use banger_protocol::codec::encode;
use banger_protocol::daemon::{
    ActorState, ActorStatus, ChaosAction, Request, Response, StatusReport, VersionInfo,
};
use banger_protocol::exec::{ExecEvent, ExecInput, ExecSpec, ExitStatus, OutputStream, WindowSize};
use banger_protocol::handshake::{Hello, MAGIC, ServerHello, ServiceKind};
use banger_protocol::helper::{HelperRequest, HelperResponse, LaunchSpec, NetworkSpec, QemuSpec};
use banger_protocol::image::{
    Credentials, ImageInfo, ImageSource, LayerProgress, PruneReport, PullEvent, PullRequest,
};
use banger_protocol::vm::{
    AgentState, KernelInfo, PortForward, SshInfo, VmCreate, VmInfo, VmSpec, VmState, VmmKind, Workspace,
};
use banger_protocol::{Error, ErrorKind};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn line<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    format!("{} <- {:?}\n", hex(&encode(value).expect("sample encodes")), value)
}

#[test]
fn encoded_samples_match_snapshot() {
    let hello = Hello {
        magic: MAGIC,
        service: ServiceKind::Daemon,
        min_version: 1,
        max_version: 3,
        software: "banger 1.2.3".into(),
    };
    let version = VersionInfo { software: "bangerd 1.2.3".into(), protocol: 1, chaos: false };
    let error = Error::new(ErrorKind::PermissionDenied, "uid 1001 may not use this socket")
        .with_hint("join group banger");
    let status = StatusReport {
        version: version.clone(),
        pid: 4242,
        uptime_ms: 90_000,
        socket: "/run/banger/bangerd.sock".into(),
        state_dir: "/var/lib/banger".into(),
        root: ActorStatus {
            name: "supervisor".into(),
            state: ActorState::Running,
            restarts: 0,
            last_exit: None,
            detail: None,
            children: vec![ActorStatus {
                name: "store".into(),
                state: ActorState::Restarting { in_ms: 400 },
                restarts: 3,
                last_exit: Some("panicked".into()),
                detail: Some("/var/lib/banger".into()),
                children: vec![],
            }],
        },
    };
    let mut out = String::new();
    out += &line(&hello);
    out += &line(&ServerHello { hello: hello.clone(), result: Ok(1) });
    out += &line(&ServerHello { hello, result: Err(error.clone()) });
    for r in [
        Request::Ping,
        Request::Version,
        Request::Status,
        Request::Shutdown,
        Request::Chaos(ChaosAction::Panic { actor: "store".into() }),
        Request::Chaos(ChaosAction::Stop { actor: "api".into() }),
        Request::Chaos(ChaosAction::FailStarts { actor: "store".into(), times: 5 }),
        Request::Chaos(ChaosAction::Echo { payload: vec![1, 2, 3], repeat: 2 }),
    ] {
        out += &line(&r);
    }
    let credentials = Credentials { username: "u".into(), password: "p".into() };
    for r in [
        Request::ImagePull(PullRequest {
            reference: "alpine:3.19".into(),
            name: Some("alpine".into()),
            size: Some(1 << 30),
            auth: Some(credentials),
        }),
        Request::ImageList,
        Request::ImageInspect { name: "alpine".into() },
        Request::ImageRemove { name: "alpine".into(), force: true },
        Request::ImageImport { name: "base".into(), size: None, file: "rootfs.tar".into() },
        Request::CachePrune { dry_run: true },
    ] {
        out += &line(&r);
    }
    let layer = LayerProgress { digest: format!("sha256:{}", "ab".repeat(32)), size: 1234, cached: false };
    let image = ImageInfo {
        name: "alpine".into(),
        source: ImageSource::Pulled {
            reference: "docker.io/library/alpine:3.19".into(),
            manifest_digest: format!("sha256:{}", "cd".repeat(32)),
            config_digest: format!("sha256:{}", "ef".repeat(32)),
        },
        layers: vec![layer.clone()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        workdir: "/".into(),
        user: "0".into(),
        created: Some("2026-11-01T00:00:00Z".into()),
        added_at: 1_800_000_000,
        content_bytes: 7_000_000,
        rootfs_bytes: 80 << 20,
    };
    for r in [
        Response::PullProgress(PullEvent::Resolved {
            manifest_digest: "sha256:00".into(),
            layers: vec![layer],
        }),
        Response::PullProgress(PullEvent::Progress { digest: "sha256:00".into(), done: 10, total: 20 }),
        Response::PullProgress(PullEvent::Verified { digest: "sha256:00".into() }),
        Response::PullProgress(PullEvent::Retrying {
            digest: "sha256:00".into(),
            attempt: 2,
            error: "cut".into(),
        }),
        Response::PullProgress(PullEvent::WaitingForPrune),
        Response::PullProgress(PullEvent::Stage { name: "flattening".into() }),
        Response::Images(vec![image.clone()]),
        Response::Image(ImageInfo { source: ImageSource::Imported { file: "-".into() }, ..image }),
        Response::Pruned(PruneReport { dry_run: false, freed_bytes: 1 << 30, blobs: 47, dir: "/c".into() }),
    ] {
        out += &line(&r);
    }
    for r in [
        Response::Pong,
        Response::Version(version.clone()),
        Response::Status(status),
        Response::Ok,
        Response::Echo(vec![0xff]),
        Response::Error(error.clone()),
    ] {
        out += &line(&r);
    }
    let spec = VmSpec {
        cpus: 2,
        memory_mib: 1024,
        disk_bytes: 8 << 30,
        image: "alpine".into(),
        kernel: "default".into(),
        kernel_args: vec!["quiet".into()],
        ip: Some("172.30.0.5".into()),
        mac: Some("06:01:02:03:04:05".into()),
        vmm: VmmKind::Qemu,
    };
    let ready = AgentReady {
        software: "banger-agent 1.2.3".into(),
        hostname: "web".into(),
        timings: BootTimings {
            init_us: 900_000,
            modules_us: Some(1_200_000),
            root_us: Some(1_300_000),
            listening_us: 1_350_000,
            ready_us: 1_400_000,
        },
    };
    let vm = VmInfo {
        name: "web".into(),
        state: VmState::Failed("killed".into()),
        spec,
        pid: Some(42),
        created_at: 1_800_000_000,
        started_at: None,
        last_exit: Some("killed".into()),
        agent: Some(AgentState::Ready(ready.clone())),
        ports: vec![PortForward { host_addr: "localhost".into(), host_port: 8080, guest_port: 80 }],
        workspace: Some(Box::new(Workspace {
            host_dir: "/home/u/src/app".into(),
            guest_dir: "/workspace".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            tree: "89abcdef0123456789abcdef0123456789abcdef".into(),
            copied_at: 1_800_000_100,
        })),
        ssh: Some(Box::new(SshInfo {
            user: "root".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA web.banger".into(),
            server: Some("banger-agent".into()),
        })),
    };
    let create = VmCreate {
        name: "web".into(),
        image: "alpine".into(),
        kernel: None,
        cpus: Some(2),
        memory_mib: None,
        disk_bytes: Some(1 << 30),
        network: true,
        kernel_args: vec![],
        vmm: Some(VmmKind::Firecracker),
        ports: vec![PortForward { host_addr: "127.0.0.1".into(), host_port: 2222, guest_port: 22 }],
    };
    for r in [
        Request::VmCreate(create),
        Request::VmStart { name: "web".into() },
        Request::VmStop { name: "web".into(), timeout_ms: 10_000 },
        Request::VmKill { name: "web".into() },
        Request::VmRestart { name: "web".into(), timeout_ms: 5000 },
        Request::VmRemove { name: "web".into(), force: true },
        Request::VmList { all: true },
        Request::VmInspect { name: "web".into() },
        Request::VmLogs { name: "web".into(), follow: true },
        Request::VmPrune,
        Request::KernelImport { name: "default".into(), file: "vmlinux".into() },
        Request::KernelList,
        Request::KernelRemove { name: "default".into() },
        Request::SystemUninstall,
        Request::ImagePullReplacing {
            pull: PullRequest { reference: "alpine".into(), name: None, size: None, auth: None },
            replace: true,
        },
        Request::ImageImportReplacing {
            name: "base".into(),
            size: Some(1 << 30),
            file: "-".into(),
            replace: false,
        },
    ] {
        out += &line(&r);
    }
    let kernel = KernelInfo {
        name: "default".into(),
        bytes: 5000,
        added_at: 1_800_000_000,
        source: "vmlinux".into(),
        release: Some("6.1.0-28-cloud-amd64".into()),
        vmlinux: true,
        bzimage: true,
        initrd_bytes: Some(900_000),
    };
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
        env: vec!["PATH=/bin".into()],
        cwd: Some("/tmp".into()),
        user: Some("1000:1000".into()),
        tty: Some(WindowSize { rows: 24, cols: 80 }),
        stdin: true,
    };
    for r in [
        Request::VmExec { name: "web".into(), spec: spec.clone() },
        Request::ExecInput(ExecInput::Stdin(b"ls\n".to_vec())),
        Request::ExecInput(ExecInput::CloseStdin),
        Request::ExecInput(ExecInput::Signal(2)),
        Request::ExecInput(ExecInput::Resize(WindowSize { rows: 50, cols: 132 })),
        Request::VmCopyIn { name: "web".into(), path: "/srv".into() },
        Request::VmCopyOut { name: "web".into(), path: "/etc".into() },
        Request::VmWait { name: "web".into(), timeout_ms: 30_000 },
        Request::VmPing { name: "web".into() },
        Request::VmConnect { name: "web".into(), port: 22 },
        Request::VmPortAdd {
            name: "web".into(),
            forward: PortForward { host_addr: "::1".into(), host_port: 8080, guest_port: 80 },
        },
        Request::VmPortRemove { name: "web".into(), host_port: 8080 },
        Request::VmWorkspaceSet { name: "web".into(), workspace: None },
    ] {
        out += &line(&r);
    }
    for r in [
        Response::Exec(ExecEvent::Started { pid: 7 }),
        Response::Exec(ExecEvent::Output { stream: OutputStream::Stderr, data: b"x".to_vec() }),
        Response::Exec(ExecEvent::Exited(ExitStatus::Signal(9))),
        Response::Exec(ExecEvent::Failed { code: 127, message: "nope: not found".into() }),
    ] {
        out += &line(&r);
    }
    for r in [
        AgentRequest::Sync { unix_time_ns: 1_800_000_000_000_000_000, seed: vec![9; 4] },
        AgentRequest::Exec { id: 1, spec },
        AgentRequest::Input { id: 1, input: ExecInput::CloseStdin },
        AgentRequest::OutputAck { id: 1, bytes: 65_536 },
        AgentRequest::CopyIn { id: 2, path: "/srv".into() },
        AgentRequest::CopyOut { id: 3, path: "/etc".into() },
        AgentRequest::Ping { nonce: 5 },
        AgentRequest::PowerOff,
        AgentRequest::Connect { id: 4, port: 22 },
        AgentRequest::Ssh(SshSetup {
            host_key: "-----BEGIN OPENSSH PRIVATE KEY-----\n".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA user".into()],
        }),
    ] {
        out += &line(&r);
    }
    for r in [
        AgentEvent::Ready(ready),
        AgentEvent::Exec { id: 1, event: ExecEvent::Exited(ExitStatus::Code(7)) },
        AgentEvent::StdinAck { id: 1, bytes: 4096 },
        AgentEvent::Pong { nonce: 5 },
        AgentEvent::Ok,
        AgentEvent::Ssh { server: "banger-agent".into() },
        AgentEvent::Error { id: Some(1), error: error.clone() },
    ] {
        out += &line(&r);
    }
    for r in [
        Response::Vm(vm.clone()),
        Response::Vms(vec![vm]),
        Response::Log(b"booted\n".to_vec()),
        Response::Removed(vec!["web".into()]),
        Response::Kernel(kernel.clone()),
        Response::Kernels(vec![kernel]),
    ] {
        out += &line(&r);
    }
    let net = NetworkSpec { bridge: "banger0".into(), host_cidr: "172.30.0.1/24".into() };
    for r in [
        HelperRequest::EnsureNetwork(net.clone()),
        HelperRequest::RemoveNetwork(net),
        HelperRequest::CreateTap { vm: "web".into(), bridge: "banger0".into() },
        HelperRequest::DeleteTap { vm: "web".into() },
        HelperRequest::LaunchVm(LaunchSpec {
            vm: "web".into(),
            kernel: "/k".into(),
            initrd: None,
            disk: Some("/d".into()),
            cpus: 1,
            memory_mib: 128,
            config: Some("{}".into()),
            qemu: None,
        }),
        HelperRequest::LaunchVm(LaunchSpec {
            vm: "web".into(),
            kernel: "/bz".into(),
            initrd: Some("/i".into()),
            disk: Some("/d".into()),
            cpus: 1,
            memory_mib: 256,
            config: None,
            qemu: Some(QemuSpec {
                cmdline: "console=ttyS0".into(),
                tap: Some("bgt0".into()),
                mac: Some("06:00:00:00:00:01".into()),
                kvm: false,
            }),
        }),
        HelperRequest::KillVm { vm: "web".into(), pid: 42 },
        HelperRequest::CleanJail { vm: "web".into() },
    ] {
        out += &line(&r);
    }
    for r in [
        HelperResponse::Ok,
        HelperResponse::Tap { name: "bgt0123456789ab".into() },
        HelperResponse::Launched { pid: 42, jail_root: "/j".into() },
    ] {
        out += &line(&r);
    }
    out += &line(&HelperRequest::Ping);
    out += &line(&HelperRequest::Version);
    out += &line(&HelperResponse::Pong);
    out += &line(&HelperResponse::Version(version));
    out += &line(&HelperResponse::Error(error));
    insta::assert_snapshot!(out);
}
