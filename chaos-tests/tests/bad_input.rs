//! Hostile clients on both sockets: every bad datagram gets an error reply (where one can be
//! sent) and a closed connection, never a crash, and other clients keep being served.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use chaos_tests::protocol::channel::{Channel, Client, Daemon, Helper, Service};
use chaos_tests::protocol::codec::encode;
use chaos_tests::protocol::daemon::{ChaosAction, Request, Response};
use chaos_tests::protocol::frame::{CONTINUED, MAX_BODY, MAX_DATAGRAM};
use chaos_tests::protocol::handshake::{Hello, PROTOCOL_MAX, PROTOCOL_MIN, ServerHello, ServiceKind};
use chaos_tests::protocol::helper::{HelperRequest, HelperResponse};
use chaos_tests::protocol::{Error, ErrorKind};
use chaos_tests::{TestDaemon, TestHelper, capable, is_root, rss_kib};
use tokio_seqpacket::UnixSeqpacket;

async fn raw(socket: &std::path::Path) -> Channel {
    Channel::new(UnixSeqpacket::connect(socket).await.unwrap())
}

/// Sends `datagram` as the first message and expects a handshake refusal of `kind`, then EOF.
async fn refused_at_handshake(socket: &std::path::Path, datagram: &[u8], kind: ErrorKind) -> Error {
    let mut c = raw(socket).await;
    c.send_raw(datagram).await.unwrap();
    let (reply, _) = c.recv::<ServerHello>().await.unwrap().expect("a handshake reply");
    let err = reply.result.expect_err("the handshake is refused");
    assert_eq!(err.kind, kind, "{err:?}");
    assert!(c.recv::<ServerHello>().await.unwrap().is_none(), "the connection is closed after a refusal");
    err
}

fn framed<T: serde::Serialize>(value: &T) -> Vec<u8> {
    [&[0u8][..], &encode(value).unwrap()].concat()
}

/// After a good handshake, sends `datagrams` and expects a protocol error reply, then EOF.
async fn refused_after_handshake<S: Service>(socket: &std::path::Path, datagrams: &[Vec<u8>])
where
    S::Response: std::fmt::Debug,
{
    let client = Client::<S>::connect(socket, "hostile").await.unwrap();
    let mut c = client.into_channel();
    for d in datagrams {
        // The server may close before the last datagrams; that is fine.
        if c.send_raw(d).await.is_err() {
            break;
        }
    }
    let (reply, _) = c
        .recv::<S::Response>()
        .await
        .unwrap_or_else(|e| {
            panic!("after {} datagram(s) of {} bytes: {e}", datagrams.len(), datagrams[0].len())
        })
        .expect("an error reply before closing");
    let text = format!("{reply:?}");
    assert!(text.contains("Error") && text.contains("Protocol"), "expected a protocol error, got {text}");
    assert_closed::<S>(&mut c).await;
}

/// The server has closed: end-of-stream, or a reset when it left our extra datagrams unread.
async fn assert_closed<S: Service>(c: &mut Channel) {
    use chaos_tests::protocol::channel::WireError;
    match c.recv::<S::Response>().await {
        Ok(None) => {}
        Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Some(_)) => panic!("the server sent more after its error reply"),
        Err(e) => panic!("expected the connection to close, got {e}"),
    }
}

async fn hostile_suite<S: Service>(socket: &std::path::Path, kind: ServiceKind, big_request: Vec<u8>)
where
    S::Response: std::fmt::Debug,
{
    // Random bytes instead of a Hello.
    refused_at_handshake(socket, &[0, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef], ErrorKind::Protocol).await;
    // An HTTP request instead of a Hello.
    refused_at_handshake(socket, b"\0GET / HTTP/1.1\r\n\r\n", ErrorKind::Protocol).await;
    // The right shape with the wrong magic.
    let mut hello = Hello::new(kind, "hostile");
    hello.magic = *b"NOTBANGR";
    let err = refused_at_handshake(socket, &framed(&hello), ErrorKind::Protocol).await;
    assert!(err.message.contains("magic"), "{err:?}");
    // A client from the future.
    let mut hello = Hello::new(kind, "banger 99.0.0");
    hello.min_version = 99;
    hello.max_version = 100;
    let err = refused_at_handshake(socket, &framed(&hello), ErrorKind::VersionMismatch).await;
    let ours = format!("{PROTOCOL_MIN}..={PROTOCOL_MAX}");
    assert!(err.message.contains("99..=100") && err.message.contains(&ours), "names both ranges: {err:?}");
    assert!(err.hint.is_some_and(|h| h.starts_with("upgrade ")), "says which side to upgrade");

    // A truncated frame: a valid request cut short (or, for one-byte requests, an unknown variant).
    let truncated =
        if big_request.len() > 4 { big_request[..big_request.len() / 2].to_vec() } else { vec![0, 200] };
    refused_after_handshake::<S>(socket, &[truncated]).await;
    // An oversized datagram.
    refused_after_handshake::<S>(socket, &[vec![0u8; MAX_DATAGRAM + 100]]).await;
    // Unknown flag bits.
    refused_after_handshake::<S>(socket, &[vec![0x80, 0]]).await;
    // A message that claims a 1 TiB byte vector (variant 0 of a struct wrapper is irrelevant:
    // the length prefix is read first and refused against the decode limit).
    let mut huge = vec![0u8, 4, 3, 0xFD];
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    refused_after_handshake::<S>(socket, &[huge]).await;
    // Chunks that never end, past the 16 MiB reassembly cap.
    let chunk = [&[CONTINUED][..], &vec![7u8; MAX_BODY][..]].concat();
    refused_after_handshake::<S>(socket, &vec![chunk; 16 * 1024 * 1024 / MAX_BODY + 2]).await;
    // Trailing bytes after a valid request.
    let mut trailing = big_request.clone();
    trailing.truncate(1);
    trailing.extend_from_slice(&encode(&0u8).unwrap());
    trailing.extend_from_slice(&[1, 2, 3]);
    refused_after_handshake::<S>(socket, &[trailing]).await;

    // An empty datagram reads as end-of-stream: the server just closes.
    let client = Client::<S>::connect(socket, "hostile").await.unwrap();
    let mut c = client.into_channel();
    c.send_raw(&[]).await.unwrap();
    assert_closed::<S>(&mut c).await;
}

#[tokio::test]
async fn daemon_survives_hostile_clients() {
    let d = TestDaemon::start().await;
    let mut bystander = d.client().await;
    let before = rss_kib(d.pid());
    let echo = framed(&Request::Chaos(ChaosAction::Echo { payload: vec![1; 100], repeat: 1 }));
    for _ in 0..5 {
        hostile_suite::<Daemon>(&d.socket, ServiceKind::Daemon, echo.clone()).await;
    }
    let after = rss_kib(d.pid());
    assert_eq!(
        bystander.call(&Request::Ping).await.unwrap(),
        Response::Pong,
        "other clients are still served"
    );
    assert_eq!(d.call(&Request::Ping).await, Response::Pong, "new clients are still served");
    assert!(after < before + 32 * 1024, "RSS jumped from {before} KiB to {after} KiB");
    eprintln!("bangerd RSS {before} KiB before, {after} KiB after 5 hostile rounds");
}

#[tokio::test]
async fn helper_survives_hostile_clients() {
    if !capable("root", is_root(), "banger-helper must run as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = TestHelper::start(&dir.path().join("helper.sock"), 0).await;
    let mut bystander = Client::<Helper>::connect(&h.socket, "test").await.unwrap();
    let before = rss_kib(h.pid());
    for _ in 0..5 {
        hostile_suite::<Helper>(&h.socket, ServiceKind::Helper, framed(&HelperRequest::Version)).await;
    }
    let after = rss_kib(h.pid());
    assert_eq!(bystander.call(&HelperRequest::Ping).await.unwrap(), HelperResponse::Pong);
    assert!(after < before + 32 * 1024, "RSS jumped from {before} KiB to {after} KiB");
}

#[tokio::test]
async fn the_cli_socket_refuses_a_helper_client_and_vice_versa() {
    let d = TestDaemon::start().await;
    let err = match Client::<Helper>::connect(&d.socket, "confused").await {
        Err(chaos_tests::protocol::channel::ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.version)),
    };
    assert!(err.message.contains("belongs to bangerd"), "{err:?}");
}

#[tokio::test]
async fn the_owner_past_the_cap_takes_the_seat_of_the_longest_idle_connection() {
    // 1024 open connections need more descriptors than the common soft limit, in this process
    // and in the daemon it spawns (which inherits the limit).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if !capable("fds", hard >= 4096, &format!("the hard RLIMIT_NOFILE is {hard}; 4096 are needed")) {
        return;
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 4096, hard).unwrap();
    let d = TestDaemon::start().await;
    let mut held = vec![];
    for _ in 0..1024 {
        held.push(d.client().await);
    }
    // Other uids past their limits are refused (tests/connections.rs); the owner gets in.
    let mut newest = Client::<Daemon>::connect(&d.socket, "one more").await.expect("the owner gets in");
    assert_eq!(newest.call(&Request::Ping).await.unwrap(), Response::Pong);
    // The connection idle the longest made room, and says so when used.
    match held[0].call(&Request::Ping).await {
        Ok(Response::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::Unavailable);
            assert!(e.message.contains("(it serves 1024 at most)"), "{e:?}");
        }
        other => panic!("expected the reason it was closed, got {other:?}"),
    }
    assert_eq!(held[1].call(&Request::Ping).await.unwrap(), Response::Pong, "only one made room");
}
