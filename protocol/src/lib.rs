//! Every message that crosses a banger process boundary, and the wire codec that carries it.
//!
//! - [`daemon`]: what `banger` (and tests) send to `bangerd`, and what comes back.
//! - [`helper`]: what `bangerd` sends to the root `banger-helper`.
//! - [`image`]: image pulls, listings and cache prunes.
//! - [`vm`]: VMs and kernels.
//! - [`exec`]: running a process in a guest (shared by the CLI and agent protocols).
//! - [`agent`]: what `bangerd` sends to `banger-agent` in a guest, and what comes back.
//! - [`handshake`]: the first message both ways (magic, service, version range).
//! - [`frame`]: datagram framing: chunking, reassembly, stream flags, size caps.
//! - [`codec`]: bincode with a byte limit and no trailing bytes.
//! - [`stream`]: the same framing over a byte stream (the agent's channel).
//! - [`channel`]: the async seqpacket transport, client and server halves (feature `channel`;
//!   the agent, which has no async runtime, builds without it).
//!
//! The rules for changing any of this are in `docs/protocol.md`.

pub mod agent;
#[cfg(feature = "channel")]
pub mod channel;
pub mod codec;
pub mod daemon;
pub mod error;
pub mod exec;
pub mod frame;
pub mod handshake;
pub mod helper;
pub mod image;
#[cfg(feature = "channel")]
pub mod paths;
pub mod stream;
pub mod vm;

pub use error::{Error, ErrorKind};

/// The software version of every banger binary (they are released together).
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
