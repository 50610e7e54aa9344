//! One session with the host: the handshake (the agent is the server), then requests until the
//! host goes away or breaks the protocol. Every request is one call; the reader never blocks
//! on anything but the channel.
//!
//! A session ends when the channel closes (the host left: its execs are killed, nothing more
//! is written) or on a bad frame or message (an `Error` is sent, then the channel is closed; on
//! a virtio-serial port, input is ignored until the host disconnects).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protocol::Error;
use protocol::agent::{AgentEvent, AgentReady, AgentRequest, BootTimings};
use protocol::handshake::{self, Hello, ServerHello, ServiceKind};
use protocol::stream::Decoder;

use crate::channel::{Conn, Read};
use crate::exec::{self, Ctx};
use crate::outbox::Outbox;
use crate::reaper::Reaper;

/// How long a host has to send its `Hello`.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_millis(1500);

/// What outlives sessions.
pub struct Agent {
    pub reaper: Arc<Reaper>,
    /// PID 1 in a guest: `Sync` sets the clock and seeds the RNG; `PowerOff` powers off.
    pub guest: bool,
    /// Where `Ssh` installs keys and the server it supervises (`None`: a host-process agent
    /// started without `--ssh-root`).
    pub ssh: Option<Arc<crate::ssh::setup::Ssh>>,
    pub timings: Mutex<BootTimings>,
    pub ready_once: OnceLock<u64>,
    /// What `PowerOff` does, after answering `Ok`.
    pub power_off: Box<dyn Fn() + Send + Sync>,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The host went away.
    Lost,
    /// The host broke the protocol: told so, and closed.
    Refused,
    /// The host asked for a power-off.
    PowerOff,
}

pub fn serve(agent: &Agent, conn: Conn) -> End {
    let conn = Arc::new(conn);
    let (outbox, writer) = match Outbox::start(conn.clone()) {
        Ok(o) => o,
        Err(e) => {
            crate::log!("cannot start the writer: {e}");
            return End::Lost;
        }
    };
    let ctx = Ctx {
        outbox,
        execs: Arc::new(Mutex::new(HashMap::new())),
        reaper: agent.reaper.clone(),
        guest: agent.guest,
    };
    let mut decoder = Decoder::default();
    let end = match handshake(&conn, &mut decoder, &ctx.outbox) {
        Ok(()) => requests(agent, &conn, &mut decoder, &ctx),
        Err(end) => end,
    };
    exec::cancel_all(&ctx.execs);
    writer.stop(end != End::Lost);
    drop(ctx);
    if let Ok(conn) = Arc::try_unwrap(conn)
        && end == End::Refused
    {
        conn.finish()
    }
    if end == End::PowerOff {
        (agent.power_off)();
    }
    end
}

/// Reads until `decoder` holds a message (or the deadline, or the end of the channel).
fn next_message(conn: &Conn, decoder: &mut Decoder, deadline: Option<Instant>) -> Result<Vec<u8>, Next> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match decoder.next_message() {
            Ok(Some(m)) => return Ok(m.bytes),
            Ok(None) => {}
            Err(e) => return Err(Next::Bad(e.to_string())),
        }
        match conn.read(&mut buf, deadline) {
            Ok(Read::Data(n)) => decoder.push(buf.get(..n).unwrap_or_default()),
            Ok(Read::Closed) | Err(_) => return Err(Next::Closed),
            Ok(Read::TimedOut) => return Err(Next::TimedOut),
        }
    }
}

enum Next {
    Closed,
    TimedOut,
    Bad(String),
}

fn handshake(conn: &Conn, decoder: &mut Decoder, outbox: &Outbox) -> Result<(), End> {
    let ours = Hello::new(ServiceKind::Agent, "banger-agent");
    let refuse = |error: Error| {
        let reply = ServerHello { hello: ours.clone(), result: Err(error) };
        if let Ok(bytes) = protocol::stream::encode(&reply) {
            outbox.send_raw(bytes);
        }
        Err(End::Refused)
    };
    let bytes = match next_message(conn, decoder, Some(Instant::now() + HANDSHAKE_DEADLINE)) {
        Ok(b) => b,
        Err(Next::Closed) => return Err(End::Lost),
        Err(Next::TimedOut) => {
            return refuse(Error::protocol(format!("no Hello within {} ms", HANDSHAKE_DEADLINE.as_millis())));
        }
        Err(Next::Bad(e)) => return refuse(Error::protocol(format!("bad frame instead of a Hello: {e}"))),
    };
    let theirs: Hello = match protocol::codec::decode(&bytes) {
        Ok(h) => h,
        Err(e) => return refuse(Error::protocol(format!("the peer is not a banger client: {e}"))),
    };
    match handshake::negotiate(&ours, &theirs) {
        Ok(version) => {
            let reply = ServerHello { hello: ours.clone(), result: Ok(version) };
            if let Ok(bytes) = protocol::stream::encode(&reply) {
                outbox.send_raw(bytes);
            }
            Ok(())
        }
        Err(error) => refuse(error),
    }
}

fn requests(agent: &Agent, conn: &Conn, decoder: &mut Decoder, ctx: &Ctx) -> End {
    loop {
        let request = match next_message(conn, decoder, None) {
            Ok(bytes) => {
                protocol::codec::decode::<AgentRequest>(&bytes).map_err(|e| format!("bad request: {e}"))
            }
            Err(Next::Closed | Next::TimedOut) => return End::Lost,
            Err(Next::Bad(e)) => Err(format!("bad frame: {e}")),
        };
        let request = match request {
            Ok(r) => r,
            Err(message) => {
                ctx.outbox.send(&AgentEvent::Error { id: None, error: Error::protocol(message) });
                return End::Refused;
            }
        };
        if let Some(end) = handle(agent, ctx, request) {
            return end;
        }
    }
}

/// One request: one call each.
fn handle(agent: &Agent, ctx: &Ctx, request: AgentRequest) -> Option<End> {
    match request {
        AgentRequest::Sync { unix_time_ns, seed } => ctx.outbox.send(&sync(agent, unix_time_ns, &seed)),
        AgentRequest::Exec { id, spec } => exec::start(ctx, id, &spec),
        AgentRequest::Input { id, input } => exec::input(ctx, id, input),
        AgentRequest::OutputAck { id, bytes } => exec::ack(ctx, id, bytes),
        AgentRequest::CopyIn { id, path } => crate::copy::copy_in(ctx, id, path),
        AgentRequest::CopyOut { id, path } => crate::copy::copy_out(ctx, id, path),
        AgentRequest::Ping { nonce } => ctx.outbox.send(&AgentEvent::Pong { nonce }),
        AgentRequest::PowerOff => {
            ctx.outbox.send(&AgentEvent::Ok);
            return Some(End::PowerOff);
        }
        AgentRequest::Connect { id, port } => crate::connect::connect(ctx, id, port),
        AgentRequest::Ssh(setup) => match &agent.ssh {
            Some(ssh) => ssh.request(&ctx.outbox, setup),
            None => ctx.outbox.send(&AgentEvent::Error {
                id: None,
                error: Error::new(
                    protocol::ErrorKind::InvalidInput,
                    "this agent runs as a host process: start it with --ssh-root DIR --ssh-port P to serve ssh",
                ),
            }),
        },
    }
    None
}

/// Takes the host's clock and entropy (in a guest), and says the agent is ready.
fn sync(agent: &Agent, unix_time_ns: u64, seed: &[u8]) -> AgentEvent {
    if agent.guest {
        if let Err(e) = crate::sys::seed_rng(seed) {
            crate::log!("cannot seed the RNG: {e}");
        }
        if let Err(e) = crate::sys::set_clock(unix_time_ns) {
            crate::log!("cannot set the clock: {e}");
        }
    }
    let ready_us = *agent.ready_once.get_or_init(crate::sys::boottime_us);
    let mut timings = exec::lock(&agent.timings).clone();
    timings.ready_us = ready_us;
    AgentEvent::Ready(AgentReady {
        software: format!("banger-agent {}", protocol::SOFTWARE_VERSION),
        hostname: crate::sys::hostname(),
        timings,
    })
}
