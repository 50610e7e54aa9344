//! A minimal client for tests that must connect as another uid: handshakes with the daemon or
//! the helper at a socket, sends a ping, and prints one JSON line with what happened.

use std::process::ExitCode;

use protocol::channel::{Client, ClientError, Daemon, Helper};
use protocol::daemon::Request;
use protocol::helper::HelperRequest;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(service), Some(socket)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: banger-probe daemon|helper SOCKET");
        return ExitCode::from(2);
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::from(1);
    };
    let path = std::path::PathBuf::from(socket);
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
