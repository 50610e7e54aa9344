//! The router against real actors: with a peer gone, every request it would answer fails with
//! the restarting error, never an empty answer.

use protocol::ErrorKind;
use protocol::channel::Channel;
use protocol::daemon::{Request, Response};
use tokio_seqpacket::UnixSeqpacket;

use super::*;

/// Routes `request` with no actor running (every peer restarting) and returns the reply.
async fn routed(request: Request) -> Response {
    let dir = tempfile::tempdir().unwrap();
    let deps = Deps { config: crate::config::Config::for_tests(dir.path()), peers: Peers::default() };
    let (ours, theirs) = UnixSeqpacket::pair().unwrap();
    let (mut server, mut client) = (Channel::new(ours), Channel::new(theirs));
    let mut replies = Replies { chan: &mut server, stall: None };
    route(&mut replies, request, None, protocol::handshake::PROTOCOL_MAX, &deps).await.unwrap();
    client.recv::<Response>().await.unwrap().unwrap().0
}

#[actix_rt::test]
async fn requests_for_a_restarting_actor_fail_with_advice() {
    for (request, actor) in [
        (Request::VmList { all: true }, "VM manager"),
        (Request::VmPrune, "VM manager"),
        (Request::ImageRemove { name: "base".into(), force: false }, "VM manager"),
        (Request::KernelRemove { name: "default".into() }, "VM manager"),
        (Request::SystemUninstall, "VM manager"),
        (Request::VmLogs { name: "web".into(), follow: true }, "VM manager"),
        (Request::ImageList, "image cache"),
        (Request::CachePrune { dry_run: true }, "image cache"),
        (Request::KernelList, "kernel store"),
        (Request::Status, "supervisor"),
    ] {
        let shown = format!("{request:?}");
        let Response::Error(e) = routed(request).await else { panic!("{shown}: not an error") };
        assert_eq!(e.kind, ErrorKind::Unavailable, "{shown}");
        assert_eq!(e.message, format!("the {actor} is restarting"), "{shown}");
        assert_eq!(e.hint.as_deref(), Some("retry in a moment"), "{shown}");
    }
}

#[actix_rt::test]
async fn an_import_without_its_file_is_refused() {
    let Response::Error(e) = routed(Request::KernelImport { name: "k".into(), file: "f".into() }).await
    else {
        panic!("not an error")
    };
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("needs the file passed as a descriptor"), "{}", e.message);
}

#[actix_rt::test]
async fn ping_and_version_are_answered_by_the_connection() {
    assert_eq!(routed(Request::Ping).await, Response::Pong);
    assert!(
        matches!(routed(Request::Version).await, Response::Version(v) if v.software.starts_with("bangerd "))
    );
}
