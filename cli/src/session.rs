//! One exec or copy on a connection of its own. The daemon streams the exec's events while the
//! client sends input on the same connection, so the socket is used from two sides at once: a
//! duplicate of its descriptor becomes a second `Channel` that only sends, driven by a task
//! fed through a queue; the `Session` itself only receives. Neither side ever shuts the socket
//! down: it closes when both are dropped, and the daemon kills the exec then.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use protocol::channel::{Channel, Client, ClientError, Daemon};
use protocol::daemon::{Request, Response};
use protocol::exec::{ExecEvent, ExecInput};
use protocol::{Error, ErrorKind};
use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacket;

use crate::client;

/// The protocol version that brought exec and copy.
pub const EXEC_SINCE: u32 = 5;

/// Stdin chunks larger than this are split: one message per chunk.
pub const STDIN_CHUNK: usize = 32 * 1024;

/// Input waiting to be sent; a full queue holds the producer back (back-pressure from the
/// socket reaches the stdin reader).
const QUEUE: usize = 16;

pub struct Session {
    rx: Channel,
    input: mpsc::Sender<ExecInput>,
    socket: PathBuf,
    finished: bool,
}

impl Session {
    /// Connects, handshakes, and sends `request` (a `VmExec`, `VmCopyIn` or `VmCopyOut`).
    pub async fn open(socket: &Path, request: &Request) -> Result<Session, Error> {
        let advise = |e| client::advise(socket, e);
        let sock = UnixSeqpacket::connect(socket)
            .await
            .map_err(|source| advise(ClientError::Connect { path: socket.to_path_buf(), source }))?;
        let sending = sock
            .as_fd()
            .try_clone_to_owned()
            .and_then(UnixSeqpacket::try_from)
            .map_err(|e| Error::internal(format!("cannot duplicate the daemon connection: {e}")))?;
        let hello = protocol::handshake::Hello::new(protocol::handshake::ServiceKind::Daemon, "banger");
        let mut c = Client::<Daemon>::handshake(Channel::new(sock), hello).await.map_err(advise)?;
        client::require(&c, EXEC_SINCE, "running commands in VMs")?;
        c.send(request).await.map_err(advise)?;
        let (input, queue) = mpsc::channel(QUEUE);
        tokio::spawn(send_inputs(Channel::new(sending), queue));
        Ok(Session { rx: c.into_channel(), input, socket: socket.to_path_buf(), finished: false })
    }

    /// Where input goes: stdin, signals, window sizes. Sending fails once the exec is over.
    pub fn input(&self) -> mpsc::Sender<ExecInput> {
        self.input.clone()
    }

    /// The exec's next event; `None` after its last (`Exited` or `Failed`).
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, Error> {
        if self.finished {
            return Ok(None);
        }
        let received =
            self.rx.recv::<Response>().await.map_err(|e| client::advise(&self.socket, e.into()))?;
        match received {
            Some((Response::Exec(event), more)) => {
                if !more || matches!(event, ExecEvent::Exited(_) | ExecEvent::Failed { .. }) {
                    self.finished = true;
                }
                Ok(Some(event))
            }
            Some((Response::Error(e), _)) => Err(e),
            Some((other, _)) => Err(client::unexpected(&other)),
            None => Err(Error::new(
                ErrorKind::Unavailable,
                "bangerd closed the connection before the command ended",
            )
            .with_hint("see `banger daemon status` and the VM's state: `banger vm inspect NAME`")),
        }
    }
}

/// Sends queued input until the queue closes or the connection fails; a failure is not
/// reported here: the receiving side sees the daemon's error or the closed connection.
async fn send_inputs(chan: Channel, mut queue: mpsc::Receiver<ExecInput>) {
    while let Some(input) = queue.recv().await {
        if chan.send(&Request::ExecInput(input), false).await.is_err() {
            break;
        }
    }
}

/// How an exec ended, as the CLI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The process exited with this code (128 + n for signal n).
    Exited(i32),
    /// It never ran: exit with `code` after printing `message`.
    Failed { code: i32, message: String },
}

impl Ending {
    /// Prints a failure's message as `banger: MESSAGE` and returns the code to exit with.
    pub fn report(self) -> i32 {
        match self {
            Ending::Exited(code) => code,
            Ending::Failed { code, message } => {
                eprintln!("banger: {}", crate::escape::escape(&message));
                code
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use protocol::channel::server_handshake;
    use protocol::exec::{ExecSpec, ExitStatus, OutputStream};
    use protocol::handshake::{Hello, ServiceKind};
    use tokio_seqpacket::UnixSeqpacketListener;

    use super::*;

    /// A daemon that echoes an exec's stdin as output while it streams, as bangerd relays an
    /// agent's: input and output cross on one connection.
    async fn fake_daemon(mut listener: UnixSeqpacketListener) {
        let mut chan = Channel::new(listener.accept().await.unwrap());
        server_handshake(&mut chan, &Hello::new(ServiceKind::Daemon, "fake"), Ok(())).await.unwrap();
        let (request, _): (Request, bool) = chan.recv().await.unwrap().unwrap();
        assert!(matches!(request, Request::VmExec { ref name, .. } if name == "web"), "{request:?}");
        chan.send(&Response::Exec(ExecEvent::Started { pid: 7 }), true).await.unwrap();
        loop {
            let (request, _): (Request, bool) = chan.recv().await.unwrap().unwrap();
            match request {
                Request::ExecInput(ExecInput::Stdin(data)) => {
                    let event = ExecEvent::Output { stream: OutputStream::Stdout, data };
                    chan.send(&Response::Exec(event), true).await.unwrap();
                }
                Request::ExecInput(ExecInput::Signal(n)) => {
                    let event = ExecEvent::Output {
                        stream: OutputStream::Stderr,
                        data: format!("signal {n}").into(),
                    };
                    chan.send(&Response::Exec(event), true).await.unwrap();
                }
                Request::ExecInput(ExecInput::CloseStdin) => break,
                other => panic!("{other:?}"),
            }
        }
        chan.send(&Response::Exec(ExecEvent::Exited(ExitStatus::Signal(9))), false).await.unwrap();
    }

    #[tokio::test]
    async fn input_is_sent_while_output_streams_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let daemon = tokio::spawn(fake_daemon(UnixSeqpacketListener::bind(&path).unwrap()));
        let spec =
            ExecSpec { argv: vec!["cat".into()], env: vec![], cwd: None, user: None, tty: None, stdin: true };
        let mut session = Session::open(&path, &Request::VmExec { name: "web".into(), spec }).await.unwrap();
        assert_eq!(session.next().await.unwrap(), Some(ExecEvent::Started { pid: 7 }));
        let input = session.input();
        let mut echoed = Vec::new();
        for chunk in [&b"one"[..], b"two", &vec![b'x'; STDIN_CHUNK]] {
            input.send(ExecInput::Stdin(chunk.to_vec())).await.unwrap();
            match session.next().await.unwrap() {
                Some(ExecEvent::Output { stream: OutputStream::Stdout, data }) => echoed.push(data),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(echoed[..2], [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(echoed[2].len(), STDIN_CHUNK);
        input.send(ExecInput::Signal(libc::SIGINT)).await.unwrap();
        assert!(matches!(
            session.next().await.unwrap(),
            Some(ExecEvent::Output { stream: OutputStream::Stderr, .. })
        ));
        input.send(ExecInput::CloseStdin).await.unwrap();
        assert_eq!(session.next().await.unwrap(), Some(ExecEvent::Exited(ExitStatus::Signal(9))));
        assert_eq!(session.next().await.unwrap(), None, "nothing after the last event");
        daemon.await.unwrap();
    }

    #[test]
    fn endings_give_the_shells_codes() {
        assert_eq!(Ending::Exited(ExitStatus::Signal(15).code()).report(), 143);
        assert_eq!(Ending::Failed { code: 127, message: "nosuch: not found".into() }.report(), 127);
    }
}
