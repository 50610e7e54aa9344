//! `banger vm cp`: a tar stream either way over an exec-like connection. In: a thread packs
//! the local file or tree into `Stdin` chunks of a `VmCopyIn`. Out: the `VmCopyOut`'s output
//! feeds a thread that unpacks it under the destination, trusting nothing in it.

use std::io::{Read, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::daemon::Request;
use protocol::exec::{ExecEvent, ExecInput, OutputStream};
use protocol::{Error, ErrorKind};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::archive;
use crate::args::Global;
use crate::escape::escape;
use crate::exec_args::{Location, parse_location};
use crate::output::Output;
use crate::session::{Ending, STDIN_CHUNK, Session};

pub async fn run(global: &Global, src: &str, dst: &str, out: &Output) -> Result<i32, Error> {
    let bad = |e: String| Error::new(ErrorKind::InvalidInput, e);
    let (src, dst) = (parse_location(src).map_err(bad)?, parse_location(dst).map_err(bad)?);
    let socket = global.socket();
    let progress = progress(out);
    let (ending, bytes) = match (src, dst) {
        (from @ (Location::Local(_) | Location::Stdio), Location::Vm { name, path }) => {
            let session = Session::open(&socket, &Request::VmCopyIn { name, path }).await?;
            copy_in(session, from, progress.clone()).await?
        }
        (Location::Vm { name, path }, to @ (Location::Local(_) | Location::Stdio)) => {
            let session = Session::open(&socket, &Request::VmCopyOut { name, path }).await?;
            copy_out(session, to, progress.clone()).await?
        }
        (Location::Vm { .. }, Location::Vm { .. }) => {
            return Err(bad("both sides name a VM; copy through the host in two steps".into())
                .with_hint("banger vm cp a:/x ./tmp && banger vm cp ./tmp/x b:/dir"));
        }
        _ => {
            return Err(bad("neither side names a VM".into())
                .with_hint("write the VM's side as NAME:/path, e.g. banger vm cp ./site web:/srv"));
        }
    };
    progress.finish_and_clear();
    if ending == Ending::Exited(0) && out.json {
        out.json(&json!({ "copied_bytes": bytes }));
    }
    Ok(match ending {
        Ending::Exited(0) => 0,
        Ending::Exited(code) => {
            eprintln!("banger: the copy failed in the VM (exit code {code})");
            code
        }
        failed => failed.report(),
    })
}

/// Bytes and rate on stderr, only on a terminal and never with `--json`.
fn progress(out: &Output) -> ProgressBar {
    use std::io::IsTerminal;
    if out.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes} copied, {binary_bytes_per_sec}, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// A `Write` that sends what it gets as stdin chunks, counting them.
struct ChunkSender {
    input: mpsc::Sender<ExecInput>,
    bar: ProgressBar,
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(STDIN_CHUNK);
        self.input
            .blocking_send(ExecInput::Stdin(buf[..n].to_vec()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the copy ended early"))?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn copy_in(session: Session, from: Location, bar: ProgressBar) -> Result<(Ending, u64), Error> {
    send_tar(session, bar, move |sink| match &from {
        Location::Local(path) => {
            archive::pack(path, sink).map(drop).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        _ => std::io::copy(&mut std::io::stdin().lock(), sink)
            .map(drop)
            .map_err(|e| format!("cannot read stdin: {e}")),
    })
    .await
}

/// Streams what `pack` writes (a tar stream, from a thread of its own) as the stdin of a
/// `VmCopyIn` session, until the guest's verdict. `pack`'s error ends the copy unfinished.
pub async fn send_tar<F>(mut session: Session, bar: ProgressBar, pack: F) -> Result<(Ending, u64), Error>
where
    F: FnOnce(&mut dyn Write) -> Result<(), String> + Send + 'static,
{
    let input = session.input();
    let (done, packed) = oneshot::channel();
    let counter = bar.clone();
    std::thread::Builder::new()
        .name("pack".into())
        .spawn(move || {
            let mut sink = std::io::BufWriter::with_capacity(
                STDIN_CHUNK,
                ChunkSender { input: input.clone(), bar: counter },
            );
            let result = pack(&mut sink).and_then(|()| sink.flush().map_err(|e| e.to_string()));
            // End the stream only after a whole archive: a partial one must not be unpacked.
            if result.is_ok() {
                let _ = input.blocking_send(ExecInput::CloseStdin);
            }
            let _ = done.send(result);
        })
        .map_err(|e| Error::internal(format!("cannot start the packer: {e}")))?;
    let mut packed = Some(packed);
    loop {
        tokio::select! {
            result = async {
                match packed.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if packed.is_some() => {
                packed = None;
                match result {
                    Ok(Ok(())) => {}
                    // Leaving drops the connection: the daemon abandons the copy.
                    Ok(Err(why)) => return Err(Error::new(ErrorKind::InvalidInput, why)),
                    Err(_) => return Err(Error::internal("the packer stopped without a word")),
                }
            }
            event = session.next() => match event? {
                Some(ExecEvent::Output { stream: OutputStream::Stderr, data } | ExecEvent::Output { stream: OutputStream::Stdout, data }) => {
                    let _ = std::io::stderr().write_all(&data);
                }
                Some(ExecEvent::Started { .. }) => {}
                Some(ExecEvent::Exited(status)) => return Ok((Ending::Exited(status.code()), bar.position())),
                Some(ExecEvent::Failed { code, message }) => return Ok((Ending::Failed { code, message }, bar.position())),
                None => return Err(Error::protocol("the copy's reply stream ended without an exit status")),
            },
        }
    }
}

/// A `Read` over chunks arriving from the runtime.
struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => (self.current, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

enum Sink {
    /// Unpacking under a directory, in a thread; its verdict comes on `done`.
    Tree {
        chunks: mpsc::Sender<Vec<u8>>,
        done: oneshot::Receiver<Result<archive::Unpacked, String>>,
        dest: PathBuf,
    },
    Stdout,
    /// The archive ended (its end marker was read); what follows is its record's padding.
    Drained,
}

async fn copy_out(mut session: Session, to: Location, bar: ProgressBar) -> Result<(Ending, u64), Error> {
    let mut sink = match to {
        Location::Local(dest) => {
            let (chunks, rx) = mpsc::channel(16);
            let (tx, done) = oneshot::channel();
            let target = dest.clone();
            std::thread::Builder::new()
                .name("unpack".into())
                .spawn(move || {
                    let reader = ChunkReader { chunks: rx, current: Vec::new(), at: 0 };
                    let _ = tx.send(archive::unpack_untrusted(reader, &target).map_err(|e| e.to_string()));
                })
                .map_err(|e| Error::internal(format!("cannot start the unpacker: {e}")))?;
            Sink::Tree { chunks, done, dest }
        }
        _ => Sink::Stdout,
    };
    loop {
        match session.next().await? {
            Some(ExecEvent::Output { stream: OutputStream::Stdout, data }) => {
                bar.inc(data.len() as u64);
                match &mut sink {
                    Sink::Stdout => {
                        let mut stdout = std::io::stdout().lock();
                        stdout.write_all(&data).and_then(|()| stdout.flush()).map_err(|e| {
                            Error::new(
                                ErrorKind::Unavailable,
                                format!("cannot write the tar stream to stdout: {e}"),
                            )
                        })?;
                    }
                    Sink::Tree { chunks, .. } => {
                        // A closed queue means the unpacker stopped: at the archive's end
                        // (the rest is padding), or on a fault, which ends the copy.
                        if chunks.send(data).await.is_err() {
                            unpacked(std::mem::replace(&mut sink, Sink::Drained)).await?;
                        }
                    }
                    Sink::Drained => {}
                }
            }
            Some(ExecEvent::Output { stream: OutputStream::Stderr, data }) => {
                let _ = std::io::stderr().write_all(&data);
            }
            Some(ExecEvent::Started { .. }) => {}
            Some(ExecEvent::Exited(status)) => {
                let code = status.code();
                if code == 0 {
                    unpacked(sink).await?;
                }
                return Ok((Ending::Exited(code), bar.position()));
            }
            Some(ExecEvent::Failed { code, message }) => {
                return Ok((Ending::Failed { code, message }, bar.position()));
            }
            None => return Err(Error::protocol("the copy's reply stream ended without an exit status")),
        }
    }
}

/// Ends the stream to the unpacker and waits for its verdict.
async fn unpacked(sink: Sink) -> Result<(), Error> {
    let Sink::Tree { chunks, done, dest } = sink else { return Ok(()) };
    drop(chunks);
    let shown = dest.display().to_string();
    match done.await {
        Ok(Ok(u)) => {
            if !u.skipped_devices.is_empty() {
                eprintln!(
                    "banger: device nodes are not copied out of a VM; skipped {}",
                    escape(&u.skipped_devices.join(", "))
                );
            }
            Ok(())
        }
        Ok(Err(why)) => {
            Err(Error::new(ErrorKind::InvalidInput, format!("copy into {}: {why}", escape(&shown)))
                .with_hint("what was unpacked before the fault is left in place"))
        }
        Err(_) => Err(Error::internal("the unpacker stopped without a word")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use protocol::channel::{Channel, server_handshake};
    use protocol::daemon::Response;
    use protocol::exec::ExitStatus;
    use protocol::handshake::{Hello, ServiceKind};
    use tokio_seqpacket::UnixSeqpacketListener;

    use super::*;

    /// A daemon that answers one copy: it hands the connection, after the request, to `serve`.
    async fn daemon_for_one<F, Fut>(dir: &std::path::Path, serve: F) -> (PathBuf, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(Channel, Request) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let path = dir.join("d.sock");
        let mut listener = UnixSeqpacketListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let mut chan = Channel::new(listener.accept().await.unwrap());
            server_handshake(&mut chan, &Hello::new(ServiceKind::Daemon, "fake"), Ok(())).await.unwrap();
            let (request, _): (Request, bool) = chan.recv().await.unwrap().unwrap();
            serve(chan, request).await;
        });
        (path, task)
    }

    async fn send_tar(chan: &Channel, tar: &[u8]) {
        chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
        for chunk in tar.chunks(1000) {
            let event = ExecEvent::Output { stream: OutputStream::Stdout, data: chunk.to_vec() };
            chan.send(&Response::Exec(event), true).await.unwrap();
        }
        chan.send(&Response::Exec(ExecEvent::Exited(ExitStatus::Code(0))), false).await.unwrap();
    }

    #[tokio::test]
    async fn copy_out_unpacks_a_stream_with_padding_after_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "f/data", &b"hello"[..]).unwrap();
        let mut tar = b.into_inner().unwrap();
        tar.extend(vec![0u8; 20 * 1024]);
        let (socket, daemon) = daemon_for_one(dir.path(), move |chan, request| async move {
            assert_eq!(request, Request::VmCopyOut { name: "web".into(), path: "/f".into() });
            send_tar(&chan, &tar).await;
        })
        .await;
        let request = Request::VmCopyOut { name: "web".into(), path: "/f".into() };
        let session = Session::open(&socket, &request).await.unwrap();
        let dest = dir.path().join("out");
        let (ending, bytes) =
            copy_out(session, Location::Local(dest.clone()), ProgressBar::hidden()).await.unwrap();
        assert_eq!(ending, Ending::Exited(0));
        assert!(bytes > 20 * 1024);
        assert_eq!(std::fs::read(dest.join("f/data")).unwrap(), b"hello");
        daemon.await.unwrap();
    }

    #[tokio::test]
    async fn copy_out_of_a_hostile_stream_fails_and_writes_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"../x\0");
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"pwned"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let (socket, daemon) = daemon_for_one(dir.path(), move |chan, _| async move {
            // The client may hang up mid-stream; that is its right.
            chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
            let event = ExecEvent::Output { stream: OutputStream::Stdout, data: tar };
            let _ = chan.send(&Response::Exec(event), true).await;
            let _ = chan.send(&Response::Exec(ExecEvent::Exited(ExitStatus::Code(0))), false).await;
        })
        .await;
        let request = Request::VmCopyOut { name: "web".into(), path: "/x".into() };
        let session = Session::open(&socket, &request).await.unwrap();
        let dest = dir.path().join("out");
        let err = copy_out(session, Location::Local(dest), ProgressBar::hidden()).await.unwrap_err();
        assert!(err.message.contains("unsafe entry"), "{err}");
        assert!(!dir.path().join("x").exists());
        daemon.await.unwrap();
    }

    #[tokio::test]
    async fn copy_in_sends_a_whole_archive_in_bounded_chunks_then_closes_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("site");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("big"), vec![3u8; 100 * 1024]).unwrap();
        let got = dir.path().join("guest");
        let guest = got.clone();
        let (socket, daemon) = daemon_for_one(dir.path(), move |mut chan, request| async move {
            assert_eq!(request, Request::VmCopyIn { name: "web".into(), path: "/srv".into() });
            chan.send(&Response::Exec(ExecEvent::Started { pid: 1 }), true).await.unwrap();
            let mut tar = Vec::new();
            loop {
                match chan.recv::<Request>().await.unwrap().unwrap().0 {
                    Request::ExecInput(ExecInput::Stdin(data)) => {
                        assert!(data.len() <= STDIN_CHUNK);
                        tar.extend(data);
                    }
                    Request::ExecInput(ExecInput::CloseStdin) => break,
                    other => panic!("{other:?}"),
                }
            }
            archive::unpack_untrusted(&tar[..], &guest).unwrap();
            chan.send(&Response::Exec(ExecEvent::Exited(ExitStatus::Code(0))), false).await.unwrap();
        })
        .await;
        let request = Request::VmCopyIn { name: "web".into(), path: "/srv".into() };
        let session = Session::open(&socket, &request).await.unwrap();
        let (ending, bytes) = copy_in(session, Location::Local(src), ProgressBar::hidden()).await.unwrap();
        assert_eq!(ending, Ending::Exited(0));
        assert!(bytes >= 100 * 1024);
        assert_eq!(std::fs::read(got.join("site/big")).unwrap().len(), 100 * 1024);
        daemon.await.unwrap();
    }
}
