//! A minimal client for tests that must connect as another uid: handshakes with the daemon or
//! the helper at a socket, sends a ping, and prints one JSON line with what happened.
//!
//! `banger-probe hold SOCKET N hello|raw` opens N connections to the daemon (handshaken, or
//! never saying a word), prints one JSON line with how many it holds and why the others were
//! refused, and keeps them open until its stdin closes.

use std::process::ExitCode;
use std::time::Duration;

use protocol::ErrorKind;
use protocol::channel::{Channel, Client, ClientError, Daemon, Helper};
use protocol::daemon::Request;
use protocol::handshake::ServerHello;
use protocol::helper::HelperRequest;
use tokio_seqpacket::UnixSeqpacket;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(service), Some(socket)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: banger-probe daemon|helper SOCKET | banger-probe hold SOCKET N hello|raw");
        return ExitCode::from(2);
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::from(1);
    };
    let path = std::path::PathBuf::from(socket);
    if service == "hold" {
        let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1);
        let hello = args.get(4).is_some_and(|m| m == "hello");
        raise_nofile();
        rt.block_on(hold(&path, n, hello));
        return ExitCode::SUCCESS;
    }
    let result: Result<(), ClientError> = rt.block_on(async {
        if service == "helper" {
            Client::<Helper>::connect(&path, "probe").await?.call(&HelperRequest::Ping).await.map(|_| ())
        } else {
            Client::<Daemon>::connect(&path, "probe").await?.call(&Request::Ping).await.map(|_| ())
        }
    });
    match result {
        Ok(()) => {
            println!("{{\"ok\":true}}");
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(e)) => {
            println!("{{\"refused\":{:?},\"message\":{:?}}}", format!("{:?}", e.kind), e.message);
            ExitCode::from(1)
        }
        Err(e) => {
            println!("{{\"error\":{:?}}}", e.to_string());
            ExitCode::from(1)
        }
    }
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn hold(path: &std::path::Path, n: usize, hello: bool) {
    let mut held = Vec::new();
    let (mut refused, mut errors, mut timed_out) = (0usize, 0usize, 0usize);
    let (mut refusal, mut error) = (None, None);
    for _ in 0..n {
        if hello {
            match Client::<Daemon>::connect(path, "probe").await {
                Ok(c) => held.push(c.into_channel()),
                Err(ClientError::Refused(e)) => {
                    refused += 1;
                    refusal.get_or_insert(e);
                }
                Err(e) => {
                    errors += 1;
                    error.get_or_insert(e.to_string());
                }
            }
        } else {
            match UnixSeqpacket::connect(path).await {
                Ok(s) => held.push(Channel::new(s)),
                Err(e) => {
                    errors += 1;
                    error.get_or_insert(e.to_string());
                }
            }
        }
    }
    if !hello {
        // A connection refused at accept has its refusal waiting; a held one has nothing yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut open = Vec::new();
        for mut c in held {
            match tokio::time::timeout(Duration::from_millis(1), c.recv::<ServerHello>()).await {
                Err(_) => open.push(c),
                // The handshake deadline passed for the earliest ones: not a refusal at accept.
                Ok(Ok(Some((ServerHello { result: Err(e), .. }, _)))) if e.kind == ErrorKind::Protocol => {
                    timed_out += 1
                }
                Ok(Ok(Some((ServerHello { result: Err(e), .. }, _)))) => {
                    refused += 1;
                    refusal.get_or_insert(e);
                }
                Ok(_) => errors += 1,
            }
        }
        held = open;
    }
    let refusal = refusal
        .map(|e| serde_json::json!({"kind": format!("{:?}", e.kind), "message": e.message, "hint": e.hint}));
    println!(
        "{}",
        serde_json::json!({"held": held.len(), "refused": refused, "refusal": refusal, "errors": errors, "error": error, "timed_out": timed_out})
    );
    // Hold them until the test is done with us.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    drop(held);
}
