//! Every message that crosses a banger process boundary, and the wire codec that carries it.
//!
//! - [`daemon`]: what `banger` (and tests) send to `bangerd`, and what comes back.
//! - [`helper`]: what `bangerd` sends to the root `banger-helper`.
//! - [`image`]: image pulls, listings and cache prunes.
//! - [`vm`]: VMs and kernels.
//! - [`handshake`]: the first message both ways (magic, service, version range).
//! - [`frame`]: datagram framing: chunking, reassembly, stream flags, size caps.
//! - [`codec`]: bincode with a byte limit and no trailing bytes.
//! - [`channel`]: the async seqpacket transport, client and server halves.
//!
//! The rules for changing any of this are in `docs/protocol.md`.

pub mod channel;
pub mod codec;
pub mod daemon;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod helper;
pub mod image;
pub mod paths;
pub mod vm;

pub use error::{Error, ErrorKind};

/// The software version of every banger binary (they are released together).
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
