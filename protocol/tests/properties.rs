//! Property tests: every message survives encode → split → reassemble → decode, and no sequence
//! of bytes makes the decoder panic or allocate past its cap.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banger_protocol::codec::{decode, encode};
use banger_protocol::daemon::{ChaosAction, Request, Response, VersionInfo};
use banger_protocol::frame::{MAX_DATAGRAM, Reassembler, split};
use banger_protocol::handshake::Hello;
use banger_protocol::{Error, ErrorKind};
use proptest::prelude::*;

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Version),
        Just(Request::Status),
        Just(Request::Shutdown),
        ".{0,40}".prop_map(|actor| Request::Chaos(ChaosAction::Panic { actor })),
        (".{0,40}", any::<u32>())
            .prop_map(|(actor, times)| Request::Chaos(ChaosAction::FailStarts { actor, times })),
        (prop::collection::vec(any::<u8>(), 0..200_000), any::<u32>())
            .prop_map(|(payload, repeat)| Request::Chaos(ChaosAction::Echo { payload, repeat })),
    ]
}

fn kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![Just(ErrorKind::Protocol), Just(ErrorKind::NotFound), Just(ErrorKind::Internal)]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Pong),
        Just(Response::Ok),
        (".{0,30}", any::<u32>(), any::<bool>()).prop_map(|(software, protocol, chaos)| Response::Version(
            VersionInfo { software, protocol, chaos }
        )),
        prop::collection::vec(any::<u8>(), 0..150_000).prop_map(Response::Echo),
        (kind(), ".{0,100}", proptest::option::of(".{0,100}"))
            .prop_map(|(kind, message, hint)| Response::Error(Error { kind, message, hint })),
    ]
}

fn through_frames(bytes: &[u8], more: bool) -> (Vec<u8>, bool) {
    let mut r = Reassembler::default();
    let mut done = None;
    for (flags, body) in split(bytes, more).expect("splits") {
        let datagram = [&[flags][..], body].concat();
        assert!(datagram.len() <= MAX_DATAGRAM);
        assert!(done.is_none(), "a message completed before its last chunk");
        done = r.push(&datagram).expect("valid chunk");
    }
    let m = done.expect("last chunk completes the message");
    (m.bytes, m.more)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn requests_round_trip(req in request(), more in any::<bool>()) {
        let (bytes, got_more) = through_frames(&encode(&req).unwrap(), more);
        prop_assert_eq!(got_more, more);
        prop_assert_eq!(decode::<Request>(&bytes).unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let (bytes, _) = through_frames(&encode(&resp).unwrap(), false);
        prop_assert_eq!(decode::<Response>(&bytes).unwrap(), resp);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Response>(&bytes);
        let _ = decode::<Hello>(&bytes);
        let mut r = Reassembler::default();
        let _ = r.push(&bytes);
    }

    #[test]
    fn arbitrary_datagram_sequences_never_exceed_cap(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 0..64)
    ) {
        let mut r = Reassembler::with_cap(16 * 1024);
        for d in &datagrams {
            match r.push(d) {
                Ok(Some(m)) => prop_assert!(m.bytes.len() <= 16 * 1024),
                Ok(None) => {}
                Err(_) => r = Reassembler::with_cap(16 * 1024),
            }
        }
    }
}
