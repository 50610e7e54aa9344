//! Encoded sample messages, byte for byte. If this fails, the wire format changed: either the
//! change was a mistake, or it is deliberate and needs a protocol version bump
//! (`docs/protocol.md`) before the snapshot is updated (`cargo insta review`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banger_protocol::codec::encode;
use banger_protocol::daemon::{
    ActorState, ActorStatus, ChaosAction, Request, Response, StatusReport, VersionInfo,
};
use banger_protocol::handshake::{Hello, MAGIC, ServerHello, ServiceKind};
use banger_protocol::helper::{HelperRequest, HelperResponse};
use banger_protocol::image::{
    Credentials, ImageInfo, ImageSource, LayerProgress, PruneReport, PullEvent, PullRequest,
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
    out += &line(&HelperRequest::Ping);
    out += &line(&HelperRequest::Version);
    out += &line(&HelperResponse::Pong);
    out += &line(&HelperResponse::Version(version));
    out += &line(&HelperResponse::Error(error));
    insta::assert_snapshot!(out);
}
