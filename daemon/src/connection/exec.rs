//! An exec (or a copy) relayed between a client and a VM's agent: the agent's events go to the
//! client as a reply stream; meanwhile the client's `ExecInput`s (stdin, signals, resizes) go to
//! the agent. Stdin is sent no faster than the agent acknowledges it (`protocol::agent::WINDOW`),
//! output is acknowledged once the client's socket took it, so neither side buffers without
//! bound. A client that hangs up kills its exec (dropping it does).

use std::time::Duration;

use protocol::agent::WINDOW;
use protocol::channel::WireError;
use protocol::daemon::{Request, Response};
use protocol::exec::{ExecEvent, ExecInput};
use protocol::{Error, ErrorKind};

use super::Replies;
use crate::vm::agent::{AgentHandle, Delivery, Exec, Op};

/// How long an exec waits for a booting guest's agent.
const READY_WAIT: Duration = Duration::from_secs(90);
/// The most stdin bytes sent to the agent in one message.
const STDIN_CHUNK: usize = 64 << 10;

pub(super) async fn relay(
    chan: &mut Replies<'_>,
    agent: Result<AgentHandle, Error>,
    vm: &str,
    op: Op,
) -> Result<(), WireError> {
    let opened = async {
        let mut agent = agent?;
        agent.ready(vm, READY_WAIT).await?;
        agent.open(op).await
    };
    let mut exec = match opened.await {
        Ok(exec) => exec,
        Err(e) => return chan.send(&Response::Error(e), false).await,
    };
    let mut stdin = Stdin { credit: WINDOW, pending: Vec::new(), close: false };
    loop {
        tokio::select! {
            delivery = exec.next() => match delivery {
                Some(Delivery::StdinAck(bytes)) => {
                    stdin.credit = stdin.credit.saturating_add(bytes);
                    stdin.flush(&exec).await;
                }
                Some(Delivery::Event(event)) => {
                    let last = matches!(event, ExecEvent::Exited(_) | ExecEvent::Failed { .. });
                    let bytes = match &event {
                        ExecEvent::Output { data, .. } => data.len() as u64,
                        _ => 0,
                    };
                    chan.send(&Response::Exec(event), !last).await?;
                    if last {
                        return Ok(());
                    }
                    if bytes > 0 {
                        let _ = exec.ack(bytes).await;
                    }
                }
                None => {
                    let lost = Error::new(ErrorKind::Unavailable, "the VM stopped under the exec")
                        .with_hint(format!("see banger vm inspect {vm}"));
                    return chan.send(&Response::Error(lost), false).await;
                }
            },
            // Input is read while less than a window of stdin waits for the guest (so a signal
            // behind it still gets through); beyond that the client waits in its own socket.
            received = chan.chan.recv::<Request>(), if (stdin.pending.len() as u64) < WINDOW => match received {
                Ok(Some((Request::ExecInput(input), _))) => stdin.take(input, &exec).await,
                Ok(Some(_)) => {
                    let e = Error::protocol("only ExecInput may be sent while an exec runs");
                    return chan.send(&Response::Error(e), false).await;
                }
                // The client is gone: dropping the exec kills it.
                Ok(None) => return Err(WireError::ClosedMidMessage),
                Err(e) => return Err(e),
            },
        }
    }
}

/// Stdin on its way to the agent.
struct Stdin {
    /// Bytes the agent may take before it acknowledges more.
    credit: u64,
    pending: Vec<u8>,
    /// The client closed stdin; pass it on once `pending` is sent.
    close: bool,
}

impl Stdin {
    async fn take(&mut self, input: ExecInput, exec: &Exec) {
        match input {
            ExecInput::Stdin(data) => {
                self.pending.extend_from_slice(&data);
                self.flush(exec).await;
            }
            ExecInput::CloseStdin => {
                self.close = true;
                self.flush(exec).await;
            }
            other => {
                let _ = exec.input(other).await;
            }
        }
    }

    async fn flush(&mut self, exec: &Exec) {
        while self.credit > 0 && !self.pending.is_empty() {
            let n = self.pending.len().min(STDIN_CHUNK).min(self.credit as usize);
            let chunk: Vec<u8> = self.pending.drain(..n).collect();
            self.credit -= n as u64;
            let _ = exec.input(ExecInput::Stdin(chunk)).await;
        }
        if self.close && self.pending.is_empty() {
            self.close = false;
            let _ = exec.input(ExecInput::CloseStdin).await;
        }
    }
}
