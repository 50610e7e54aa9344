//! The typed error every reply can carry: a kind the CLI maps to advice and an exit code, a
//! message saying what went wrong, and a hint saying what to do about it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What class of failure this is. Append new kinds at the end (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer sent bytes that are not a valid message for this protocol.
    Protocol,
    /// The two sides share no protocol version.
    VersionMismatch,
    /// The peer's uid is not allowed on this socket.
    PermissionDenied,
    /// The request names something that does not exist.
    NotFound,
    /// The request is well-formed but its content is not acceptable.
    InvalidInput,
    /// The object is in a state that does not allow the request.
    Conflict,
    /// A part of banger the request needs is not running (yet).
    Unavailable,
    /// A bug or an unexpected host failure.
    Internal,
}

impl ErrorKind {
    /// The process exit code the CLI uses for this kind (documented in `docs/cli.md`).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::InvalidInput => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::PermissionDenied => 5,
            ErrorKind::Unavailable => 6,
            ErrorKind::VersionMismatch => 7,
            ErrorKind::Protocol => 8,
        }
    }
}

/// A failure with a kind, a message, and (where there is one) advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
