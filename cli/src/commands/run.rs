//! `banger vm run`: pull if missing, create, start, wait for the agent, then run the command
//! (or the image's entrypoint and cmd) and exit with its code; `--rm` removes the VM after,
//! `-d` leaves it running; `--timings` says where the time went.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::agent::BootTimings;
use protocol::daemon::{Request, Response};
use protocol::image::ImageInfo;
use protocol::vm::{AgentState, VmCreate, VmInfo};
use protocol::{Error, ErrorKind};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{Global, RunArgs};
use crate::client::{self, DaemonClient};
use crate::commands::exec;
use crate::commands::image::{PullArgs, pull};
use crate::escape::escape;
use crate::output::Output;
use crate::session::{EXEC_SINCE, Session};

/// How long to wait for a booted guest's agent.
const AGENT_WAIT: Duration = Duration::from_secs(120);
/// How long `--rm` gives the guest to shut down before the VM is killed.
const RM_STOP: Duration = Duration::from_secs(5);

/// Where the time went, for `--timings`.
#[derive(Default)]
struct Timings {
    pull: Option<Duration>,
    create: Duration,
    start: Duration,
    wait: Duration,
    boot: Option<BootTimings>,
    exec: Option<Duration>,
}

pub async fn run(global: &Global, args: RunArgs, out: &Output) -> Result<i32, Error> {
    exec::check_tty(&args.opts)?;
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, EXEC_SINCE, "vm run")?;
    let mut timings = Timings::default();
    let image = tokio::select! {
        image = find_or_pull(&mut c, &socket, &args.image, out, &mut timings) => image?,
        signal = interrupted() => return Ok(128 + signal),
    };
    let vm = create(&mut c, &socket, &args, &image.name, &mut timings).await?;
    let name = vm.name.clone();
    let result = boot_and_run(&mut c, &socket, &args, &image, &vm, out, &mut timings).await;
    if args.rm {
        remove(&mut c, &socket, &name).await;
    } else if result.is_err() {
        eprintln!("banger: VM {} is left as it is; remove it with `banger vm rm -f {0}`", escape(&name));
    }
    if args.timings {
        print_timings(&timings);
    }
    result
}

/// Boots the created VM and runs the command, or (with `-d`) prints the VM once it is ready.
/// Ctrl-C while booting stops here (and `--rm` still cleans up).
async fn boot_and_run(
    c: &mut DaemonClient,
    socket: &Path,
    args: &RunArgs,
    image: &ImageInfo,
    vm: &VmInfo,
    out: &Output,
    timings: &mut Timings,
) -> Result<i32, Error> {
    let name = vm.name.clone();
    let ready = tokio::select! {
        ready = boot(c, socket, &name, timings) => ready?,
        signal = interrupted() => return Ok(128 + signal),
    };
    let workdir = match &args.workspace {
        Some(dir) => Some(crate::commands::workspace::copy_for_run(socket, &name, dir, out.json).await?),
        None => None,
    };
    if args.detach {
        if out.json {
            out.json(&ready);
        } else {
            println!("{}", escape(&ready.name));
        }
        return Ok(0);
    }
    let argv = if args.command.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        args.command.clone()
    };
    if argv.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("image {} sets no entrypoint or cmd, and no command was given", escape(&image.name)),
        )
        .with_hint(format!("name one: banger vm run {} -- sh", escape(&args.image))));
    }
    let workdir = workdir.as_deref().unwrap_or(&image.workdir);
    let spec = exec::spec(argv, &image.env, &args.opts, Some(workdir), Some(&image.user));
    let started = Instant::now();
    let signals = exec::Signals::watch()?;
    let session = Session::open(socket, &Request::VmExec { name, spec }).await?;
    let ending = exec::stream(session, signals, &args.opts).await?;
    timings.exec = Some(started.elapsed());
    Ok(ending.report())
}

/// The image by local name, else by the name a pull of that reference makes, else pulled.
async fn find_or_pull(
    c: &mut DaemonClient,
    socket: &Path,
    image: &str,
    out: &Output,
    timings: &mut Timings,
) -> Result<ImageInfo, Error> {
    let local = local_name(image);
    for name in [image, local.as_str()] {
        match client::call(c, socket, &Request::ImageInspect { name: name.to_string() }).await {
            Ok(Response::Image(info)) => return Ok(info),
            Ok(other) => return Err(client::unexpected(&other)),
            Err(e) if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
    }
    let started = Instant::now();
    let args = PullArgs { reference: image.to_string(), name: Some(local), size: None, replace: false };
    let info = pull(c, socket, args, out).await?;
    timings.pull = Some(started.elapsed());
    Ok(info)
}

/// The local name `banger image pull` gives a reference: its repository's last segment, and
/// its tag unless `latest` (`alpine:3.19` → `alpine-3.19`), as the daemon makes it.
pub fn local_name(reference: &str) -> String {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let (repo, tag) = match last.split_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (last, None),
    };
    let suffix = match (tag, digest) {
        (Some("latest"), _) | (None, None) => String::new(),
        (Some(t), _) => format!("-{t}"),
        (None, Some(d)) => {
            let hex = d.trim_start_matches("sha256:");
            format!("-{}", hex.get(..12).unwrap_or(hex))
        }
    };
    let raw = format!("{repo}{suffix}").to_ascii_lowercase();
    let cleaned: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    cleaned.trim_start_matches(['.', '_', '-']).chars().take(63).collect()
}

/// Creates the VM, under `--name` or a generated name (another one if that is taken).
async fn create(
    c: &mut DaemonClient,
    socket: &Path,
    args: &RunArgs,
    image: &str,
    timings: &mut Timings,
) -> Result<VmInfo, Error> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let name = args.name.clone().unwrap_or_else(|| crate::names::generate(attempt));
        let create = VmCreate {
            name,
            image: image.to_string(),
            kernel: args.kernel.clone(),
            cpus: args.cpus,
            memory_mib: args.memory,
            disk_bytes: args.disk,
            network: !args.no_net,
            kernel_args: vec![],
            vmm: args.vmm,
            ports: args.ports.clone(),
        };
        match crate::commands::vm::vm(c, socket, Request::VmCreate(create)).await {
            Ok(vm) => {
                timings.create = started.elapsed();
                return Ok(vm);
            }
            Err(e) if e.kind == ErrorKind::Conflict && args.name.is_none() && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Starts the VM and waits for its agent; the VM as it is then.
async fn boot(
    c: &mut DaemonClient,
    socket: &Path,
    name: &str,
    timings: &mut Timings,
) -> Result<VmInfo, Error> {
    let started = Instant::now();
    crate::commands::vm::vm(c, socket, Request::VmStart { name: name.to_string() }).await?;
    timings.start = started.elapsed();
    let waiting = Instant::now();
    let timeout_ms = AGENT_WAIT.as_millis() as u64;
    let vm =
        crate::commands::vm::vm(c, socket, Request::VmWait { name: name.to_string(), timeout_ms }).await?;
    timings.wait = waiting.elapsed();
    match &vm.agent {
        Some(AgentState::Ready(ready)) => {
            timings.boot = Some(ready.timings.clone());
            Ok(vm)
        }
        Some(AgentState::Degraded(why)) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("the agent in VM {} is not answering: {}", escape(name), escape(why)),
        )
        .with_hint(format!("see the guest's console: banger vm logs {}", escape(name)))),
        _ => Err(Error::new(
            ErrorKind::Unavailable,
            format!("VM {} is running, but its agent is not ready", escape(name)),
        )
        .with_hint(format!("see the guest's console: banger vm logs {}", escape(name)))),
    }
}

/// `--rm`: a short graceful stop, then removal (forced: a stop that timed out is killed).
async fn remove(c: &mut DaemonClient, socket: &Path, name: &str) {
    let timeout_ms = RM_STOP.as_millis() as u64;
    let _ = client::call(c, socket, &Request::VmStop { name: name.to_string(), timeout_ms }).await;
    if let Err(e) = client::call(c, socket, &Request::VmRemove { name: name.to_string(), force: true }).await
    {
        eprintln!("banger: could not remove VM {}: {}", escape(name), escape(&e.message));
    }
}

/// Resolves with the signal's number on the first SIGINT, SIGTERM or SIGHUP.
async fn interrupted() -> i32 {
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => libc::SIGINT,
        _ = term.recv() => libc::SIGTERM,
        _ = hup.recv() => libc::SIGHUP,
    }
}

fn ms(d: Duration) -> String {
    format!("{:>7.1} ms", d.as_secs_f64() * 1000.0)
}

fn us(v: u64) -> String {
    format!("{:>7.1} ms", v as f64 / 1000.0)
}

fn print_timings(t: &Timings) {
    let mut lines = vec!["timings:".to_string()];
    match t.pull {
        Some(d) => lines.push(format!("  pull                  {}", ms(d))),
        None => lines.push("  pull                       - (present)".into()),
    }
    lines.push(format!("  create (disk)         {}", ms(t.create)));
    lines.push(format!("  VMM start             {}", ms(t.start)));
    lines.push(format!("  boot to agent ready   {}", ms(t.wait)));
    if let Some(b) = &t.boot {
        lines.push(format!("    kernel → /init      {}", us(b.init_us)));
        // Each step the guest took, and how long after the one before it.
        let steps = [
            ("modules loaded", b.modules_us),
            ("root mounted", b.root_us),
            ("agent listening", Some(b.listening_us)),
            ("agent ready", Some(b.ready_us)),
        ];
        let mut last = b.init_us;
        for (label, at) in steps {
            let Some(at) = at else { continue };
            lines.push(format!("    {label:<20}{}  (+{})", us(at), us(at.saturating_sub(last)).trim()));
            last = at;
        }
        // The guest counts from its kernel's start; what the host spent around that (VMM
        // launch, kernel loading, the daemon's own work and round trips) is the rest.
        let host = (t.start + t.wait).saturating_sub(Duration::from_micros(b.ready_us));
        lines.push(format!("  outside the guest     {}  (daemon, VMM launch, kernel load)", ms(host)));
    }
    if let Some(d) = t.exec {
        lines.push(format!("  exec                  {}", ms(d)));
    }
    let total = t.pull.unwrap_or_default() + t.create + t.start + t.wait + t.exec.unwrap_or_default();
    lines.push(format!("  total                 {}", ms(total)));
    eprintln!("{}", lines.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::local_name;

    #[test]
    fn local_names_match_the_daemons() {
        assert_eq!(local_name("alpine"), "alpine");
        assert_eq!(local_name("alpine:latest"), "alpine");
        assert_eq!(local_name("alpine:3.19"), "alpine-3.19");
        assert_eq!(local_name("127.0.0.1:5000/team/app:V1"), "app-v1");
        assert_eq!(local_name("localhost:5000/app"), "app");
        let digest = format!("busybox@sha256:{}", "ab".repeat(32));
        assert_eq!(local_name(&digest), "busybox-abababababab");
    }
}
