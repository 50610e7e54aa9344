//! `banger daemon start|stop|restart|status|install|uninstall`.
//!
//! Without systemd, `start` spawns bangerd (and banger-helper when root) in the background and
//! waits until the socket answers a ping; with installed units it asks systemctl instead.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};
use protocol::daemon::{ActorStatus, Request, Response, StatusReport};
use protocol::{Error, ErrorKind};
use serde_json::json;

use crate::args::{DaemonCommand, Global, InstallArgs, StartArgs, StopArgs};
use crate::client;
use crate::output::{Output, Tone};
use crate::systemd;

pub async fn run(global: &Global, cmd: DaemonCommand, out: &Output) -> Result<(), Error> {
    match cmd {
        DaemonCommand::Start(args) => start(global, &args, out).await,
        DaemonCommand::Stop(args) => stop(global, &args, out).await,
        DaemonCommand::Restart(args) => {
            stop_quietly(global, &StopArgs { timeout: args.timeout }).await?;
            start(global, &args, out).await
        }
        DaemonCommand::Status => status(global, out).await,
        DaemonCommand::Install(args) => install(&args, out),
        DaemonCommand::Uninstall(args) => uninstall(&args, out),
    }
}

/// The daemon's pid when it answers a status request.
async fn running_pid(socket: &Path) -> Result<u32, Error> {
    let mut c = client::connect(socket).await?;
    match client::call(&mut c, socket, &Request::Status).await? {
        Response::Status(s) => Ok(s.pid),
        other => Err(client::unexpected(&other)),
    }
}

/// systemd manages the daemon when it runs, the default layout is in use, and a unit exists.
fn systemd_unit(global: &Global) -> Option<Vec<&'static str>> {
    if !systemd::running() || global.state_dir.is_some() || global.socket.is_some() {
        return None;
    }
    let user = !global.system && !Uid::effective().is_root();
    let installed = systemd::default_unit_dir(user).join(systemd::DAEMON_UNIT).exists();
    installed.then(|| if user { vec!["--user"] } else { vec![] })
}

pub fn systemctl(scope: &[&str], args: &[&str]) -> Result<(), Error> {
    let status = Command::new("systemctl").args(scope).args(args).status().map_err(|e| {
        Error::new(ErrorKind::Unavailable, format!("cannot run systemctl: {e}"))
            .with_hint("is systemd installed?")
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Internal, format!("`systemctl {}` failed ({status})", args.join(" ")))
            .with_hint("see `journalctl -u bangerd`"))
    }
}

/// Finds a sibling binary of this `banger`, else one on PATH.
pub fn find_binary(name: &str) -> Result<PathBuf, Error> {
    let sibling = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join(name)));
    if let Some(p) = sibling.filter(|p| p.is_file()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("cannot find {name} next to banger or on PATH"),
            )
            .with_hint(
                "build everything with `cargo build --workspace --release`, or install the binaries together",
            )
        })
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Child, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", log.display())))?;
    let err = file.try_clone().map_err(|e| Error::internal(e.to_string()))?;
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // Its own process group: a Ctrl-C aimed at this command must not reach the daemon.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::internal(format!("cannot start {}: {e}", program.display())))
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn failed_to_start(what: &str, log: &Path, why: String) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "{what} did not start: {why}\n--- last lines of {} ---\n{}",
            log.display(),
            log_tail(log, 20)
        ),
    )
    .with_hint(format!("see the whole log in {}", log.display()))
}

async fn start(global: &Global, args: &StartArgs, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    if let Some(scope) = systemd_unit(global) {
        // systemd starts (and restarts) both; the helper unit is pulled in by the daemon's.
        if let Ok(pid) = running_pid(&socket).await {
            return report_started(out, &socket, pid, true);
        }
        systemctl(&scope, &["start", systemd::DAEMON_UNIT])?;
        let pid = wait_answering(&socket, args.timeout, || None).await?;
        return report_started(out, &socket, pid, false);
    }
    let layout = global.layout();
    create_run_dir(&layout.run_dir)?;
    let root = Uid::effective().is_root();
    let helper_socket = layout.helper_socket();
    // Without systemd this is what restarts a helper that died: start it if it does not answer,
    // even when the daemon runs (the daemon reconnects by itself).
    if root && !args.no_helper {
        start_helper(&layout.run_dir, &layout.state_dir, &helper_socket, args.timeout).await?;
    }
    if let Ok(pid) = running_pid(&socket).await {
        return report_started(out, &socket, pid, true);
    }
    let mut daemon_args = vec!["--socket".to_string(), socket.display().to_string()];
    if let Some(dir) = &global.state_dir {
        daemon_args.extend(["--state-dir".into(), dir.display().to_string()]);
    } else if global.system {
        daemon_args.push("--system".into());
    }
    if let Some(g) = &args.group {
        daemon_args.extend(["--group".into(), g.clone()]);
    }
    if args.no_helper {
        daemon_args.push("--no-helper".into());
    } else {
        daemon_args.extend(["--helper-socket".into(), helper_socket.display().to_string()]);
    }
    daemon_args.extend(["--log-format".into(), "human".into()]);
    let log = layout.run_dir.join("bangerd.log");
    let mut child = spawn_logged(&find_binary("bangerd")?, &daemon_args, &log)?;
    let pid =
        wait_answering(&socket, args.timeout, || child.try_wait().ok().flatten().map(|s| s.to_string()))
            .await
            .map_err(|e| failed_to_start("bangerd", &log, e.message))?;
    report_started(out, &socket, pid, false)
}

/// The run dir is searchable by all (a `--group` member must reach the socket); the socket's
/// own mode and the daemon's peer check decide who may use it, and the logs in it are 0600.
fn create_run_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))
}

async fn start_helper(
    run_dir: &Path,
    state_dir: &Path,
    socket: &Path,
    timeout: Duration,
) -> Result<(), Error> {
    if protocol::channel::Client::<protocol::channel::Helper>::connect(socket, "banger").await.is_ok() {
        return Ok(());
    }
    let log = run_dir.join("helper.log");
    let args = vec![
        "--socket".to_string(),
        socket.display().to_string(),
        "--owner-uid".into(),
        Uid::effective().to_string(),
        "--pid-file".into(),
        run_dir.join("helper.pid").display().to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
    ];
    let mut child = spawn_logged(&find_binary("banger-helper")?, &args, &log)?;
    let deadline = Instant::now() + timeout;
    loop {
        if protocol::channel::Client::<protocol::channel::Helper>::connect(socket, "banger").await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed_to_start("banger-helper", &log, format!("it exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(failed_to_start("banger-helper", &log, format!("no answer within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the daemon answers; `exited` says whether (and how) the process already died.
async fn wait_answering(
    socket: &Path,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<u32, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match running_pid(socket).await {
            Ok(pid) => return Ok(pid),
            Err(e) if e.kind != ErrorKind::Unavailable => return Err(e),
            Err(_) => {}
        }
        if let Some(status) = exited() {
            return Err(Error::new(ErrorKind::Unavailable, format!("it exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("no answer on {} within {timeout:?}", socket.display()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report_started(out: &Output, socket: &Path, pid: u32, already: bool) -> Result<(), Error> {
    if out.json {
        out.json(&json!({ "pid": pid, "socket": socket, "already_running": already }));
    } else if already {
        println!("bangerd is already running (pid {pid}, socket {})", socket.display());
    } else {
        println!("bangerd started (pid {pid}, socket {})", socket.display());
    }
    Ok(())
}

async fn stop(global: &Global, args: &StopArgs, out: &Output) -> Result<(), Error> {
    let (was_running, helper) = stop_quietly(global, args).await?;
    if out.json {
        out.json(&json!({ "was_running": was_running, "helper_stopped": helper }));
    } else if was_running {
        println!("bangerd stopped");
    } else {
        println!("bangerd was not running");
    }
    Ok(())
}

/// Stops the daemon and the helper; says whether each was running.
async fn stop_quietly(global: &Global, args: &StopArgs) -> Result<(bool, bool), Error> {
    let socket = global.socket();
    let was_running = if let Some(scope) = systemd_unit(global) {
        systemctl(&scope, &["stop", systemd::DAEMON_UNIT])?;
        true
    } else {
        match client::connect(&socket).await {
            Err(e) if e.kind == ErrorKind::Unavailable => false,
            Err(e) => return Err(e),
            Ok(mut c) => {
                client::call(&mut c, &socket, &Request::Shutdown).await?;
                wait_gone(&socket, args.timeout).await?;
                true
            }
        }
    };
    let helper = stop_helper(&global.layout().run_dir, args.timeout).await?;
    Ok((was_running, helper))
}

async fn wait_gone(socket: &Path, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while running_pid(socket).await.is_ok() {
        if Instant::now() > deadline {
            return Err(Error::new(ErrorKind::Internal, format!("bangerd still answers after {timeout:?}"))
                .with_hint("see `banger daemon status`; as a last resort kill its pid"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Stops the helper `daemon start` launched, if its pid file names a live banger-helper.
async fn stop_helper(run_dir: &Path, timeout: Duration) -> Result<bool, Error> {
    let pid_file = run_dir.join("helper.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return Ok(false);
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if pid <= 1 || comm.trim() != "banger-helper" {
        let _ = std::fs::remove_file(&pid_file);
        return Ok(false);
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| {
        Error::new(ErrorKind::PermissionDenied, format!("cannot stop banger-helper (pid {pid}): {e}"))
    })?;
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        if Instant::now() > deadline {
            return Err(Error::internal(format!(
                "banger-helper (pid {pid}) did not stop within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

async fn status(global: &Global, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    let report = match client::call(&mut c, &socket, &Request::Status).await? {
        Response::Status(s) => s,
        other => return Err(client::unexpected(&other)),
    };
    if out.json {
        out.json(&report);
    } else {
        print!("{}", render_status(&report, out));
    }
    Ok(())
}

fn render_status(s: &StatusReport, out: &Output) -> String {
    let mut text = format!(
        "{} (protocol {}), pid {}, up {}\nsocket {}\nstate  {}\n",
        s.version.software,
        s.version.protocol,
        s.pid,
        human_duration(s.uptime_ms),
        s.socket,
        s.state_dir
    );
    render_actor(&s.root, "", "", out, &mut text);
    text
}

fn render_actor(a: &ActorStatus, first: &str, rest: &str, out: &Output, text: &mut String) {
    let tone = match a.state {
        protocol::daemon::ActorState::Running => Tone::Good,
        protocol::daemon::ActorState::Restarting { .. } => Tone::Bad,
        _ => Tone::Warn,
    };
    let restarts = match (&a.last_exit, a.restarts) {
        (_, 0) => String::new(),
        (Some(how), n) => format!("  restarts {n} (last {how})"),
        (None, n) => format!("  restarts {n}"),
    };
    let detail = a.detail.as_deref().map(|d| format!("  {}", out.paint(Tone::Dim, d))).unwrap_or_default();
    text.push_str(&format!(
        "{first}{:<10} {}{restarts}{detail}\n",
        a.name,
        out.paint(tone, &a.state.to_string())
    ));
    for (i, child) in a.children.iter().enumerate() {
        let last = i + 1 == a.children.len();
        let (branch, indent) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        render_actor(child, &format!("{rest}{branch}"), &format!("{rest}{indent}"), out, text);
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The system daemon's and helper's units, the daemon running as `account`.
pub fn system_units(
    account: &crate::accounts::Account,
    group: Option<&str>,
) -> Result<Vec<(&'static str, String)>, Error> {
    if account.uid == 0 {
        return Err(Error::new(ErrorKind::InvalidInput, "the system daemon must not run as root")
            .with_hint("name a system user: `--service-user banger`"));
    }
    let who = systemd::SystemDaemon { user: &account.name, group: Some(group.unwrap_or(&account.group)) };
    Ok(vec![
        (systemd::DAEMON_UNIT, systemd::system_daemon_unit(&find_binary("bangerd")?, &who)),
        (systemd::HELPER_UNIT, systemd::helper_unit(&find_binary("banger-helper")?, account.uid)),
    ])
}

fn install(args: &InstallArgs, out: &Output) -> Result<(), Error> {
    let dir = args.unit_dir.clone().unwrap_or_else(|| systemd::default_unit_dir(args.user));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    let units = if args.user {
        vec![(systemd::DAEMON_UNIT, systemd::user_daemon_unit(&find_binary("bangerd")?))]
    } else {
        let account = crate::accounts::user(&args.service_user)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("user {:?} does not exist", args.service_user))
                .with_hint("`sudo banger system install` creates it (or `useradd --system` one, and pass --service-user)")
        })?;
        system_units(&account, args.group.as_deref())?
    };
    let mut written = vec![];
    for (name, text) in &units {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| {
            Error::new(ErrorKind::PermissionDenied, format!("cannot write {}: {e}", path.display()))
                .with_hint("a system install needs root: `sudo banger daemon install`, or use --user")
        })?;
        written.push(path);
    }
    let enable = !args.no_enable && args.unit_dir.is_none() && systemd::running();
    if enable {
        let scope: &[&str] = if args.user { &["--user"] } else { &[] };
        systemctl(scope, &["daemon-reload"])?;
        let mut enable_args = vec!["enable", "--now"];
        enable_args.extend(units.iter().map(|(n, _)| *n));
        systemctl(scope, &enable_args)?;
    }
    if out.json {
        out.json(&json!({ "written": written, "enabled": enable }));
    } else {
        for p in &written {
            println!("wrote {}", p.display());
        }
        if enable {
            println!("enabled and started {}", units.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "));
        } else if !systemd::running() {
            println!("systemd is not running here; start banger with `banger daemon start`");
        }
    }
    Ok(())
}

fn uninstall(args: &InstallArgs, out: &Output) -> Result<(), Error> {
    let dir = args.unit_dir.clone().unwrap_or_else(|| systemd::default_unit_dir(args.user));
    let names = [systemd::DAEMON_UNIT, systemd::HELPER_UNIT];
    let scope: &[&str] = if args.user { &["--user"] } else { &[] };
    let present: Vec<&str> = names.into_iter().filter(|n| dir.join(n).exists()).collect();
    if !args.no_enable && args.unit_dir.is_none() && systemd::running() && !present.is_empty() {
        let mut disable = vec!["disable", "--now"];
        disable.extend(&present);
        systemctl(scope, &disable)?;
    }
    let mut removed = vec![];
    for n in &present {
        let path = dir.join(n);
        std::fs::remove_file(&path)
            .map_err(|e| Error::internal(format!("cannot remove {}: {e}", path.display())))?;
        removed.push(path);
    }
    if out.json {
        out.json(&json!({ "removed": removed }));
    } else if removed.is_empty() {
        println!("no banger units in {}", dir.display());
    } else {
        for p in &removed {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}
