//! A session's outgoing messages: queued by anyone (the reader, exec threads) and written by
//! one writer thread, so nothing that matters (reaping, signals, reading the host's requests)
//! ever waits on a write to a channel whose host may be gone (a virtio-serial write with no
//! host connected blocks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use protocol::agent::AgentEvent;

use crate::channel::Conn;

const OPEN: u8 = 0;
/// Write what is queued (for a bounded time), then stop: the session ends with an error.
const FLUSH: u8 = 1;
/// Write nothing more: the host is gone.
const DEAD: u8 = 2;

const FLUSH_LIMIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Outbox {
    tx: Sender<Vec<u8>>,
    state: Arc<AtomicU8>,
}

pub struct Writer {
    state: Arc<AtomicU8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Outbox {
    /// Starts the writer thread for `conn`.
    pub fn start(conn: Arc<Conn>) -> std::io::Result<(Outbox, Writer)> {
        let (tx, rx) = channel();
        let state = Arc::new(AtomicU8::new(OPEN));
        let s = state.clone();
        let thread =
            std::thread::Builder::new().name("writer".into()).spawn(move || write_loop(&conn, &rx, &s))?;
        Ok((Outbox { tx, state: state.clone() }, Writer { state, thread: Some(thread) }))
    }

    pub fn send(&self, event: &AgentEvent) {
        if self.state.load(Ordering::Relaxed) == DEAD {
            return;
        }
        match protocol::stream::encode(event) {
            Ok(bytes) => {
                let _ = self.tx.send(bytes);
            }
            Err(e) => crate::log!("cannot encode an event: {e}"),
        }
    }

    /// Queues already-framed bytes (a handshake reply).
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(bytes);
    }
}

impl Writer {
    /// Stops the writer: after flushing what is queued (`flush`), or at once. Returns when the
    /// thread has stopped, so no byte of this session can reach the next one.
    pub fn stop(mut self, flush: bool) {
        if flush {
            self.state.store(FLUSH, Ordering::Relaxed);
            let deadline = Instant::now() + FLUSH_LIMIT;
            while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.state.store(DEAD, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(conn: &Conn, rx: &Receiver<Vec<u8>>, state: &AtomicU8) {
    loop {
        let s = state.load(Ordering::Relaxed);
        if s == DEAD {
            return;
        }
        let bytes = match rx.recv_timeout(Duration::from_millis(if s == FLUSH { 0 } else { 50 })) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) if s == FLUSH => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let give_up = || state.load(Ordering::Relaxed) == DEAD;
        if conn.write_all(&bytes, &give_up).is_err() {
            state.store(DEAD, Ordering::Relaxed);
            return;
        }
    }
}
