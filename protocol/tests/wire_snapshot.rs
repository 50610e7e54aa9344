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
