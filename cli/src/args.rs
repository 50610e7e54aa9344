//! The command-line grammar (clap derive). One subcommand group per file in `commands/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::paths::Layout;
use protocol::vm::VmmKind;

pub use crate::exec_args::{CP_HELP, EXEC_EXAMPLES, ExecArgs, ExecOpts, RUN_EXAMPLES, RunArgs};

#[derive(Debug, Parser)]
#[command(name = "banger", version, about = "Disposable Linux microVMs", propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk to the daemon on this socket.
    #[arg(long, global = true, env = "BANGER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Keep all state and sockets under this directory (tests, several daemons on one host).
    #[arg(long, global = true, env = "BANGER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use the system service's socket and state (/run/banger, /var/lib/banger).
    #[arg(long, global = true)]
    pub system: bool,
}

impl Global {
    pub fn layout(&self) -> Layout {
        Layout::resolve(self.state_dir.as_deref(), self.system)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.layout().daemon_socket())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the client's and the daemon's versions.
    Version,
    /// Start, stop, inspect or install the daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Pull, list, inspect and remove images; prune the blob cache.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create, start, stop and remove VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Import, list and remove kernels.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// List running VMs (`vm ls`).
    Ps {
        /// Stopped and failed VMs too.
        #[arg(long, short)]
        all: bool,
    },
    /// Remove a VM (`vm rm`).
    Rm {
        name: String,
        #[arg(long, short)]
        force: bool,
    },
    /// Remove every VM that is not running.
    Prune {
        /// Do not ask.
        #[arg(long, short)]
        force: bool,
    },
    /// Host-wide set-up.
    #[command(subcommand)]
    System(SystemCommand),
    /// Make `ssh NAME.banger` work from anywhere (an `Include` in ~/.ssh/config).
    #[command(subcommand)]
    SshConfig(SshConfigCommand),
    /// Print a shell completion script, e.g. `banger completion bash > /etc/bash_completion.d/banger`.
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start bangerd (and banger-helper when root); uses systemd when the units are installed.
    Start(StartArgs),
    /// Stop bangerd (and the helper this command started).
    Stop(StopArgs),
    /// Stop, then start.
    Restart(StartArgs),
    /// Show the daemon's actor tree, restarts and uptime.
    Status,
    /// Write systemd units and enable them where systemd runs.
    Install(InstallArgs),
    /// Disable and remove the systemd units.
    Uninstall(InstallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// How long to wait for the daemon to answer.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Members of this group may use the daemon's socket too.
    #[arg(long)]
    pub group: Option<String>,
    /// Do not start banger-helper even when running as root.
    #[arg(long)]
    pub no_helper: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Install the per-user units (systemctl --user) instead of the system ones.
    #[arg(long)]
    pub user: bool,
    /// Write the units here instead of systemd's directory.
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
    /// Members of this group may use the system daemon's socket.
    #[arg(long)]
    pub group: Option<String>,
    /// Only write (or remove) the files; do not call systemctl.
    #[arg(long)]
    pub no_enable: bool,
    /// The user the system daemon runs as (`banger system install` creates it).
    #[arg(long, default_value = "banger", value_name = "NAME")]
    pub service_user: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 500ms, 15s or 2m");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry and flatten it into a root filesystem.
    Pull {
        /// e.g. alpine:3.19 or 127.0.0.1:5000/team/app@sha256:…
        reference: String,
        /// The local name (default: from the reference, e.g. alpine-3.19).
        #[arg(long)]
        name: Option<String>,
        /// The root filesystem's size, e.g. 2G (default: the content plus headroom).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Replace an existing image of that name (refused while VMs were made from it).
        #[arg(long)]
        replace: bool,
    },
    /// Make an image from a flat root filesystem tar (plain, gzip or zstd); `-` reads stdin.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// The root filesystem's size, e.g. 2G (default: the content plus headroom).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Replace an existing image of that name (refused while VMs were made from it).
        #[arg(long)]
        replace: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Show an image's metadata as JSON.
    Inspect { name: String },
    /// Remove an image.
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Remove it even while VMs use it.
        #[arg(long, short)]
        force: bool,
    },
    /// Manage the blob cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Delete every cached blob (images stay usable; a re-pull fetches them again).
    Prune {
        /// Only say what would be freed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `512M`, `8G`, `1T` (binary units) or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size: use e.g. 512M, 8G or a number of bytes");
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches(['i', 'B', 'b']).to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image (its disk is a copy-on-write clone of the image's rootfs).
    Create {
        name: String,
        #[arg(long)]
        image: String,
        /// A kernel from `banger kernel ls` (default: the one named `default`).
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// Disk size, e.g. 8G.
        #[arg(long, value_parser = parse_size)]
        disk: Option<u64>,
        /// No network interface.
        #[arg(long)]
        no_net: bool,
        /// An extra kernel command-line argument; repeatable.
        #[arg(long = "kernel-arg")]
        kernel_args: Vec<String>,
        /// firecracker or qemu (default: the daemon picks what this host runs best).
        #[arg(long)]
        vmm: Option<VmmKind>,
        /// Forward a host port to a guest port while it runs: [ADDR:]HOST:GUEST; repeatable.
        #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOST:GUEST", value_parser = crate::commands::port::parse)]
        ports: Vec<protocol::vm::PortForward>,
    },
    /// Create and boot a VM from an image and run a command in it (pulls the image if needed).
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Run a command in a running VM.
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Copy files and trees between the host and a VM.
    #[command(after_help = CP_HELP)]
    Cp {
        /// A local path, NAME:/path in a VM, or - for a tar stream on stdin.
        src: String,
        /// A local path, NAME:/path in a VM, or - for a tar stream on stdout.
        dst: String,
    },
    /// Boot a VM.
    Start { name: String },
    /// Shut a VM down (Ctrl-Alt-Del), killing it after the timeout.
    Stop {
        name: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Kill a VM's VMM at once.
    Kill { name: String },
    /// Stop, then start.
    Restart {
        name: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a VM; a running one only with --force.
    #[command(alias = "remove")]
    Rm {
        name: String,
        #[arg(long, short)]
        force: bool,
    },
    /// List VMs (running ones unless --all).
    #[command(alias = "list")]
    Ls {
        #[arg(long, short)]
        all: bool,
    },
    /// Show a VM as JSON.
    Inspect { name: String },
    /// Print a VM's console log; with -f, follow it until the VM stops.
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Copy a git checkout into a VM, keep it in step, and bring commits made there back.
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Open a shell (or run CMD) in a VM with the system's ssh, host key already trusted.
    #[command(after_help = SSH_EXAMPLES)]
    Ssh {
        name: String,
        /// Reach the VM at its address instead of through the daemon (needs its network).
        #[arg(long)]
        direct: bool,
        /// A command to run instead of a login shell.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Carry stdin and stdout to a TCP port in a VM, through the daemon (ssh's ProxyCommand).
    Proxy {
        /// The VM (`NAME` or ssh's `NAME.banger`).
        name: String,
        port: u16,
    },
    /// Forward host ports to a VM's ports.
    #[command(subcommand)]
    Port(PortCommand),
}

pub const SSH_EXAMPLES: &str = "Examples:
  banger vm ssh web                    a login shell
  banger vm ssh web -- uname -a        one command
  ssh web.banger                       the same, after `banger ssh-config install`
  scp notes.txt web.banger:/root/      and scp, sftp, rsync, an editor's remote mode";

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Forward [ADDR:]HOST_PORT to GUEST_PORT from now on (kept across restarts).
    Add {
        name: String,
        #[arg(value_name = "[ADDR:]HOST:GUEST", value_parser = crate::commands::port::parse)]
        forward: protocol::vm::PortForward,
    },
    /// Stop forwarding a host port.
    #[command(alias = "remove")]
    Rm { name: String, host_port: u16 },
    /// List a VM's forwards.
    #[command(alias = "list")]
    Ls { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SshConfigCommand {
    /// Add one marked `Include` line for banger's VMs to ~/.ssh/config (idempotent).
    Install,
    /// Remove exactly that line.
    Uninstall,
    /// Print the path of the file banger keeps current (one `Host NAME.banger` per VM).
    Path,
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy a git checkout (tracked files, untracked ones git does not ignore, and .git) into
    /// a running VM, and record what was copied.
    #[command(after_help = crate::exec_args::WORKSPACE_HELP)]
    Copy {
        /// A running VM.
        name: String,
        /// A directory in the checkout (default: the current one's repository).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Where the checkout goes in the guest.
        #[arg(long, value_name = "PATH", default_value = crate::exec_args::WORKSPACE_DIR)]
        to: String,
        /// Only list what would go, and how many ignored files are left out per directory.
        #[arg(long)]
        preview: bool,
    },
    /// Send what changed on the host since the copy (or the last sync): changed and new
    /// files, deletions, and .git (new commits, refs, the index).
    Sync {
        name: String,
        /// Only list what would change.
        #[arg(long)]
        preview: bool,
    },
    /// Bring commits made in the guest back as a branch of the host's repository (the work
    /// tree, the index and HEAD are left alone).
    Pull {
        name: String,
        /// The branch to make or move forward (default: banger/NAME).
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Import a kernel: an ELF vmlinux, a bzImage (with --modules for a distro kernel's
    /// modules), or a Debian linux-image-*.deb. A kernel with modules gets an initrd.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// The bzImage's modules directory (lib/modules/RELEASE; its name is the release).
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
    },
    /// List kernels.
    #[command(alias = "list")]
    Ls,
    /// Remove a kernel no VM uses.
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Remove the VM bridge and its NAT table from the host (no VM may be running); after a
    /// `system install`, also its units and user (`--purge`: and its state).
    #[command(after_help = SYSTEM_UNINSTALL_EXAMPLES)]
    Uninstall(SystemUninstallArgs),
    /// Run banger as a system service: a `banger` user for the daemon, hardened units, completions.
    #[command(after_help = SYSTEM_INSTALL_EXAMPLES)]
    Install(SystemInstallArgs),
}

const SYSTEM_INSTALL_EXAMPLES: &str = "Examples:
  sudo banger system install                  # user `banger`, units enabled where systemd runs
  sudo usermod -aG banger $USER               # then log in again: banger works without sudo
  banger system install --root /tmp/img --no-enable   # files only, into an image's tree";

const SYSTEM_UNINSTALL_EXAMPLES: &str = "Examples:
  sudo banger system uninstall                # bridge, NAT table, units, user; keeps images and VMs
  sudo banger system uninstall --purge        # and /var/lib/banger with every image and VM";

#[derive(Debug, Clone, Args)]
pub struct SystemInstallArgs {
    /// Write the files under this directory instead of `/` (the user is made on this host).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The system user (and group) the daemon runs as; members of its group use banger.
    #[arg(long, default_value = "banger", value_name = "NAME")]
    pub user: String,
    /// Only write the files; do not call systemctl.
    #[arg(long)]
    pub no_enable: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SystemUninstallArgs {
    /// Remove a system install from under this directory instead of `/`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also remove the state (images, VMs, kernels) and cache dirs.
    #[arg(long)]
    pub purge: bool,
}
