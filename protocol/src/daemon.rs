//! The `banger` ↔ `bangerd` interface. [`Request`] is the whole of what the daemon can be asked;
//! the daemon's connection actor only routes it. Append variants, never reorder or change one
//! (see `docs/protocol.md`); the snapshot test in `tests/wire_snapshot.rs` guards this.

use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; any time after the handshake. Answered with [`Response::Pong`].
    Ping,
    /// The daemon's software and protocol version. Answered with [`Response::Version`].
    Version,
    /// Uptime, version and the actor tree with states and restart counts.
    /// Answered with [`Response::Status`].
    Status,
    /// Graceful shutdown, the same as SIGTERM. Answered with [`Response::Ok`] before the
    /// shutdown starts; the socket closes once every actor has stopped.
    Shutdown,
    /// Fault injection for `chaos-tests/`. Only a daemon built with the `chaos` feature accepts
    /// it; any other answers [`Response::Error`] with kind `InvalidInput`.
    Chaos(ChaosAction),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChaosAction {
    /// Make the named supervised actor panic inside a message handler.
    Panic { actor: String },
    /// Make the named actor stop itself cleanly (the supervisor restarts it all the same).
    Stop { actor: String },
    /// Make the named actor panic as it starts, for its next `times` starts.
    FailStarts { actor: String, times: u32 },
    /// Answer with `repeat` [`Response::Echo`] frames carrying `payload` (tests chunking and
    /// streaming over the real socket).
    Echo { payload: Vec<u8>, repeat: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Version(VersionInfo),
    Status(StatusReport),
    /// The request was accepted and has nothing else to say.
    Ok,
    Echo(Vec<u8>),
    Error(Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// e.g. `bangerd 0.1.0`.
    pub software: String,
    /// The protocol version in use on this connection.
    pub protocol: u32,
    /// Whether fault injection is compiled in.
    pub chaos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: VersionInfo,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket: String,
    pub state_dir: String,
    /// The root supervisor, whose children are the daemon's actors.
    pub root: ActorStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorStatus {
    pub name: String,
    pub state: ActorState,
    /// How many times the supervisor has restarted it since the daemon started.
    pub restarts: u32,
    /// Why it last exited, if it ever did.
    pub last_exit: Option<String>,
    /// What the actor itself reports (connections served, helper link, …).
    pub detail: Option<String>,
    pub children: Vec<ActorStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorState {
    Starting,
    Running,
    /// Exited; the supervisor starts it again after `in_ms`.
    Restarting {
        in_ms: u64,
    },
    Stopping,
    Stopped,
}

impl std::fmt::Display for ActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActorState::Starting => f.write_str("starting"),
            ActorState::Running => f.write_str("running"),
            ActorState::Restarting { in_ms } => write!(f, "restarting in {in_ms} ms"),
            ActorState::Stopping => f.write_str("stopping"),
            ActorState::Stopped => f.write_str("stopped"),
        }
    }
}
