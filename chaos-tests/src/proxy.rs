//! A TCP proxy between the daemon and the registry that misbehaves on purpose: it can slow the
//! registry's replies down and cut connections part-way through a transfer. It also records the
//! `Range` headers clients send, so a test can see a download resume. It runs on its own thread
//! and runtime, so it keeps serving while a test blocks on a CLI process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Behaviour {
    /// Bytes per second from the registry to the client; 0 = unlimited. Changeable live.
    pub rate: AtomicU64,
    /// Cut this many connections…
    pub cuts_left: AtomicUsize,
    /// …after this many bytes from the registry.
    pub cut_after: AtomicU64,
}

pub struct TestProxy {
    pub addr: String,
    pub behaviour: Arc<Behaviour>,
    ranges: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl TestProxy {
    pub fn start(upstream: &str) -> Self {
        let behaviour = Arc::new(Behaviour::default());
        let ranges = Arc::new(Mutex::new(vec![]));
        let (tx, rx) = std::sync::mpsc::channel();
        let (b, r, up) = (behaviour.clone(), ranges.clone(), upstream.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                tx.send(listener.local_addr().expect("addr").to_string()).expect("report addr");
                loop {
                    let Ok((client, _)) = listener.accept().await else { return };
                    tokio::spawn(relay(client, up.clone(), b.clone(), r.clone()));
                }
            });
        });
        let addr = rx.recv().expect("proxy address");
        TestProxy { addr, behaviour, ranges, _thread: thread }
    }

    /// The `Range` header values clients sent so far.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().expect("ranges").clone()
    }
}

async fn relay(
    client: TcpStream,
    upstream: String,
    behaviour: Arc<Behaviour>,
    ranges: Arc<Mutex<Vec<String>>>,
) {
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let requests = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            for line in text.lines() {
                if line.to_ascii_lowercase().starts_with("range:") {
                    ranges.lock().expect("ranges").push(line[6..].trim().to_string());
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let cut =
        behaviour.cuts_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let limit = if cut { behaviour.cut_after.load(Ordering::SeqCst) } else { u64::MAX };
    let replies = async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        loop {
            let rate = behaviour.rate.load(Ordering::SeqCst);
            let chunk = if rate > 0 { buf.len().min((rate / 20).max(1) as usize) } else { buf.len() };
            let n = match sr.read(&mut buf[..chunk]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let n = n.min((limit - sent) as usize);
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
            if sent >= limit {
                return; // dropping both halves cuts the connection mid-transfer
            }
            if rate > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}
