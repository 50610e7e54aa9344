//! The VM's link to its guest agent: one task per running VM that connects over the VMM's
//! channel (virtio-serial or vsock), handshakes, gives the guest the host's clock and entropy,
//! then carries every exec and copy of the VM over that one connection, each by its id. The
//! link keeps trying while the VM runs: before the first answer the guest is booting; after a
//! loss (the agent died, a snapshot reset the transport) the VM is degraded until it answers
//! again. The guest is not trusted: its bytes are decoded with the protocol's limits, and a
//! bad message ends the connection, never the daemon.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::agent::{AgentEvent, AgentRequest, SshSetup, WINDOW};
use protocol::exec::{ExecEvent, ExecInput, ExecSpec};
use protocol::handshake::{Hello, ServerHello, ServiceKind};
use protocol::stream::{self, Decoder};
use protocol::vm::AgentState;
use protocol::{Error, ErrorKind};
use slog::{Logger, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

use crate::vmm::{Running, Vmm};

/// How long a booting guest may take before its VM is shown as degraded (it is still tried).
const BOOT_WAIT: Duration = Duration::from_secs(90);
/// How long a connected agent may take to answer the handshake and `Sync` once it has started
/// answering; and a power-off request.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for a degraded agent to come back before it is refused.
const DEGRADED_GRACE: Duration = Duration::from_secs(3);
/// Between two tries to reach the agent.
const RETRY: Duration = Duration::from_millis(50);
/// A connected agent is pinged this often, and is lost when a ping goes unanswered this long:
/// a stopped or dead agent on virtio-serial closes nothing the host could see.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_WAIT: Duration = Duration::from_secs(5);

/// What a session asks the agent to run.
#[derive(Debug, Clone)]
pub enum Op {
    Exec(ExecSpec),
    CopyIn(String),
    CopyOut(String),
    /// A TCP connection to this port on the guest's loopback.
    Connect(u16),
}

/// What a running exec's session receives.
#[derive(Debug)]
pub enum Delivery {
    Event(ExecEvent),
    /// The agent took this many stdin bytes: as many more may be sent.
    StdinAck(u64),
}

enum Command {
    Open {
        op: Op,
        deliver: mpsc::UnboundedSender<Delivery>,
        opened: oneshot::Sender<Result<u32, Error>>,
    },
    Input {
        id: u32,
        input: ExecInput,
    },
    OutputAck {
        id: u32,
        bytes: u64,
    },
    /// The session is gone before its exec ended: kill it.
    Close {
        id: u32,
    },
    PowerOff {
        done: oneshot::Sender<Result<(), Error>>,
    },
    Ping {
        done: oneshot::Sender<()>,
    },
}

/// The VM actor's end: dropping it ends the link.
pub struct Link {
    handle: AgentHandle,
    ssh_server: watch::Receiver<Option<String>>,
    _task: AbortOnDrop,
}

/// The files the guest's ssh setup is made from, read anew at every connection (a restarted
/// agent, a restored clone get them again).
#[derive(Debug, Clone)]
pub struct SshKeys {
    /// The VM's private host key (OpenSSH format).
    pub host_key: std::path::PathBuf,
    /// The user's public client key, one line.
    pub client_public: std::path::PathBuf,
}

impl SshKeys {
    async fn read(&self) -> Result<SshSetup, String> {
        let read = |p: std::path::PathBuf| async move {
            tokio::fs::read_to_string(&p).await.map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let host_key = read(self.host_key.clone()).await?;
        let client = read(self.client_public.clone()).await?;
        Ok(SshSetup { host_key, authorized_keys: vec![client.trim().to_string()] })
    }
}

impl Link {
    pub fn start(vmm: Arc<dyn Vmm>, running: Running, ssh: Option<SshKeys>, log: Logger) -> Link {
        let (state_tx, state) = watch::channel(AgentState::Waiting);
        let (ssh_tx, ssh_server) = watch::channel(None);
        let (commands_tx, commands) = mpsc::channel(64);
        let link = LinkCtx { vmm, running, state: state_tx, ssh, ssh_server: ssh_tx, log };
        let task = tokio::spawn(run(link, commands));
        Link { handle: AgentHandle { state, commands: commands_tx }, ssh_server, _task: AbortOnDrop(task) }
    }

    pub fn state(&self) -> AgentState {
        self.handle.state.borrow().clone()
    }

    /// Which ssh server the guest started, once it said.
    pub fn ssh_server(&self) -> Option<String> {
        self.ssh_server.borrow().clone()
    }

    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }
}

/// What sessions hold to reach the agent.
#[derive(Clone)]
pub struct AgentHandle {
    state: watch::Receiver<AgentState>,
    commands: mpsc::Sender<Command>,
}

fn lost() -> Error {
    Error::new(ErrorKind::Unavailable, "the VM stopped, or its agent link ended").with_hint(
        "see which VMs stopped: `banger vm ls --all`; a VM's console says why: `banger vm logs NAME`",
    )
}

impl AgentHandle {
    /// Waits up to `timeout` for a booting guest's agent to be ready. A degraded one gets a
    /// short grace (it may be reconnecting after a reset) and then an error at once.
    pub async fn ready(&mut self, vm: &str, timeout: Duration) -> Result<(), Error> {
        let settled = |s: &AgentState| !matches!(s, AgentState::Waiting);
        let waited = tokio::time::timeout(timeout, self.state.wait_for(settled)).await.map(|r| r.is_ok());
        if waited == Ok(false) {
            return Err(lost());
        }
        let ready = |s: &AgentState| matches!(s, AgentState::Ready(_));
        if waited.is_ok() && !ready(&self.state.borrow()) {
            let _ = tokio::time::timeout(DEGRADED_GRACE, self.state.wait_for(ready)).await;
        }
        let state = self.state.borrow().clone();
        let why = match state {
            AgentState::Ready(_) => return Ok(()),
            AgentState::Degraded(why) => format!("VM {vm}'s agent does not answer: {why}"),
            AgentState::Waiting => format!("VM {vm}'s agent did not answer within {} s", timeout.as_secs()),
        };
        Err(Error::new(ErrorKind::Unavailable, why).with_hint(format!(
            "its console may say why: banger vm logs {vm}; `banger vm stop {vm}` still works"
        )))
    }

    /// Starts `op` in the guest.
    pub async fn open(&self, op: Op) -> Result<Exec, Error> {
        let (deliver, deliveries) = mpsc::unbounded_channel();
        let (opened, id) = oneshot::channel();
        self.commands.send(Command::Open { op, deliver, opened }).await.map_err(|_| lost())?;
        let id = id.await.map_err(|_| lost())??;
        Ok(Exec { id, deliveries, commands: self.commands.clone(), ended: false })
    }

    /// One round trip to the agent.
    pub async fn ping(&self) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.commands.send(Command::Ping { done }).await.map_err(|_| lost())?;
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(Error::new(ErrorKind::Unavailable, "the agent did not answer the ping")),
        }
    }

    /// Asks the agent to power the guest off; answered once it has started to.
    pub async fn power_off(&self) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.commands.send(Command::PowerOff { done }).await.map_err(|_| lost())?;
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(Error::new(ErrorKind::Unavailable, "the agent did not answer the power-off")),
        }
    }
}

/// One exec (or copy) in the guest. Dropped before it ended, it is killed.
pub struct Exec {
    id: u32,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    commands: mpsc::Sender<Command>,
    ended: bool,
}

impl Exec {
    /// The next delivery; `None` once the exec ended or the link is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.ended {
            return None;
        }
        let d = self.deliveries.recv().await;
        if matches!(d, None | Some(Delivery::Event(ExecEvent::Exited(_) | ExecEvent::Failed { .. }))) {
            self.ended = true;
        }
        d
    }

    pub async fn input(&self, input: ExecInput) -> Result<(), Error> {
        self.commands.send(Command::Input { id: self.id, input }).await.map_err(|_| lost())
    }

    /// This many output bytes were passed on: the agent may send as many more.
    pub async fn ack(&self, bytes: u64) -> Result<(), Error> {
        self.commands.send(Command::OutputAck { id: self.id, bytes }).await.map_err(|_| lost())
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if !self.ended {
            // Never lost to a full queue: the exec would outlive its client.
            if let Err(mpsc::error::TrySendError::Full(close)) =
                self.commands.try_send(Command::Close { id: self.id })
            {
                let commands = self.commands.clone();
                tokio::spawn(async move { commands.send(close).await });
            }
        }
    }
}

/// Why a session with the agent ended.
enum Ended {
    /// Never got to ready this time (not up yet, or not answering).
    NotReady(String),
    /// Was ready, then lost.
    Lost(String),
    /// The VM actor let go of the link.
    Dropped,
}

/// What the link's task works with.
struct LinkCtx {
    vmm: Arc<dyn Vmm>,
    running: Running,
    state: watch::Sender<AgentState>,
    ssh: Option<SshKeys>,
    ssh_server: watch::Sender<Option<String>>,
    log: Logger,
}

async fn run(link: LinkCtx, mut commands: mpsc::Receiver<Command>) {
    let LinkCtx { state, log, .. } = &link;
    let started = Instant::now();
    // A booting guest answers once its agent runs; one that was ready answers at once.
    let mut handshake_wait = BOOT_WAIT;
    loop {
        let ended = session(&link, &mut commands, handshake_wait).await;
        if matches!(*state.borrow(), AgentState::Ready(_) | AgentState::Degraded(_)) {
            handshake_wait = ANSWER_WAIT;
        }
        match ended {
            Ended::Dropped => return,
            Ended::Lost(why) => {
                warn!(log, "lost the guest agent"; "why" => &why);
                state.send_replace(AgentState::Degraded(why));
            }
            Ended::NotReady(why) => {
                let degraded = matches!(*state.borrow(), AgentState::Degraded(_));
                if !degraded && started.elapsed() > BOOT_WAIT {
                    let why = format!("no answer after {} s ({why})", BOOT_WAIT.as_secs());
                    warn!(log, "the guest agent does not answer"; "why" => &why);
                    state.send_replace(AgentState::Degraded(why));
                }
            }
        }
        // Meanwhile, requests are refused rather than held.
        let pause = tokio::time::sleep(RETRY);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(command) => refuse(command),
                },
            }
        }
    }
}

fn refuse(command: Command) {
    let not_ready = || Error::new(ErrorKind::Unavailable, "the guest agent is not connected");
    match command {
        Command::Open { opened, .. } => {
            let _ = opened.send(Err(not_ready()));
        }
        Command::PowerOff { done } => {
            let _ = done.send(Err(not_ready()));
        }
        Command::Input { .. } | Command::OutputAck { .. } | Command::Close { .. } | Command::Ping { .. } => {}
    }
}

/// Writes one message. A guest that stops reading must not hold the link (and every exec and
/// stop behind it) for good: a write that cannot finish within `PING_WAIT` loses the agent.
async fn send(out: &mut OwnedWriteHalf, message: &impl serde::Serialize) -> Result<(), String> {
    let bytes = stream::encode(message).map_err(|e| e.to_string())?;
    match tokio::time::timeout(PING_WAIT, out.write_all(&bytes)).await {
        Ok(written) => written.map_err(|e| format!("cannot write to the agent: {e}")),
        Err(_) => Err(format!("the agent read nothing for {} s", PING_WAIT.as_secs())),
    }
}

/// Reads from the agent until `decoder` yields a message.
async fn receive<T: serde::de::DeserializeOwned>(
    input: &mut tokio::net::unix::OwnedReadHalf,
    decoder: &mut Decoder,
) -> Result<T, String> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(message) =
            decoder.decode_next::<T>().map_err(|e| format!("the agent sent a bad message: {e}"))?
        {
            return Ok(message);
        }
        let n = input.read(&mut buf).await.map_err(|e| format!("cannot read from the agent: {e}"))?;
        if n == 0 {
            return Err("the agent closed the channel".into());
        }
        decoder.push(&buf[..n]);
    }
}

/// 32 bytes from the host's RNG for the guest's.
fn seed() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    let _ =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    bytes
}

async fn session(link: &LinkCtx, commands: &mut mpsc::Receiver<Command>, handshake_wait: Duration) -> Ended {
    let LinkCtx { vmm, running, state, log, .. } = link;
    let stream = match vmm.agent(running).await {
        Ok(s) => s,
        Err(e) => return Ended::NotReady(e.to_string()),
    };
    let (mut input, mut out) = stream.into_split();
    let mut decoder = Decoder::default();
    if let Err(why) = send(&mut out, &Hello::new(ServiceKind::Agent, "bangerd")).await {
        return Ended::NotReady(why);
    }
    // A booting guest answers once its agent runs: the Hello waits in the channel till then.
    let answer = tokio::select! {
        answer = receive::<ServerHello>(&mut input, &mut decoder) => answer,
        () = tokio::time::sleep(handshake_wait) => Err("no handshake".into()),
    };
    let version = match answer.map(|h| h.result) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Ended::NotReady(format!("the agent refused the handshake: {}", e.message)),
        Err(why) => return Ended::NotReady(why),
    };
    let unix_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
    if let Err(why) = send(&mut out, &AgentRequest::Sync { unix_time_ns, seed: seed() }).await {
        return Ended::NotReady(why);
    }
    let ready = match tokio::time::timeout(ANSWER_WAIT, receive::<AgentEvent>(&mut input, &mut decoder)).await
    {
        Ok(Ok(AgentEvent::Ready(ready))) => ready,
        Ok(Ok(other)) => return Ended::NotReady(format!("the agent answered Sync with {other:?}")),
        Ok(Err(why)) => return Ended::NotReady(why),
        Err(_) => return Ended::NotReady("no answer to Sync".into()),
    };
    info!(log, "guest agent ready"; "agent" => &ready.software, "protocol" => version,
          "ready_ms" => ready.timings.ready_us / 1000);
    state.send_replace(AgentState::Ready(ready));
    // The guest's sshd gets its keys now, from files: a failure costs ssh, not the exec path.
    let mut ssh = SshWait { pending: false, server: &link.ssh_server, log };
    if let Some(keys) = &link.ssh {
        match keys.read().await {
            Ok(setup) => {
                if let Err(why) = send(&mut out, &AgentRequest::Ssh(setup)).await {
                    return Ended::Lost(why);
                }
                ssh.pending = true;
            }
            Err(why) => warn!(log, "no ssh for this VM"; "why" => why),
        }
    }
    serve(input, decoder, out, commands, ssh).await
}

/// The answer to the `Ssh` request sent after `Ready`: requests are answered in order, so an
/// error without an id while it is pending is its answer.
struct SshWait<'a> {
    pending: bool,
    server: &'a watch::Sender<Option<String>>,
    log: &'a Logger,
}

impl SshWait<'_> {
    /// Takes the event if it answers the `Ssh` request.
    fn take(&mut self, event: &AgentEvent) -> bool {
        match event {
            AgentEvent::Ssh { server } => {
                info!(self.log, "guest ssh server up"; "server" => server);
                self.server.send_replace(Some(server.clone()));
            }
            AgentEvent::Error { id: None, error } if self.pending => {
                warn!(self.log, "the guest could not start an ssh server"; "why" => &error.message);
                self.server.send_replace(None);
            }
            _ => return false,
        }
        self.pending = false;
        true
    }
}

/// Carries execs both ways until the connection ends.
async fn serve(
    mut input: tokio::net::unix::OwnedReadHalf,
    mut decoder: Decoder,
    mut out: OwnedWriteHalf,
    commands: &mut mpsc::Receiver<Command>,
    mut ssh: SshWait<'_>,
) -> Ended {
    let (events_tx, mut events) = mpsc::channel::<Result<AgentEvent, String>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let event = receive::<AgentEvent>(&mut input, &mut decoder).await;
            let end = event.is_err();
            if events_tx.send(event).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut execs: HashMap<u32, Route> = HashMap::new();
    let mut power_off: Option<oneshot::Sender<Result<(), Error>>> = None;
    let mut next_id: u32 = 1;
    let mut pings = tokio::time::interval(PING_EVERY);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut nonce, mut unanswered): (u64, Option<Instant>) = (0, None);
    // Pings asked for by clients, by nonce (from the top of the range: the link's own count up).
    let mut asked: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut asked_nonce = u64::MAX;
    let ended = loop {
        tokio::select! {
            _ = pings.tick() => {
                match unanswered {
                    Some(since) if since.elapsed() > PING_WAIT => {
                        break Ended::Lost(format!("no answer to a ping in {} s", PING_WAIT.as_secs()));
                    }
                    Some(_) => continue,
                    None => {
                        nonce += 1;
                        unanswered = Some(Instant::now());
                        if let Err(why) = send(&mut out, &AgentRequest::Ping { nonce }).await {
                            break Ended::Lost(why);
                        }
                    }
                }
            }
            event = events.recv() => match event {
                Some(Ok(AgentEvent::Pong { nonce: n })) if n == nonce => unanswered = None,
                Some(Ok(AgentEvent::Pong { nonce: n })) => {
                    if let Some(done) = asked.remove(&n) {
                        let _ = done.send(());
                    }
                }
                Some(Ok(event)) if ssh.take(&event) => {}
                Some(Ok(event)) => {
                    // An exec that broke flow control is killed, not buffered without bound.
                    if let Some(kill) = deliver(event, &mut execs, &mut power_off)
                        && let Err(why) = send(&mut out, &kill).await
                    {
                        break Ended::Lost(why);
                    }
                }
                Some(Err(why)) => break Ended::Lost(why),
                None => break Ended::Lost("the agent's reader stopped".into()),
            },
            command = commands.recv() => {
                let Some(command) = command else { return Ended::Dropped };
                let request = match command {
                    Command::Open { op, deliver, opened } => {
                        let id = next_id;
                        next_id = next_id.wrapping_add(1).max(1);
                        execs.insert(id, Route { tx: deliver, unacked: 0 });
                        let _ = opened.send(Ok(id));
                        match op {
                            Op::Exec(spec) => AgentRequest::Exec { id, spec },
                            Op::CopyIn(path) => AgentRequest::CopyIn { id, path },
                            Op::CopyOut(path) => AgentRequest::CopyOut { id, path },
                            Op::Connect(port) => AgentRequest::Connect { id, port },
                        }
                    }
                    Command::Input { id, input } => AgentRequest::Input { id, input },
                    Command::OutputAck { id, bytes } => {
                        if let Some(route) = execs.get_mut(&id) {
                            route.unacked = route.unacked.saturating_sub(bytes);
                        }
                        AgentRequest::OutputAck { id, bytes }
                    }
                    Command::Close { id } => match execs.remove(&id) {
                        Some(_) => AgentRequest::Input { id, input: ExecInput::Signal(libc::SIGKILL) },
                        None => continue,
                    },
                    Command::PowerOff { done } => {
                        power_off = Some(done);
                        AgentRequest::PowerOff
                    }
                    Command::Ping { done } => {
                        asked_nonce -= 1;
                        asked.retain(|_, d| !d.is_closed());
                        asked.insert(asked_nonce, done);
                        AgentRequest::Ping { nonce: asked_nonce }
                    }
                };
                if let Err(why) = send(&mut out, &request).await {
                    break Ended::Lost(why);
                }
            }
        }
    };
    // Every exec still running hears why it ended.
    if let Ended::Lost(why) = &ended {
        for (_, route) in execs.drain() {
            let message = format!("lost the guest agent: {why}");
            let _ = route.tx.send(Delivery::Event(ExecEvent::Failed { code: EXIT_LOST, message }));
        }
    }
    ended
}

/// The exit code of an exec whose agent link was lost under it.
pub const EXIT_LOST: i32 = 255;

/// Where an exec's events go, and how much of its output awaits the client's acknowledgement.
struct Route {
    tx: mpsc::UnboundedSender<Delivery>,
    unacked: u64,
}

/// Passes an agent's event to whoever waits for it; returns what to send the agent back when
/// the event broke the protocol's rules (an exec's output beyond its window: it is killed).
fn deliver(
    event: AgentEvent,
    execs: &mut HashMap<u32, Route>,
    power_off: &mut Option<oneshot::Sender<Result<(), Error>>>,
) -> Option<AgentRequest> {
    match event {
        AgentEvent::Exec { id, event } => {
            let last = matches!(event, ExecEvent::Exited(_) | ExecEvent::Failed { .. });
            let route = execs.get_mut(&id)?;
            if let ExecEvent::Output { data, .. } = &event {
                route.unacked += data.len() as u64;
                if route.unacked > WINDOW {
                    let message = format!("the agent sent more than {WINDOW} bytes of output unacknowledged");
                    let _ = route.tx.send(Delivery::Event(ExecEvent::Failed { code: EXIT_LOST, message }));
                    execs.remove(&id);
                    return Some(AgentRequest::Input { id, input: ExecInput::Signal(libc::SIGKILL) });
                }
            }
            let _ = route.tx.send(Delivery::Event(event));
            if last {
                execs.remove(&id);
            }
        }
        AgentEvent::StdinAck { id, bytes } => {
            if let Some(route) = execs.get(&id) {
                let _ = route.tx.send(Delivery::StdinAck(bytes));
            }
        }
        AgentEvent::Ok => {
            if let Some(done) = power_off.take() {
                let _ = done.send(Ok(()));
            }
        }
        AgentEvent::Error { id: Some(id), error } => {
            if let Some(route) = execs.remove(&id) {
                let message = format!("the agent refused: {}", error.message);
                let _ = route.tx.send(Delivery::Event(ExecEvent::Failed { code: EXIT_LOST, message }));
            }
        }
        AgentEvent::Error { id: None, error } => {
            if let Some(done) = power_off.take() {
                let _ = done.send(Err(error));
            }
        }
        AgentEvent::Ready(_) | AgentEvent::Pong { .. } | AgentEvent::Ssh { .. } => {}
    }
    None
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
