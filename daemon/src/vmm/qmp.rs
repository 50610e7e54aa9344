//! A minimal QMP client: connect, leave capabilities negotiation, run one command. QMP is
//! line-delimited JSON; asynchronous events may come between a command and its answer and are
//! skipped. Bounded in time and in line length (QEMU runs as the owner, but is the VM's side).

use std::path::Path;
use std::time::Duration;

use protocol::Error;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LINE: usize = 64 << 10;

/// Runs `command` and returns its `return` value.
pub async fn execute(socket: &Path, command: &str) -> Result<Value, Error> {
    let fail = |why: String| Error::internal(format!("QMP {command}: {why}"));
    let exchange = async {
        let stream = UnixStream::connect(socket).await.map_err(|e| fail(format!("cannot connect: {e}")))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        // The greeting, then capabilities negotiation, then the command.
        reply(&mut lines).await.map_err(&fail)?;
        for execute in ["qmp_capabilities", command] {
            let line = format!("{}\n", json!({ "execute": execute }));
            write.write_all(line.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
            let answer = loop {
                let v = reply(&mut lines).await.map_err(&fail)?;
                if v.get("event").is_none() {
                    break v;
                }
            };
            if let Some(err) = answer.get("error") {
                return Err(fail(err["desc"].as_str().unwrap_or("failed").to_string()));
            }
            if execute == command {
                return Ok(answer.get("return").cloned().unwrap_or(Value::Null));
            }
        }
        Err(fail("no answer".into()))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| fail("no answer within 5 s".into()))?
}

async fn reply(lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Value, String> {
    let mut line = String::new();
    let n = (&mut *lines).take(MAX_LINE as u64).read_line(&mut line).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("QEMU closed the connection".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("not QMP: {e}"))
}

/// Whether QMP answers (re-adoption).
pub async fn answers(socket: &Path) -> bool {
    execute(socket, "query-status").await.is_ok()
}
