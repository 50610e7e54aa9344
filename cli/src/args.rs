//! The command-line grammar (clap derive). One subcommand group per file in `commands/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::paths::Layout;
use protocol::vm::VmmKind;

pub use crate::exec_args::{CP_HELP, EXEC_EXAMPLES, ExecArgs, ExecOpts, RUN_EXAMPLES, RunArgs};

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version,
    about = "Disposable Linux microVMs",
    propagate_version = true,
    after_help = GETTING_STARTED
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// None: `banger` alone, which prints [`GETTING_STARTED`].
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `banger` with no arguments prints, and the end of `banger --help`: the five commands a
/// new user needs, in the order they need them (docs/getting-started.md walks through them).
pub const GETTING_STARTED: &str = "\
Getting started (as root; docs/getting-started.md walks through it):
  1. banger daemon start                     bangerd and its root helper
  2. banger kernel import \"$(scripts/dev kernel)\" --name default
  3. banger vm run -d --name web debian:12   pull the image, boot a VM
  4. banger vm ssh web                       a shell in it (or: banger vm exec web -- CMD)
  5. banger vm rm -f web                     throw it away

Examples:
  banger vm run --rm -it debian:12 -- bash
  banger ps
  banger vm --help";

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
    #[command(after_help = "Examples:
  banger version
  banger version --json   the same as JSON, for scripts")]
    Version,
    /// Start, stop, inspect or install the daemon.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger daemon start          as root: bangerd and banger-helper (taps, bridge, NAT)
  banger daemon status
  sudo banger daemon install   systemd units, so it starts at boot")]
    Daemon(DaemonCommand),
    /// Pull, list, inspect and remove images; prune the blob cache.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger image pull debian:12
  banger image import rootfs.tar.zst --name mine
  banger image ls")]
    Image(ImageCommand),
    /// Create, start, stop and remove VMs.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger vm run --rm -it debian:12 -- bash
  banger vm run -d --name web nginx:1.27 && banger vm ssh web
  banger vm rm -f web")]
    Vm(VmCommand),
    /// Import, list and remove kernels.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger kernel import \"$(scripts/dev kernel)\" --name default
  banger kernel import ./vmlinux --name tiny
  banger kernel ls")]
    Kernel(KernelCommand),
    /// List running VMs (`vm ls`).
    #[command(after_help = "Examples:
  banger ps
  banger ps -a   stopped and failed VMs too")]
    Ps {
        /// Stopped and failed VMs too.
        #[arg(long, short)]
        all: bool,
    },
    /// Remove a VM (`vm rm`).
    #[command(after_help = "Examples:
  banger rm web
  banger rm -f web   even while it runs")]
    Rm {
        name: String,
        #[arg(long, short)]
        force: bool,
    },
    /// Remove every VM that is not running.
    #[command(after_help = "Examples:
  banger prune
  banger prune --force   without asking")]
    Prune {
        /// Do not ask.
        #[arg(long, short)]
        force: bool,
    },
    /// Host-wide set-up.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger system uninstall   as root: the bridge and NAT table go
  banger vm ls -a && banger system uninstall")]
    System(SystemCommand),
    /// Make `ssh NAME.banger` work from anywhere (an `Include` in ~/.ssh/config).
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger ssh-config install && ssh web.banger
  banger ssh-config path
  banger ssh-config uninstall")]
    SshConfig(SshConfigCommand),
    /// Print a shell completion script, e.g. `banger completion bash > /etc/bash_completion.d/banger`.
    #[command(after_help = "Examples:
  banger completion bash > /etc/bash_completion.d/banger
  banger completion zsh > ~/.zfunc/_banger
  banger completion fish > ~/.config/fish/completions/banger.fish")]
    Completion { shell: clap_complete::Shell },
    /// Check this host for running VMs: each finding with the command that fixes it.
    #[command(
        after_help = "Examples:\n  banger doctor\n  banger doctor --json | jq '.checks[] | select(.status != \"ok\")'\n  sudo banger --system doctor"
    )]
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start bangerd (and banger-helper when root); uses systemd when the units are installed.
    #[command(after_help = "Examples:
  banger daemon start                  as root: bangerd and banger-helper (taps, bridge, NAT)
  banger daemon start --no-helper
  banger daemon start --group banger   members of group banger may use it too")]
    Start(StartArgs),
    /// Stop bangerd (and the helper this command started).
    #[command(after_help = "Examples:
  banger daemon stop
  banger daemon stop --timeout 30s")]
    Stop(StopArgs),
    /// Stop, then start.
    #[command(after_help = "Examples:
  banger daemon restart
  banger daemon restart --timeout 30s")]
    Restart(StartArgs),
    /// Show the daemon's actor tree, restarts and uptime.
    #[command(after_help = "Examples:
  banger daemon status
  banger daemon status --json")]
    Status,
    /// Write systemd units and enable them where systemd runs.
    #[command(after_help = "Examples:
  sudo banger daemon install --group banger
  banger daemon install --user                           per-user units (systemctl --user)
  banger daemon install --unit-dir ./units --no-enable   only write the files")]
    Install(InstallArgs),
    /// Disable and remove the systemd units.
    #[command(after_help = "Examples:
  sudo banger daemon uninstall
  banger daemon uninstall --user")]
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

    /// Every command, group and leaf, from the top: `banger --help`, `banger vm --help`, `banger
    /// vm port add --help`… Its path, e.g. "banger vm port add", and the command.
    fn every_command() -> Vec<(String, clap::Command)> {
        fn walk(path: String, cmd: clap::Command, all: &mut Vec<(String, clap::Command)>) {
            for sub in cmd.get_subcommands() {
                walk(format!("{path} {}", sub.get_name()), sub.clone(), all);
            }
            all.push((path, cmd));
        }
        use clap::CommandFactory;
        let mut all = Vec::new();
        walk("banger".into(), Cli::command(), &mut all);
        all
    }

    #[test]
    fn every_help_ends_with_examples() {
        let mut missing = Vec::new();
        for (path, mut cmd) in every_command() {
            let help = cmd.render_help().to_string();
            let Some(at) = help.rfind("\nExamples:\n") else {
                missing.push(format!("{path}: no \"Examples:\" section"));
                continue;
            };
            // Two to four examples, a leaf's using it, and nothing after them.
            let examples: Vec<&str> = help[at..].lines().skip(2).collect();
            if !(2..=4).contains(&examples.len()) {
                missing.push(format!("{path}: {} examples", examples.len()));
            }
            let words: Vec<&str> = path.split(' ').collect();
            let leaf = cmd.get_subcommands().next().is_none();
            if leaf && !examples.iter().any(|e| e.split_whitespace().any(|w| w == words[words.len() - 1])) {
                missing.push(format!("{path}: no example uses it"));
            }
        }
        assert!(
            missing.is_empty(),
            "every command's --help must end with an after_help \"Examples:\" section of 2-4 real \
             invocations (see cli/src/args.rs):\n  {}",
            missing.join("\n  ")
        );
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
    #[command(after_help = "Examples:
  banger image pull alpine:3.19
  banger image pull debian:12 --name deb --size 4G
  banger image pull 127.0.0.1:5000/team/app:latest --replace")]
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
    #[command(after_help = "Examples:
  banger image import rootfs.tar --name mine
  docker export c1 | banger image import - --name c1 --size 2G
  banger image import rootfs.tar.zst --name mine --replace")]
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
    #[command(after_help = "Examples:
  banger image ls
  banger image ls --json")]
    Ls,
    /// Show an image's metadata as JSON.
    #[command(after_help = "Examples:
  banger image inspect alpine-3.19
  banger image inspect debian-12 | jq .source")]
    Inspect { name: String },
    /// Remove an image.
    #[command(alias = "remove")]
    #[command(after_help = "Examples:
  banger image rm alpine-3.19
  banger image rm -f debian-12   even while VMs use it")]
    Rm {
        name: String,
        /// Remove it even while VMs use it.
        #[arg(long, short)]
        force: bool,
    },
    /// Manage the blob cache.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger image cache prune --dry-run
  banger image cache prune")]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Delete every cached blob (images stay usable; a re-pull fetches them again).
    #[command(after_help = "Examples:
  banger image cache prune --dry-run   what would be freed
  banger image cache prune")]
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
    #[command(after_help = "Examples:
  banger vm create web --image debian-12
  banger vm create web --image debian-12 --cpus 2 --memory 1024 --disk 8G -p 8080:80
  banger vm create tiny --image alpine-3.19 --no-net --vmm qemu")]
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
    #[command(after_help = "Examples:
  banger vm start web
  banger vm create web --image debian-12 && banger vm start web")]
    Start { name: String },
    /// Shut a VM down (Ctrl-Alt-Del), killing it after the timeout.
    #[command(after_help = "Examples:
  banger vm stop web
  banger vm stop web --timeout 30s")]
    Stop {
        name: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Kill a VM's VMM at once.
    #[command(after_help = "Examples:
  banger vm kill web
  banger vm kill web && banger vm start web")]
    Kill { name: String },
    /// Stop, then start.
    #[command(after_help = "Examples:
  banger vm restart web
  banger vm restart web --timeout 30s")]
    Restart {
        name: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a VM; a running one only with --force.
    #[command(alias = "remove")]
    #[command(after_help = "Examples:
  banger vm rm web
  banger vm rm -f web   even while it runs")]
    Rm {
        name: String,
        #[arg(long, short)]
        force: bool,
    },
    /// List VMs (running ones unless --all).
    #[command(alias = "list")]
    #[command(after_help = "Examples:
  banger vm ls
  banger vm ls -a   stopped and failed VMs too
  banger vm ls --json")]
    Ls {
        #[arg(long, short)]
        all: bool,
    },
    /// Show a VM as JSON.
    #[command(after_help = "Examples:
  banger vm inspect web
  banger vm inspect web | jq .state")]
    Inspect { name: String },
    /// Print a VM's console log; with -f, follow it until the VM stops.
    #[command(after_help = "Examples:
  banger vm logs web
  banger vm logs -f web   follow until the VM stops")]
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Copy a git checkout into a VM, keep it in step, and bring commits made there back.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger vm workspace copy web
  banger vm workspace sync web
  banger vm workspace pull web --branch from-web")]
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
    #[command(after_help = "Examples:
  banger vm proxy web 22
  ssh -o ProxyCommand='banger vm proxy %n 22' root@web.banger")]
    Proxy {
        /// The VM (`NAME` or ssh's `NAME.banger`).
        name: String,
        port: u16,
    },
    /// Forward host ports to a VM's ports.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  banger vm port add web 8080:80
  banger vm port ls web
  banger vm port rm web 8080")]
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
    #[command(after_help = "Examples:
  banger vm port add web 8080:80            localhost:8080 to the guest's port 80
  banger vm port add web 0.0.0.0:8443:443   on every host address")]
    Add {
        name: String,
        #[arg(value_name = "[ADDR:]HOST:GUEST", value_parser = crate::commands::port::parse)]
        forward: protocol::vm::PortForward,
    },
    /// Stop forwarding a host port.
    #[command(alias = "remove")]
    #[command(after_help = "Examples:
  banger vm port rm web 8080
  banger vm port rm web 8080 && banger vm port ls web")]
    Rm { name: String, host_port: u16 },
    /// List a VM's forwards.
    #[command(alias = "list")]
    #[command(after_help = "Examples:
  banger vm port ls web
  banger vm port ls web --json")]
    Ls { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SshConfigCommand {
    /// Add one marked `Include` line for banger's VMs to ~/.ssh/config (idempotent).
    #[command(after_help = "Examples:
  banger ssh-config install
  ssh web.banger   then plain ssh, scp and rsync reach VM web")]
    Install,
    /// Remove exactly that line.
    #[command(after_help = "Examples:
  banger ssh-config uninstall
  banger --json ssh-config uninstall")]
    Uninstall,
    /// Print the path of the file banger keeps current (one `Host NAME.banger` per VM).
    #[command(after_help = "Examples:
  banger ssh-config path
  cat \"$(banger ssh-config path)\"")]
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
    #[command(after_help = "Examples:
  banger vm workspace sync web --preview
  banger vm workspace sync web")]
    Sync {
        name: String,
        /// Only list what would change.
        #[arg(long)]
        preview: bool,
    },
    /// Bring commits made in the guest back as a branch of the host's repository (the work
    /// tree, the index and HEAD are left alone).
    #[command(after_help = "Examples:
  banger vm workspace pull web   commits made in web as branch banger/web
  banger vm workspace pull web --branch fix-login")]
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
    #[command(after_help = "Examples:
  banger kernel import \"$(scripts/dev kernel)\" --name default
  banger kernel import ./bzImage --modules /lib/modules/6.1.0-57-cloud-amd64 --name mine
  banger kernel import ./vmlinux --name tiny   an ELF kernel with everything built in")]
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
    #[command(after_help = "Examples:
  banger kernel ls
  banger kernel ls --json")]
    Ls,
    /// Remove a kernel no VM uses.
    #[command(alias = "remove")]
    #[command(after_help = "Examples:
  banger kernel rm tiny
  banger rm -f web && banger kernel rm tiny   once no VM uses it")]
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
