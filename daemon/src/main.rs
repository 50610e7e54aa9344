//! `bangerd`: the owner daemon. Parses flags, binds the socket, then hands everything to the
//! root supervisor running on an actix `System` over a multi-thread tokio runtime.

// Fault injection must never ship: a release build with it is refused outright.
#[cfg(all(feature = "chaos", not(debug_assertions)))]
compile_error!("the `chaos` feature is for test builds only; build releases without it");

mod admission;
mod api_server;
mod child;
mod config;
mod connection;
mod disk;
mod fsutil;
mod guest_agent;
mod helper;
mod image_cache;
mod kernels;
mod logging;
mod network;
mod notify;
mod peers;
mod persist;
mod ssh;
mod store;
mod subprocess;
mod supervisor;
mod vm;
mod vm_manager;
mod vmm;

use std::process::ExitCode;

use actix::Actor;
use clap::Parser;
use slog::{error, info, o};

use crate::config::{Args, Config};
use crate::supervisor::{Shutdown, Supervisor};

fn main() -> ExitCode {
    let args = Args::parse();
    let log = logging::build(args.log_format, args.log_level);
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            error!(log, "bad configuration"; "error" => %e);
            eprintln!("bangerd: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit(&log);
    let listener = match api_server::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bangerd: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = config.socket.clone();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime can be built at start-up")
    });
    let result = system.block_on(async move {
        info!(log, "starting"; "socket" => %config.socket.display(), "state_dir" => %config.layout.state_dir.display(),
            "chaos" => cfg!(feature = "chaos"));
        let root = Supervisor::new(config, listener, log.new(o!("actor" => "supervisor"))).start();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        actix_rt::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            root.do_send(Shutdown { reason: "signal" });
        });
        Ok::<_, std::io::Error>(())
    });
    if let Err(e) = result {
        eprintln!("bangerd: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    let code = system.run();
    let _ = std::fs::remove_file(&socket);
    match code {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e}");
            ExitCode::from(1)
        }
    }
}

/// Raises the soft limit on open files to the hard one: the usual soft limit (1024) is less
/// than the connections bangerd serves plus what its VMs need.
fn raise_fd_limit(log: &slog::Logger) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use slog::warn;
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => return warn!(log, "cannot read the open-file limit"; "error" => %e),
    };
    let raised = if soft < hard { setrlimit(Resource::RLIMIT_NOFILE, hard, hard) } else { Ok(()) };
    if let Err(e) = raised {
        warn!(log, "cannot raise the open-file limit"; "soft" => soft, "hard" => hard, "error" => %e);
    }
    let wanted = (connection::seats::MAX_CONNECTIONS + 256) as u64;
    if hard < wanted {
        warn!(log, "the open-file limit is low for the connections bangerd serves";
            "limit" => hard, "wanted" => wanted, "hint" => "raise LimitNOFILE (systemd) or `ulimit -Hn`");
    }
}
