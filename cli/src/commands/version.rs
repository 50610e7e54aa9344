//! `banger version`: the client's version always; the daemon's when it answers.

use protocol::Error;
use protocol::daemon::{Request, Response};
use protocol::handshake::{PROTOCOL_MAX, PROTOCOL_MIN};
use serde_json::json;

use crate::args::Global;
use crate::client;
use crate::output::Output;

pub async fn run(global: &Global, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let client_line =
        format!("banger {} (protocol {PROTOCOL_MIN}..={PROTOCOL_MAX})", protocol::SOFTWARE_VERSION);
    let daemon = async {
        let mut c = client::connect(&socket).await?;
        match client::call(&mut c, &socket, &Request::Version).await? {
            Response::Version(v) => Ok(v),
            other => Err(client::unexpected(&other)),
        }
    }
    .await;
    if out.json {
        let doc = match &daemon {
            Ok(v) => json!(v),
            Err(e) => json!({ "error": e }),
        };
        out.json(&json!({
            "client": { "software": format!("banger {}", protocol::SOFTWARE_VERSION),
                        "protocol_min": PROTOCOL_MIN, "protocol_max": PROTOCOL_MAX },
            "daemon": doc,
        }));
        // The error is already in the document; only the exit code is left to report.
        if let Err(e) = daemon {
            std::process::exit(e.kind.exit_code());
        }
        return Ok(());
    }
    println!("client: {client_line}");
    let v = daemon?;
    let chaos = if v.chaos { ", fault injection compiled in" } else { "" };
    println!("daemon: {} (protocol {}{chaos})", v.software, v.protocol);
    Ok(())
}
