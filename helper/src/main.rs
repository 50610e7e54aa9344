//! `banger-helper`: the only banger code that runs as root.
//!
//! Order of work, as in Firecracker's jailer: sanitise the process (close inherited fds, clear
//! the environment, tight umask), validate every flag, then act. It serves one owner uid on its
//! own seqpacket socket; every other peer is refused after the handshake says why.

mod beneath;
mod jail;
mod net;
mod process;
mod qemu;
mod sanitize;
mod server;
mod validate;

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
    /// banger's state directory: the only place VM files may come from, and where jails go.
    #[arg(long, default_value = "/var/lib/banger")]
    state_dir: PathBuf,
    #[arg(long, default_value = "/usr/local/bin/firecracker")]
    firecracker: PathBuf,
    #[arg(long, default_value = "/usr/local/bin/jailer")]
    jailer: PathBuf,
    /// QEMU, for VMs that ask for it (`--vmm qemu`).
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    qemu: PathBuf,
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
    let paths = [
        Some(&args.socket),
        args.pid_file.as_ref(),
        Some(&args.state_dir),
        Some(&args.firecracker),
        Some(&args.jailer),
        Some(&args.qemu),
    ];
    if let Err(e) = paths.into_iter().flatten().try_for_each(|p| validate::absolute(p)) {
        eprintln!("banger-helper: {e}");
        return ExitCode::from(2);
    }
    // The VMMs the jailer forks become the helper's children when the jailer exits, which
    // proves whose they are (`process::Vmm::launched`) and lets the helper collect their exit.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("banger-helper: cannot become a child subreaper: {e}");
        return ExitCode::from(1);
    }
    let owner = Uid::from_raw(args.owner_uid);
    let owner_gid = match nix::unistd::User::from_uid(owner) {
        Ok(Some(u)) => u.gid,
        _ => nix::unistd::Gid::from_raw(args.owner_uid),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banger-helper: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let jails =
        jail::Jails::new(args.state_dir, (args.firecracker, args.jailer, args.qemu), owner, owner_gid);
    let config = server::Config { socket: args.socket, owner, pid_file: args.pid_file, jails };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-helper: {e}");
            ExitCode::from(1)
        }
    }
}
