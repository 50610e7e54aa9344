//! A minimal HTTP/1.1 client for Firecracker's API socket: PUT a JSON body, read the status.
//! The API is local, small and well-formed; a full HTTP stack would add nothing here.

use std::path::Path;
use std::time::Duration;

use protocol::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT path` with `body`; Ok on 2xx, else the API's fault message.
pub async fn put(socket: &Path, path: &str, body: &str) -> Result<(), Error> {
    let fail = |why: String| Error::internal(format!("Firecracker API PUT {path}: {why}"));
    let exchange = async {
        let mut s = connect(socket).await.map_err(|e| fail(format!("cannot connect: {e}")))?;
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
        read_reply(&mut s).await.map_err(|e| fail(e.to_string()))
    };
    let reply =
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| fail("no answer within 10 s".into()))??;
    let status: u16 = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("malformed reply {reply:?}")))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let fault = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    Err(fail(format!("{status}: {fault}")))
}

/// Connects, waiting for a VMM that is still bringing its API up: `vm start` answers before
/// Firecracker made its socket, so a stop or a re-adoption may come before it exists or
/// listens. The callers bound the whole exchange by `TIMEOUT`.
async fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match UnixStream::connect(socket).await {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => return other,
        }
    }
}

/// Reads one HTTP reply: headers, then `Content-Length` bytes of body. Firecracker keeps the
/// connection open, so reading to end-of-stream would wait forever.
async fn read_reply(s: &mut UnixStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > 64 << 10 {
            return Err(std::io::Error::other("reply too large"));
        }
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether the API answers at all (GET /) within `TIMEOUT`, its socket given time to appear.
pub async fn answers(socket: &Path) -> bool {
    let probe = async {
        let mut s = connect(socket).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut reply = [0u8; 16];
        let n = s.read(&mut reply).await.ok()?;
        reply[..n].starts_with(b"HTTP/1.1").then_some(())
    };
    tokio::time::timeout(TIMEOUT, probe).await.ok().flatten().is_some()
}
