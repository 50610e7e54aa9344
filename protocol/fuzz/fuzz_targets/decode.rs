//! Arbitrary bytes through everything a peer's datagrams reach: the reassembler (the input cut
//! into datagrams at 0xFF bytes) and every message type's decoder. None may panic, and no
//! allocation may exceed the decode limit (libFuzzer's -rss_limit_mb catches that).
#![no_main]

use banger_protocol::codec::decode;
use banger_protocol::daemon::{Request, Response};
use banger_protocol::frame::Reassembler;
use banger_protocol::handshake::{Hello, ServerHello};
use banger_protocol::helper::{HelperRequest, HelperResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Hello>(data);
    let _ = decode::<ServerHello>(data);
    let _ = decode::<Request>(data);
    let _ = decode::<Response>(data);
    let _ = decode::<HelperRequest>(data);
    let _ = decode::<HelperResponse>(data);
    let mut r = Reassembler::with_cap(1 << 20);
    for datagram in data.split(|&b| b == 0xFF) {
        match r.push(datagram) {
            Ok(Some(m)) => {
                let _ = decode::<Request>(&m.bytes);
            }
            Ok(None) => {}
            Err(_) => r = Reassembler::with_cap(1 << 20),
        }
    }
});
