//! `banger-agent`: the guest's initrd `/init`, its PID 1, and the agent the daemon talks to.
//! Statically linked (`+crt-static`); it must never panic (it is PID 1: a panic is a kernel
//! panic), so nothing here unwraps outside data.
//!
//! Modes: PID 1 (`getpid() == 1`: from the initrd or as `init=`), `--listen-unix PATH` (the
//! agent protocol as an ordinary host process, for tests), `ssh-server …` (the built-in SSH
//! server, see `ssh::server`), `--version`.

mod channel;
mod cmdline;
mod connect;
mod copy;
mod exec;
mod init;
mod modules;
mod net;
mod outbox;
mod pid1;
mod reaper;
mod session;
mod signals;
mod spawn;
mod ssh;
mod sys;
mod users;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protocol::agent::BootTimings;

use crate::reaper::Reaper;
use crate::session::Agent;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The built-in SSH server is a process of its own, with its own (async) design: it takes
    // none of the agent's signal handling.
    if args.get(1).map(String::as_str) == Some("ssh-server") {
        return ssh::server::main(args.get(2..).unwrap_or_default());
    }
    signals::block();
    if std::process::id() == 1 {
        pid1::run();
    }
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--version" | "-V"), None) => {
            let _ = writeln!(std::io::stdout(), "banger-agent {}", protocol::SOFTWARE_VERSION);
            ExitCode::SUCCESS
        }
        (Some("--listen-unix"), Some(path)) => match ssh_options(args.get(3..).unwrap_or_default()) {
            Ok(ssh) => listen_unix(Path::new(path), ssh),
            Err(e) => usage(&e),
        },
        _ => usage(""),
    }
}

fn usage(problem: &str) -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "{problem}{}usage: banger-agent --listen-unix PATH [--ssh-root DIR --ssh-port P] | --version | \
         ssh-server …\n(as PID 1 it is the guest's init)",
        if problem.is_empty() { "" } else { "\n" }
    );
    ExitCode::from(2)
}

/// `--ssh-root DIR --ssh-port P`: where a host-process agent installs ssh keys and which port
/// its SSH server takes (tests); without them it refuses `Ssh` requests.
fn ssh_options(args: &[String]) -> Result<Option<(std::path::PathBuf, u16)>, String> {
    match args {
        [] => Ok(None),
        [a, root, b, port] if a == "--ssh-root" && b == "--ssh-port" => {
            let port = port.parse().map_err(|_| format!("{port} is not a port"))?;
            Ok(Some((root.into(), port)))
        }
        _ => Err(format!("unexpected arguments: {}", args.join(" "))),
    }
}

/// The agent as a host process: serves the protocol on a unix socket, one session at a time,
/// and adopts its execs' orphans (a subreaper), so it reaps as PID 1 would.
fn listen_unix(path: &Path, ssh: Option<(std::path::PathBuf, u16)>) -> ExitCode {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        log!("cannot become a subreaper: {}", std::io::Error::last_os_error());
    }
    sys::raise_nofile();
    let listener = match channel::Listener::unix(path) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let reaper = Arc::new(Reaper::default());
    let r = reaper.clone();
    let ssh = ssh.map(|(root, port)| Arc::new(ssh::setup::Ssh::new(root, port, reaper.clone(), false)));
    let agent = Agent {
        reaper: reaper.clone(),
        guest: false,
        ssh,
        timings: Mutex::new(BootTimings {
            init_us: 0,
            modules_us: None,
            root_us: None,
            listening_us: sys::boottime_us(),
            ready_us: 0,
        }),
        ready_once: OnceLock::new(),
        power_off: Box::new(move || {
            signals::kill_children(&r, Duration::from_secs(2));
            std::process::exit(0);
        }),
    };
    let serving =
        std::thread::Builder::new().name("sessions".into()).spawn(move || serve_forever(&agent, &listener));
    if let Err(e) = serving {
        log!("cannot start the session thread: {e}");
        return ExitCode::FAILURE;
    }
    let r = reaper.clone();
    signals::run(&reaper, &move |_| {
        signals::kill_children(&r, Duration::from_secs(2));
        std::process::exit(0);
    })
}

/// Accepts hosts one after another, forever.
pub fn serve_forever(agent: &Agent, listener: &channel::Listener) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let end = session::serve(agent, conn);
                if end != session::End::Lost {
                    log!("session ended: {end:?}");
                }
            }
            Err(e) => {
                log!("accept on {} failed: {e}", listener.describe());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
