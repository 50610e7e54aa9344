//! Reaching the daemon, with every way that can fail turned into advice.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group};
use protocol::channel::{Client, ClientError, Daemon, WireError, is_not_running, is_permission_denied};
use protocol::daemon::{Request, Response};
use protocol::{Error, ErrorKind};

pub type DaemonClient = Client<Daemon>;

pub async fn connect(socket: &Path) -> Result<DaemonClient, Error> {
    Client::connect(socket, "banger").await.map_err(|e| advise(socket, e))
}

/// Sends one request; an `Error` reply becomes `Err`.
pub async fn call(client: &mut DaemonClient, socket: &Path, request: &Request) -> Result<Response, Error> {
    match client.call(request).await.map_err(|e| advise(socket, e))? {
        Response::Error(e) => Err(e),
        other => Ok(other),
    }
}

/// Refuses early when the daemon speaks a protocol older than the one that brought `what`.
pub fn require(client: &DaemonClient, since: u32, what: &str) -> Result<(), Error> {
    if client.version < since {
        return Err(Error::new(
            ErrorKind::VersionMismatch,
            format!("{} has no support for {what}", client.server.software),
        )
        .with_hint("upgrade bangerd to match this banger"));
    }
    Ok(())
}

pub fn unexpected(reply: &Response) -> Error {
    Error::new(ErrorKind::Protocol, format!("the daemon sent an unexpected reply: {reply:?}"))
        .with_hint("the client and daemon may be out of step; compare `banger version`")
}

/// Turns a transport failure into what the user should do about it.
pub fn advise(socket: &Path, err: ClientError) -> Error {
    let shown = socket.display();
    if is_not_running(&err) {
        return Error::new(
            ErrorKind::Unavailable,
            format!("bangerd is not running (nothing answers on {shown})"),
        )
        .with_hint("start it with `banger daemon start`");
    }
    if is_permission_denied(&err) {
        if let ClientError::Refused(e) = err {
            return e;
        }
        let group = std::fs::metadata(socket)
            .ok()
            .and_then(|m| Group::from_gid(Gid::from_raw(m.gid())).ok().flatten())
            .map(|g| g.name);
        let hint = match group {
            Some(g) if g != "root" => {
                format!("join group {g}: `sudo usermod -aG {g} $USER`, then log in again")
            }
            _ => "this daemon belongs to another user; start your own with `banger daemon start`, \
                  or ask its owner to run it with `--group`"
                .to_string(),
        };
        return Error::new(ErrorKind::PermissionDenied, format!("permission denied on {shown}"))
            .with_hint(hint);
    }
    match err {
        ClientError::Refused(e) => e,
        ClientError::Connect { source, .. } => {
            Error::new(ErrorKind::Unavailable, format!("cannot connect to {shown}: {source}"))
        }
        ClientError::Closed => {
            Error::new(ErrorKind::Unavailable, "bangerd closed the connection before answering")
                .with_hint("it may be shutting down; see `banger daemon status`")
        }
        // Gone without a word (a daemon that says why is reported by its own error).
        ClientError::Wire(WireError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::NotConnected
            ) =>
        {
            Error::new(ErrorKind::Unavailable, format!("bangerd on {shown} closed the connection ({e})"))
                .with_hint("run the command again; if it keeps happening, see `banger daemon status`")
        }
        other => Error::new(ErrorKind::Protocol, format!("talking to bangerd on {shown}: {other}"))
            .with_hint("the client and daemon may be out of step; compare `banger version`"),
    }
}
