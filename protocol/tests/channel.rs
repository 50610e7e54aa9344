//! The transport over a real seqpacket socket pair: chunked messages, streams, the handshake,
//! and hostile datagrams.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banger_protocol::channel::{Channel, Client, ClientError, Daemon, WireError, server_handshake};
use banger_protocol::daemon::{Request, Response};
use banger_protocol::frame::{FrameError, MAX_DATAGRAM};
use banger_protocol::handshake::{Hello, ServiceKind};
use banger_protocol::{Error, ErrorKind};
use tokio_seqpacket::UnixSeqpacket;

fn pair() -> (Channel, Channel) {
    let (a, b) = UnixSeqpacket::pair().expect("socketpair");
    (Channel::new(a), Channel::new(b))
}

#[tokio::test]
async fn large_messages_and_streams_cross_a_real_socket() {
    let (a, mut b) = pair();
    let big = Response::Echo((0..1_000_000u32).map(|i| (i * 7) as u8).collect());
    let sender = tokio::spawn(async move {
        a.send(&big, true).await.unwrap();
        a.send(&Response::Pong, false).await.unwrap();
        big
    });
    let (first, more) = b.recv::<Response>().await.unwrap().unwrap();
    assert!(more);
    let (second, more) = b.recv::<Response>().await.unwrap().unwrap();
    assert!(!more);
    assert_eq!(second, Response::Pong);
    assert_eq!(first, sender.await.unwrap());
}

#[tokio::test]
async fn oversized_and_empty_datagrams_are_errors() {
    let (a, mut b) = pair();
    a.send_raw(&vec![0u8; MAX_DATAGRAM + 1]).await.unwrap();
    assert!(matches!(b.recv::<Request>().await, Err(WireError::Frame(FrameError::Oversized))));
    a.send_raw(&[0x40, 1]).await.unwrap();
    assert!(matches!(b.recv::<Request>().await, Err(WireError::Frame(FrameError::UnknownFlags(0x40)))));
    // A truncated bincode value: a string that claims 200 bytes and carries 3.
    a.send_raw(&[0, 200, b'a', b'b', b'c']).await.unwrap();
    assert!(matches!(b.recv::<String>().await, Err(WireError::Codec(_))));
    drop(a);
    assert!(b.recv::<Request>().await.unwrap().is_none());
}

#[tokio::test]
async fn handshake_agrees_and_refuses() {
    let server_hello = Hello::new(ServiceKind::Daemon, "bangerd");
    let (a, mut b) = pair();
    let ours = server_hello.clone();
    let server = tokio::spawn(async move { server_handshake(&mut b, &ours, Ok(())).await });
    let client = Client::<Daemon>::handshake(a, Hello::new(ServiceKind::Daemon, "banger")).await.unwrap();
    assert_eq!(client.version, server.await.unwrap().unwrap());

    let (a, mut b) = pair();
    let ours = server_hello.clone();
    let denied = Error::new(ErrorKind::PermissionDenied, "uid 7 is not allowed");
    let refusal = denied.clone();
    let server = tokio::spawn(async move { server_handshake(&mut b, &ours, Err(refusal)).await });
    match Client::<Daemon>::handshake(a, Hello::new(ServiceKind::Daemon, "banger")).await {
        Err(ClientError::Refused(e)) => assert_eq!(e, denied),
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.version)),
    }
    assert_eq!(server.await.unwrap(), Err(denied));
}

#[tokio::test]
async fn a_descriptor_travels_with_its_message() {
    use std::io::{Read, Write};
    let (a, mut b) = pair();
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"through the pipe").unwrap();
    drop(writer);
    let big =
        Request::Chaos(banger_protocol::daemon::ChaosAction::Echo { payload: vec![9; 100_000], repeat: 1 });
    a.send_with_fd(&big, std::os::fd::AsFd::as_fd(&reader)).await.unwrap();
    let (got, _) = b.recv::<Request>().await.unwrap().unwrap();
    assert_eq!(got, big, "a chunked message carries its descriptor on the first chunk");
    let mut received = std::fs::File::from(b.take_fd().expect("the descriptor arrived"));
    let mut text = String::new();
    received.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through the pipe");
    assert!(b.take_fd().is_none(), "taken once");
    let _ = reader.read(&mut [0u8; 1]);
}
