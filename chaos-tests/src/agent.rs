//! The guest agent as a host process (`banger-agent --listen-unix SOCK`), and a small blocking
//! client for its protocol: the fast test bed for everything the agent does outside PID 1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::agent::{AgentEvent, AgentRequest};
use protocol::exec::{ExecEvent, ExecSpec, OutputStream};
use protocol::handshake::{Hello, ServerHello, ServiceKind};
use protocol::stream::{Decoder, encode};

/// The static agent built by the guest workspace (`scripts/dev` builds it; it is not part of
/// the root workspace). `BANGER_AGENT` overrides.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BANGER_AGENT") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = root.join("target/guest/x86_64-unknown-linux-gnu/debug/banger-agent");
    let copied = crate::bin_dir().join("banger-agent");
    let found = [built, copied].into_iter().find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("banger-agent is missing: build it: scripts/dev test (or: cd guest && cargo build)")
    })
}

/// A running `banger-agent --listen-unix`; stopped (SIGTERM, which kills its children, then
/// SIGKILL) when dropped.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more arguments after `--listen-unix SOCK` (e.g. `--ssh-root DIR --ssh-port P`).
    pub fn start_with(args: &[&std::ffi::OsStr]) -> Self {
        let dir = tempfile::Builder::new().prefix("banger-agent-").tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--listen-unix")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn banger-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "banger-agent did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        TestAgent { dir, socket, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A raw connection (no handshake yet).
    pub fn raw(&self) -> AgentConn {
        AgentConn { stream: UnixStream::connect(&self.socket).expect("connect"), decoder: Decoder::default() }
    }

    /// A connection past the handshake and `Sync`.
    pub fn connect(&self) -> AgentConn {
        let mut c = self.raw();
        c.send_raw(&encode(&Hello::new(ServiceKind::Agent, "test")).unwrap());
        let reply: ServerHello = c.recv_as(Duration::from_secs(5)).expect("a ServerHello");
        reply.result.expect("the handshake is accepted");
        c.send(&AgentRequest::Sync { unix_time_ns: 0, seed: vec![] });
        match c.recv(Duration::from_secs(5)) {
            Some(AgentEvent::Ready(_)) => c,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct AgentConn {
    pub stream: UnixStream,
    decoder: Decoder,
}

/// What an exec produced.
#[derive(Debug, Default)]
pub struct Done {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: Option<ExecEvent>,
}

impl Done {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl AgentConn {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        // The agent may close first (that is what some tests want); the reply tells.
        let _ = self.stream.write_all(bytes);
    }

    pub fn send(&mut self, request: &AgentRequest) {
        self.send_raw(&encode(request).unwrap());
    }

    /// The next message, or `None` at end-of-stream. Panics after `timeout`.
    pub fn recv_as<T: serde::de::DeserializeOwned>(&mut self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(m) = self.decoder.decode_next::<T>().expect("a well-formed message from the agent") {
                return Some(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no message from the agent within {timeout:?}");
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from the agent: {e}"),
            }
        }
    }

    pub fn recv(&mut self, timeout: Duration) -> Option<AgentEvent> {
        self.recv_as(timeout)
    }

    pub fn exec(&mut self, id: u32, spec: ExecSpec) {
        self.send(&AgentRequest::Exec { id, spec });
    }

    /// Collects the given execs to their end, acking all output as it comes.
    pub fn collect(&mut self, ids: &[u32], timeout: Duration) -> HashMap<u32, Done> {
        let deadline = Instant::now() + timeout;
        let mut done: HashMap<u32, Done> = ids.iter().map(|&id| (id, Done::default())).collect();
        while done.values().any(|d| d.end.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.recv(left).expect("the agent closed the session");
            if let AgentEvent::StdinAck { .. } = event {
                continue;
            }
            let AgentEvent::Exec { id, event } = event else {
                panic!("unexpected event {event:?}");
            };
            let Some(d) = done.get_mut(&id) else { panic!("event for unknown exec {id}: {event:?}") };
            match event {
                ExecEvent::Started { pid } => d.pid = Some(pid),
                ExecEvent::Output { stream, data } => {
                    self.send(&AgentRequest::OutputAck { id, bytes: data.len() as u64 });
                    match stream {
                        OutputStream::Stdout => d.stdout.extend(data),
                        OutputStream::Stderr => d.stderr.extend(data),
                    }
                }
                end => d.end = Some(end),
            }
        }
        done
    }

    /// Runs one exec to its end.
    pub fn run(&mut self, id: u32, spec: ExecSpec) -> Done {
        self.exec(id, spec);
        self.collect(&[id], Duration::from_secs(30)).remove(&id).unwrap()
    }
}

/// A plain exec of `argv` (no tty, no stdin, a usual PATH).
pub fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()],
        cwd: None,
        user: None,
        tty: None,
        stdin: false,
    }
}
