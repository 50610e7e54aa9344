//! The async seqpacket transport: a [`Channel`] moves whole messages, [`Client`] adds the
//! client side of the handshake and request/reply, [`server_handshake`] the server side.

use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};
use tokio_seqpacket::{UCred, UnixSeqpacket};

use crate::codec::{self, CodecError};
use crate::daemon::{Request, Response};
use crate::error::{Error, ErrorKind};
use crate::frame::{self, FrameError, MAX_DATAGRAM, Reassembler};
use crate::handshake::{self, Hello, ServerHello, ServiceKind};
use crate::helper::{HelperRequest, HelperResponse};

/// How long a server waits for a new connection's `Hello`. A real client sends it as soon as
/// it connects; a peer that says nothing would otherwise hold a connection slot for free.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a client that finds its connection closed waits for the server's last word.
const FAREWELL_WAIT: Duration = Duration::from_millis(200);

/// Whether an I/O error means the peer has closed its end.
fn peer_closed(err: &WireError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected};
    matches!(err, WireError::Io(e) if matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected))
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message: {0}")]
    Codec(#[from] CodecError),
    #[error("the peer closed the connection in the middle of a message")]
    ClosedMidMessage,
}

impl WireError {
    /// The error to send the peer before closing, when it was the peer's fault.
    pub fn to_reply(&self) -> Option<Error> {
        match self {
            WireError::Io(_) | WireError::ClosedMidMessage => None,
            WireError::Frame(e) => Some(Error::protocol(e.to_string())),
            WireError::Codec(e) => Some(Error::protocol(e.to_string())),
        }
    }
}

/// A connected socket that sends and receives whole messages, and file descriptors with them.
pub struct Channel {
    sock: UnixSeqpacket,
    rx: Box<[u8]>,
    reassembler: Reassembler,
    /// A descriptor that came with the last message (SCM_RIGHTS); at most one is kept.
    fd: Option<OwnedFd>,
}

/// Room for one passed descriptor's control message.
const ANCILLARY: usize = 64;

impl Channel {
    pub fn new(sock: UnixSeqpacket) -> Self {
        Channel {
            sock,
            rx: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            reassembler: Reassembler::default(),
            fd: None,
        }
    }

    /// The descriptor that came with the last message received, if any.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// Sends one message with `fd` attached to its first datagram.
    pub async fn send_with_fd<T: Serialize>(&self, message: &T, fd: BorrowedFd<'_>) -> Result<(), WireError> {
        let bytes = codec::encode(message)?;
        let fds = [fd];
        for (i, (flags, body)) in frame::split(&bytes, false)?.into_iter().enumerate() {
            let flags = [flags];
            let mut space = [0u8; ANCILLARY];
            let mut ancillary = AncillaryMessageWriter::new(&mut space);
            if i == 0 {
                ancillary.add_fds(&fds).map_err(|_| std::io::Error::other("no room for the descriptor"))?;
            }
            let slices = [IoSlice::new(&flags), IoSlice::new(body)];
            let sent = self.sock.send_vectored_with_ancillary(&slices, &mut ancillary).await?;
            if sent != body.len() + 1 {
                return Err(WireError::Io(std::io::Error::other("short seqpacket send")));
            }
        }
        Ok(())
    }

    pub fn peer_cred(&self) -> std::io::Result<UCred> {
        self.sock.peer_cred()
    }

    /// Sends one message; `more` says another message of the same reply stream follows.
    pub async fn send<T: Serialize>(&self, message: &T, more: bool) -> Result<(), WireError> {
        let bytes = codec::encode(message)?;
        for (flags, body) in frame::split(&bytes, more)? {
            let flags = [flags];
            let sent = self.sock.send_vectored(&[IoSlice::new(&flags), IoSlice::new(body)]).await?;
            if sent != body.len() + 1 {
                return Err(WireError::Io(std::io::Error::other("short seqpacket send")));
            }
        }
        Ok(())
    }

    /// Receives one message and its `more` flag; `None` when the peer closed between messages.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<(T, bool)>, WireError> {
        let mut reset_seen = false;
        loop {
            let mut space = [0u8; ANCILLARY];
            let received = self
                .sock
                .recv_vectored_with_ancillary(&mut [IoSliceMut::new(&mut self.rx)], &mut space)
                .await;
            let info = match received.map(|(info, ancillary)| {
                // Keep the first descriptor; closing any others is what dropping them does.
                let fds = ancillary.into_messages().filter_map(|m| match m {
                    OwnedAncillaryMessage::FileDescriptors(fds) => Some(fds),
                    _ => None,
                });
                if let Some(fd) = fds.flatten().next() {
                    self.fd = Some(fd);
                }
                info
            }) {
                // A peer that closes with our datagrams unread leaves a one-shot ECONNRESET that
                // the kernel reports before the replies it sent us; read on to get them.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !reset_seen => {
                    reset_seen = true;
                    continue;
                }
                other => other?,
            };
            if info.bytes_read() == 0 {
                // An empty datagram is never sent, so this is end-of-stream.
                return if self.reassembler.in_progress() {
                    Err(WireError::ClosedMidMessage)
                } else {
                    Ok(None)
                };
            }
            if info.truncated() {
                return Err(FrameError::Oversized.into());
            }
            if let Some(message) = self.reassembler.push(&self.rx[..info.bytes_read()])? {
                return Ok(Some((codec::decode(&message.bytes)?, message.more)));
            }
        }
    }

    /// Resolves once the peer has hung up. For a server streaming a long reply to a client that
    /// sends nothing meanwhile (one request at a time): it lets the server stop work nobody
    /// waits for. A peer that sends something instead is not gone, and this never resolves.
    pub async fn closed(&self) {
        let mut byte = [0u8; 1];
        match self.sock.peek(&mut byte).await {
            Ok(info) if info.bytes_read() > 0 => std::future::pending().await,
            // End-of-stream, or a reset: either way nobody reads our replies any more.
            Ok(_) | Err(_) => {}
        }
    }

    /// Sends raw bytes as one datagram, bypassing framing. For hostile-client tests only.
    pub async fn send_raw(&self, datagram: &[u8]) -> std::io::Result<usize> {
        self.sock.send(datagram).await
    }
}

/// A server the typed [`Client`] can talk to.
pub trait Service {
    const KIND: ServiceKind;
    type Request: Serialize;
    type Response: DeserializeOwned;
}

/// `bangerd`, spoken to by the CLI.
pub struct Daemon;
impl Service for Daemon {
    const KIND: ServiceKind = ServiceKind::Daemon;
    type Request = Request;
    type Response = Response;
}

/// `banger-helper`, spoken to by the daemon.
pub struct Helper;
impl Service for Helper {
    const KIND: ServiceKind = ServiceKind::Helper;
    type Request = HelperRequest;
    type Response = HelperResponse;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: std::io::Error },
    /// The server answered the handshake with a refusal, or the client refuses the server.
    #[error("{0}")]
    Refused(Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the server closed the connection before replying")]
    Closed,
    #[error("the server sent a stream where one reply was expected")]
    UnexpectedStream,
}

/// The client end of a connection, after a successful handshake.
pub struct Client<S: Service> {
    chan: Channel,
    /// What the server said as it closed the connection, found when a send failed; returned
    /// by the next `next()`.
    farewell: Option<(S::Response, bool)>,
    /// The protocol version both sides speak.
    pub version: u32,
    /// What the server said of itself.
    pub server: Hello,
    _service: PhantomData<S>,
}

impl<S: Service> Client<S> {
    /// Connects and handshakes as `program` (e.g. `banger`).
    pub async fn connect(path: &Path, program: &str) -> Result<Self, ClientError> {
        let sock = UnixSeqpacket::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
        Self::handshake(Channel::new(sock), Hello::new(S::KIND, program)).await
    }

    /// Handshakes on an existing channel with a given `Hello` (tests use odd ones).
    pub async fn handshake(mut chan: Channel, ours: Hello) -> Result<Self, ClientError> {
        // A server that refuses at once (too many connections) may have closed before our
        // `Hello` went out; its refusal is still there to read.
        match chan.send(&ours, false).await {
            Err(e) if !peer_closed(&e) => return Err(e.into()),
            _ => {}
        }
        let (reply, _): (ServerHello, bool) = chan.recv().await?.ok_or(ClientError::Closed)?;
        let version = reply.result.map_err(ClientError::Refused)?;
        // The server chose; check it chose something we speak.
        if version < ours.min_version || version > ours.max_version {
            return Err(ClientError::Refused(handshake::version_mismatch(&ours, &reply.hello)));
        }
        Ok(Client { chan, farewell: None, version, server: reply.hello, _service: PhantomData })
    }

    /// Sends a request and returns its single reply.
    pub async fn call(&mut self, request: &S::Request) -> Result<S::Response, ClientError> {
        self.send(request).await?;
        match self.next().await? {
            Some((reply, false)) => Ok(reply),
            Some((_, true)) => Err(ClientError::UnexpectedStream),
            None => Err(ClientError::Closed),
        }
    }

    pub async fn send(&mut self, request: &S::Request) -> Result<(), ClientError> {
        match self.chan.send(request, false).await {
            Err(e) if peer_closed(&e) => self.keep_farewell(e).await,
            sent => Ok(sent?),
        }
    }

    /// After a send found the server gone: a server that closes a connection (idle too long,
    /// say) first says why, and that reason is the answer the caller gets from `next()`.
    async fn keep_farewell(&mut self, sending: WireError) -> Result<(), ClientError> {
        match tokio::time::timeout(FAREWELL_WAIT, self.chan.recv()).await {
            Ok(Ok(Some(farewell))) => {
                self.farewell = Some(farewell);
                Ok(())
            }
            _ => Err(sending.into()),
        }
    }

    /// Sends a request with a file descriptor for the server to read (SCM_RIGHTS).
    pub async fn send_with_fd(
        &mut self,
        request: &S::Request,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        match self.chan.send_with_fd(request, fd).await {
            Err(e) if peer_closed(&e) => self.keep_farewell(e).await,
            sent => Ok(sent?),
        }
    }

    /// The next reply of a stream, with whether more follow.
    pub async fn next(&mut self) -> Result<Option<(S::Response, bool)>, ClientError> {
        if let Some(farewell) = self.farewell.take() {
            return Ok(Some(farewell));
        }
        Ok(self.chan.recv().await?)
    }

    pub fn into_channel(self) -> Channel {
        self.chan
    }
}

/// The server side of the handshake. `admit` is the server's verdict on the peer (uid checks);
/// a refusal is sent and returned as `Err`, and the caller closes the connection.
pub async fn server_handshake(
    chan: &mut Channel,
    ours: &Hello,
    admit: Result<(), Error>,
) -> Result<u32, Error> {
    let received = tokio::time::timeout(HANDSHAKE_TIMEOUT, chan.recv::<Hello>()).await;
    let verdict = match received {
        Err(_) => {
            Err(Error::protocol(format!("no handshake within {:.1} s", HANDSHAKE_TIMEOUT.as_secs_f64())))
        }
        Ok(Ok(Some((theirs, _)))) => handshake::negotiate(ours, &theirs).and_then(|v| admit.map(|()| v)),
        Ok(Ok(None)) => Err(Error::protocol("closed before the handshake")),
        Ok(Err(e)) => Err(Error::protocol(format!("the peer is not a banger client: {e}"))),
    };
    // A peer that vanished cannot be told; the verdict stands either way.
    let _ = chan.send(&ServerHello { hello: ours.clone(), result: verdict.clone() }, false).await;
    verdict
}

/// Refuses a connection before reading its `Hello` (the server is full, say): sends the
/// refusal a client's handshake reads, and the caller closes the connection.
pub async fn refuse_before_handshake(chan: &Channel, ours: &Hello, why: Error) -> Result<(), WireError> {
    chan.send(&ServerHello { hello: ours.clone(), result: Err(why) }, false).await
}

/// Errors a client should turn into advice when it cannot reach or use a daemon.
pub fn is_not_running(err: &ClientError) -> bool {
    matches!(err, ClientError::Connect { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
}

pub fn is_permission_denied(err: &ClientError) -> bool {
    match err {
        ClientError::Connect { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
        ClientError::Refused(e) => e.kind == ErrorKind::PermissionDenied,
        _ => false,
    }
}

/// Who may reach a listening socket through the filesystem; SO_PEERCRED is checked as well.
pub struct SocketAccess {
    /// 0o600 for the owner alone, 0o660 with a group.
    pub mode: u32,
    pub owner: Option<nix::unistd::Uid>,
    pub group: Option<nix::unistd::Gid>,
}

/// Binds a listening seqpacket socket at `path` with exactly `access`, creating its directory.
/// Refuses to replace a socket some server still answers on; removes a stale one.
pub fn bind_listener(path: &Path, access: &SocketAccess) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
    use nix::sys::stat::{Mode, umask};

    let shown = path.display();
    let dir = path.parent().ok_or_else(|| format!("socket path {shown} has no directory"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if UnixSeqpacket::connect_blocking(path).is_ok() {
        return Err(format!(
            "something is already listening on {shown}; stop it first, or choose another --socket"
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the stale socket {shown}: {e}")),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("cannot create a socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("bad socket path {shown}: {e}"))?;
    // Bind under a tight umask so the socket is never wider than its final mode, even briefly.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = bind(fd.as_raw_fd(), &addr);
    umask(old);
    bound.map_err(|e| format!("cannot bind {shown}: {e}"))?;
    if access.owner.is_some() || access.group.is_some() {
        nix::unistd::chown(path, access.owner, access.group)
            .map_err(|e| format!("cannot chown {shown}: {e}"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| format!("cannot chmod {shown}: {e}"))?;
    listen(&fd, Backlog::MAXCONN).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    Ok(fd)
}
