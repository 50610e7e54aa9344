//! `banger-helper`: the only banger code that runs as root.
//!
//! Order of work, as in Firecracker's jailer: sanitise the process (close inherited fds, clear
//! the environment, tight umask), validate every flag, then act. It serves one owner uid on its
//! own seqpacket socket; every other peer is refused after the handshake says why.

mod sanitize;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nix::unistd::Uid;

#[derive(Debug, Parser)]
#[command(name = "banger-helper", version, about = "banger's privileged helper (runs as root)")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "/run/banger/helper.sock")]
    socket: PathBuf,
    /// The only uid allowed to connect: the uid bangerd runs as.
    #[arg(long)]
    owner_uid: u32,
    /// Write the helper's pid here (for `banger daemon stop` without systemd).
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = sanitize::process() {
        eprintln!("banger-helper: cannot sanitise the process: {e}");
        return ExitCode::from(1);
    }
    if !Uid::effective().is_root() {
        eprintln!("banger-helper: must run as root (it creates taps and launches the jailer)");
        eprintln!(
            "hint: start it with `sudo banger daemon start`, or install the service: `sudo banger daemon install`"
        );
        return ExitCode::from(1);
    }
    if let Err(e) = sanitize::absolute(&args.socket).and_then(|()| match &args.pid_file {
        Some(p) => sanitize::absolute(p),
        None => Ok(()),
    }) {
        eprintln!("banger-helper: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banger-helper: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config =
        server::Config { socket: args.socket, owner: Uid::from_raw(args.owner_uid), pid_file: args.pid_file };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-helper: {e}");
            ExitCode::from(1)
        }
    }
}
