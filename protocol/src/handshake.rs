//! The first message both ways on every banger socket.
//!
//! The client sends a [`Hello`]; the server answers with a [`ServerHello`]: its own `Hello`
//! and either the version both will speak or the reason it refuses (wrong magic, wrong service,
//! no shared version, peer not allowed). A refused connection is closed after that reply.
//! `Hello`'s layout must never change: it is how two different versions find out they differ.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// First bytes of every `Hello`, so that a stray client is told what it reached.
pub const MAGIC: [u8; 8] = *b"BANGER\x00\x01";

/// The protocol versions this build speaks, oldest first.
pub const PROTOCOL_MIN: u32 = 6;
pub const PROTOCOL_MAX: u32 = 6;

/// Which server a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    Daemon,
    Helper,
    /// `banger-agent`, in a guest. Since protocol 5.
    Agent,
}

impl ServiceKind {
    pub fn program(self) -> &'static str {
        match self {
            ServiceKind::Daemon => "bangerd",
            ServiceKind::Helper => "banger-helper",
            ServiceKind::Agent => "banger-agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub service: ServiceKind,
    pub min_version: u32,
    pub max_version: u32,
    /// Program name and software version, for error messages and logs.
    pub software: String,
}

impl Hello {
    pub fn new(service: ServiceKind, program: &str) -> Self {
        Hello {
            magic: MAGIC,
            service,
            min_version: PROTOCOL_MIN,
            max_version: PROTOCOL_MAX,
            software: format!("{program} {}", crate::SOFTWARE_VERSION),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub hello: Hello,
    /// The version both sides speak from now on, or why the server refuses.
    pub result: Result<u32, Error>,
}

/// The version the server picks for a client, or the refusal it sends. `ours` is the server's.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<u32, Error> {
    if theirs.magic != MAGIC {
        return Err(Error::protocol("the peer is not a banger client (bad magic)"));
    }
    if theirs.service != ours.service {
        return Err(Error::protocol(format!(
            "this socket belongs to {}, but the client expected {}",
            ours.service.program(),
            theirs.service.program()
        ))
        .with_hint("check the --socket path"));
    }
    let low = ours.min_version.max(theirs.min_version);
    let high = ours.max_version.min(theirs.max_version);
    if low > high {
        return Err(version_mismatch(theirs, ours));
    }
    Ok(high)
}

/// The refusal for two version ranges that do not meet, with which side to upgrade.
pub fn version_mismatch(client: &Hello, server: &Hello) -> Error {
    let (older, newer) = if client.max_version < server.min_version {
        (&client.software, &server.software)
    } else {
        (&server.software, &client.software)
    };
    Error::new(
        ErrorKind::VersionMismatch,
        format!(
            "protocol version mismatch: {} speaks {}..={}, {} speaks {}..={}",
            client.software,
            client.min_version,
            client.max_version,
            server.software,
            server.min_version,
            server.max_version
        ),
    )
    .with_hint(format!("upgrade {older} to match {newer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_build_agrees_on_newest_version() {
        let h = Hello::new(ServiceKind::Daemon, "banger");
        assert_eq!(negotiate(&h, &h), Ok(PROTOCOL_MAX));
    }

    #[test]
    fn too_new_client_is_told_to_upgrade_the_daemon() {
        let server = Hello::new(ServiceKind::Daemon, "bangerd");
        let mut client = Hello::new(ServiceKind::Daemon, "banger");
        client.min_version = 99;
        client.max_version = 100;
        client.software = "banger 9.0.0".into();
        let err = negotiate(&server, &client).unwrap_err();
        assert_eq!(err.kind, ErrorKind::VersionMismatch);
        assert!(err.message.contains("99..=100"), "{}", err.message);
        assert!(err.message.contains(&format!("{PROTOCOL_MIN}..={PROTOCOL_MAX}")));
        assert_eq!(err.hint.as_deref(), Some(&*format!("upgrade {} to match banger 9.0.0", server.software)));
    }

    #[test]
    fn wrong_magic_and_wrong_service_are_refused() {
        let server = Hello::new(ServiceKind::Helper, "banger-helper");
        let mut client = Hello::new(ServiceKind::Helper, "bangerd");
        client.magic = *b"GET / HT";
        assert_eq!(negotiate(&server, &client).unwrap_err().kind, ErrorKind::Protocol);
        let client = Hello::new(ServiceKind::Daemon, "banger");
        let err = negotiate(&server, &client).unwrap_err();
        assert!(err.message.contains("belongs to banger-helper"), "{}", err.message);
    }
}
