//! `banger vm create|start|stop|kill|restart|rm|ls|inspect|logs`, `banger ps|rm|prune`
//! (`vm run`, `exec` and `cp` have files of their own).

use std::io::{IsTerminal, Write};

use protocol::daemon::{Request, Response};
use protocol::vm::{AgentState, VmCreate, VmInfo};
use protocol::{Error, ErrorKind};
use serde_json::json;

use crate::args::{Global, VmCommand};
use crate::client::{self, DaemonClient};
use crate::escape::escape;
use crate::output::{Output, Tone};
use crate::progress::human_bytes;

/// The one line `vm create` prints: what the VM got.
pub fn spec_line(v: &VmInfo) -> String {
    let s = &v.spec;
    format!(
        "vm {}: {} vCPU, {} MiB, {} disk, image {}, kernel {}, {}",
        escape(&v.name),
        s.cpus,
        s.memory_mib,
        human_bytes(s.disk_bytes),
        escape(&s.image),
        escape(&s.kernel),
        escape(s.ip.as_deref().unwrap_or("no network"))
    )
}

pub async fn vm(c: &mut DaemonClient, socket: &std::path::Path, request: Request) -> Result<VmInfo, Error> {
    match client::call(c, socket, &request).await? {
        Response::Vm(v) => Ok(v),
        other => Err(client::unexpected(&other)),
    }
}

fn show(out: &Output, v: &VmInfo, line: String) {
    if out.json {
        out.json(v);
    } else {
        println!("{line}");
    }
}

pub async fn run(global: &Global, cmd: VmCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, 2, "VMs")?;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    match cmd {
        VmCommand::Create { name, image, kernel, cpus, memory, disk, no_net, kernel_args, vmm, ports } => {
            let create = VmCreate {
                name,
                image,
                kernel,
                cpus,
                memory_mib: memory,
                disk_bytes: disk,
                network: !no_net,
                kernel_args,
                vmm,
                ports,
            };
            let v = vm(&mut c, &socket, Request::VmCreate(create)).await?;
            show(out, &v, spec_line(&v));
        }
        VmCommand::Start { name } => {
            let v = vm(&mut c, &socket, Request::VmStart { name }).await?;
            show(out, &v, format!("{} running (pid {})", escape(&v.name), v.pid.unwrap_or(0)));
        }
        VmCommand::Stop { name, timeout } => {
            let v = vm(&mut c, &socket, Request::VmStop { name, timeout_ms: ms(timeout) }).await?;
            show(out, &v, format!("{} {}", escape(&v.name), escape(&v.state.to_string())));
        }
        VmCommand::Kill { name } => {
            let v = vm(&mut c, &socket, Request::VmKill { name }).await?;
            show(out, &v, format!("{} {}", escape(&v.name), escape(&v.state.to_string())));
        }
        VmCommand::Restart { name, timeout } => {
            let v = vm(&mut c, &socket, Request::VmRestart { name, timeout_ms: ms(timeout) }).await?;
            show(out, &v, format!("{} running (pid {})", escape(&v.name), v.pid.unwrap_or(0)));
        }
        VmCommand::Rm { name, force } => {
            client::call(&mut c, &socket, &Request::VmRemove { name: name.clone(), force }).await?;
            out.removed(&name, &name);
        }
        VmCommand::Ls { all } => match client::call(&mut c, &socket, &Request::VmList { all }).await? {
            Response::Vms(list) if out.json => out.json(&list),
            Response::Vms(list) => print!("{}", table(&list, out)),
            other => return Err(client::unexpected(&other)),
        },
        VmCommand::Inspect { name } => {
            let v = vm(&mut c, &socket, Request::VmInspect { name }).await?;
            out.json(&v);
        }
        VmCommand::Run(_)
        | VmCommand::Exec(_)
        | VmCommand::Cp { .. }
        | VmCommand::Ssh { .. }
        | VmCommand::Proxy { .. }
        | VmCommand::Port(_)
        | VmCommand::Workspace(_) => {
            return Err(Error::internal(
                "vm run, exec, cp, ssh, proxy, port and workspace are dispatched in main",
            ));
        }
        VmCommand::Logs { name, follow } => {
            c.send(&Request::VmLogs { name, follow }).await.map_err(|e| client::advise(&socket, e))?;
            let mut stdout = std::io::stdout();
            loop {
                match c.next().await.map_err(|e| client::advise(&socket, e))? {
                    Some((Response::Log(bytes), _)) => {
                        let _ = stdout.write_all(&bytes);
                        let _ = stdout.flush();
                    }
                    Some((Response::Ok, false)) | None => break,
                    Some((Response::Error(e), _)) => return Err(e),
                    Some((other, _)) => return Err(client::unexpected(&other)),
                }
            }
        }
    }
    Ok(())
}

fn table(list: &[VmInfo], out: &Output) -> String {
    let mut text = format!(
        "{:<20} {:<10} {:>4} {:>9} {:<16} {:>8} {:<11} {:<9} {}\n",
        "NAME", "STATE", "CPUS", "MEMORY", "IMAGE", "PID", "VMM", "AGENT", "PORTS"
    );
    for v in list {
        let state = match &v.state {
            protocol::vm::VmState::Failed(_) => "failed".to_string(),
            protocol::vm::VmState::Damaged(_) => "damaged".to_string(),
            s => s.to_string(),
        };
        let tone = match v.state {
            protocol::vm::VmState::Running => Tone::Good,
            protocol::vm::VmState::Failed(_) | protocol::vm::VmState::Damaged(_) => Tone::Bad,
            _ => Tone::Dim,
        };
        let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let (agent, agent_tone) = match &v.agent {
            None => ("-", Tone::Dim),
            Some(AgentState::Waiting) => ("waiting", Tone::Dim),
            Some(AgentState::Ready(_)) => ("ready", Tone::Good),
            Some(AgentState::Degraded(_)) => ("degraded", Tone::Bad),
        };
        text.push_str(&format!(
            "{:<20} {} {:>4} {:>5} MiB {:<16} {:>8} {:<11} {} {}\n",
            escape(&v.name),
            out.paint(tone, &format!("{state:<10}")),
            v.spec.cpus,
            v.spec.memory_mib,
            escape(&v.spec.image),
            pid,
            v.spec.vmm.name(),
            out.paint(agent_tone, &format!("{agent:<9}")),
            super::port::summary(&v.ports),
        ));
    }
    text
}

/// `banger prune`: removes every VM that is not running, after asking (unless `--force`).
pub async fn prune(global: &Global, force: bool, out: &Output) -> Result<(), Error> {
    if !force {
        if !std::io::stdin().is_terminal() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "prune removes every stopped VM and needs confirmation",
            )
            .with_hint("pass --force to run it without a terminal"));
        }
        eprint!("Remove every VM that is not running? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !answer.trim().eq_ignore_ascii_case("y") {
            return Ok(());
        }
    }
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, 2, "VMs")?;
    match client::call(&mut c, &socket, &Request::VmPrune).await? {
        Response::Removed(names) if out.json => out.json(&json!({ "removed": names })),
        Response::Removed(names) => println!(
            "removed {} VM(s){}{}",
            names.len(),
            if names.is_empty() { "" } else { ": " },
            escape(&names.join(", "))
        ),
        other => return Err(client::unexpected(&other)),
    }
    Ok(())
}

/// `banger system uninstall`: the bridge and NAT table go.
pub async fn system_uninstall(global: &Global, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, 2, "system uninstall")?;
    match client::call(&mut c, &socket, &Request::SystemUninstall).await? {
        Response::Removed(what) if out.json => out.json(&json!({ "removed": what })),
        Response::Removed(what) => println!("removed {}", escape(&what.join(" and "))),
        other => return Err(client::unexpected(&other)),
    }
    Ok(())
}
