//! `banger vm port add|rm|ls`, and the `-p [ADDR:]HOST:GUEST` syntax `vm run` and `vm create`
//! share. Forwards are carried by the daemon and the agent's channel: the VM needs no network.

use protocol::Error;
use protocol::daemon::Request;
use protocol::exec::ExecEvent;
use protocol::vm::{PortForward, VmInfo};

use crate::args::{Global, PortCommand};
use crate::client;
use crate::escape::escape;
use crate::output::Output;
use crate::session::Session;

/// The protocol version that brought port forwards and `vm proxy`.
pub const PORTS_SINCE: u32 = 6;

/// `[ADDR:]HOST_PORT:GUEST_PORT`; ADDR may be `localhost` (the default), an IPv4 address, or
/// an IPv6 one in brackets (`[::1]:8080:80`).
pub fn parse(s: &str) -> Result<PortForward, String> {
    let bad =
        |why: &str| format!("{s:?}: {why}; use [ADDR:]HOST_PORT:GUEST_PORT, e.g. 8080:80 or 0.0.0.0:8080:80");
    let (addr, ports) = match s.strip_prefix('[') {
        Some(rest) => {
            let (addr, ports) = rest.split_once("]:").ok_or_else(|| bad("an unclosed ["))?;
            (addr.to_string(), ports)
        }
        None => match s.matches(':').count() {
            1 => ("localhost".to_string(), s),
            2 => {
                let (addr, ports) = s.split_once(':').ok_or_else(|| bad("no ports"))?;
                (addr.to_string(), ports)
            }
            _ => return Err(bad("an IPv6 address needs brackets")),
        },
    };
    let (host, guest) = ports.split_once(':').ok_or_else(|| bad("two ports are needed"))?;
    let port = |p: &str| {
        p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad(&format!("{p:?} is not a port")))
    };
    let forward = PortForward { host_addr: addr, host_port: port(host)?, guest_port: port(guest)? };
    forward.host_ips().map_err(|e| bad(&e.message))?;
    Ok(forward)
}

pub async fn run(global: &Global, cmd: PortCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, PORTS_SINCE, "port forwards")?;
    let v = match cmd {
        PortCommand::Add { name, forward } => {
            let v = super::vm::vm(
                &mut c,
                &socket,
                Request::VmPortAdd { name: name.clone(), forward: forward.clone() },
            )
            .await?;
            if !out.json {
                println!("{} forwards {}", escape(&v.name), forward);
                if let Some(why) = refused(global, &name, forward.guest_port).await {
                    eprintln!(
                        "banger: warning: {} (connections are refused until something does)",
                        escape(&why)
                    );
                }
            }
            v
        }
        PortCommand::Rm { name, host_port } => {
            super::vm::vm(&mut c, &socket, Request::VmPortRemove { name, host_port }).await?
        }
        PortCommand::Ls { name } => super::vm::vm(&mut c, &socket, Request::VmInspect { name }).await?,
    };
    if out.json {
        out.json(&v.ports);
    } else {
        print!("{}", list(&v));
    }
    Ok(())
}

fn list(v: &VmInfo) -> String {
    let mut text = format!("{:<24} {:>10}   {}\n", "HOST ADDRESS", "HOST PORT", "GUEST PORT");
    for p in &v.ports {
        text.push_str(&format!("{:<24} {:>10} → {}\n", escape(&p.host_addr), p.host_port, p.guest_port));
    }
    text
}

/// Why a connection to `port` in a running VM is refused now, if it is (a one-off probe).
async fn refused(global: &Global, vm: &str, port: u16) -> Option<String> {
    let request = Request::VmConnect { name: vm.to_string(), port };
    let mut session = Session::open(&global.socket(), &request).await.ok()?;
    match session.next().await {
        Ok(Some(ExecEvent::Failed { message, .. })) => Some(message),
        _ => None,
    }
}

/// The forwards as `vm ls` shows them: `8080→80, …`.
pub fn summary(ports: &[PortForward]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports.iter().map(|p| format!("{}→{}", p.host_port, p.guest_port)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(addr: &str, host: u16, guest: u16) -> PortForward {
        PortForward { host_addr: addr.into(), host_port: host, guest_port: guest }
    }

    #[test]
    fn forwards_parse_like_dockers() {
        assert_eq!(parse("8080:80"), Ok(fwd("localhost", 8080, 80)));
        assert_eq!(parse("0.0.0.0:8080:80"), Ok(fwd("0.0.0.0", 8080, 80)));
        assert_eq!(parse("[::1]:2222:22"), Ok(fwd("::1", 2222, 22)));
        assert_eq!(parse("localhost:1:2"), Ok(fwd("localhost", 1, 2)));
        for bad in ["80", "0:80", "8080:0", "8080:70000", "::1:80:80", "[::1:80:80", "example:80:80", "a:b"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("HOST_PORT:GUEST_PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn summaries_list_each_forward() {
        assert_eq!(summary(&[]), "-");
        assert_eq!(summary(&[fwd("localhost", 8080, 80), fwd("::1", 2222, 22)]), "8080→80,2222→22");
    }
}
