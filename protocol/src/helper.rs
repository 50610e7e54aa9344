//! The `bangerd` ↔ `banger-helper` interface. The helper runs as root, so every field of every
//! request is validated there again, however the daemon built it. Privileged operations (taps,
//! bridge, nft, jailer) are appended here as they are built.

use serde::{Deserialize, Serialize};

use crate::daemon::VersionInfo;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Liveness check. Answered with [`HelperResponse::Pong`].
    Ping,
    /// The helper's software and protocol version.
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperResponse {
    Pong,
    Version(VersionInfo),
    Error(Error),
}
