//! The grammar of `vm run`, `vm exec` and `vm cp`, and the small parsers they need: `-e K=V`,
//! `NAME:/path`, VM names.

use std::path::PathBuf;

use clap::Args;
use protocol::vm::VmmKind;

pub const EXEC_EXAMPLES: &str = "\
Without -t, Ctrl-C, SIGTERM and SIGHUP sent to banger are passed on to the process; a second
Ctrl-C within a second leaves at once (the process is then killed as the connection closes).
banger exits with the process's exit code (128 + n when signal n killed it), 127 when the
command does not exist and 126 when it cannot run (bad directory, unknown user).

Examples:
  banger vm exec web -- cat /etc/os-release
  banger vm exec -it web -- sh
  tar c src | banger vm exec -i -w /srv web -- tar x";

pub const RUN_EXAMPLES: &str = "\
Without a command, the image's entrypoint and cmd run with its env, workdir and user; -e adds
or overrides a variable, -w and -u override the image's. Without --name, the VM gets a name
like brave-otter. Exit codes are those of `banger vm exec`.

Examples:
  banger vm run alpine:3.19 -- cat /etc/os-release
  banger vm run --rm -it debian:12 -- bash
  banger vm run -d --name web nginx:1.27 && banger vm exec web -- nginx -v";

pub const CP_HELP: &str = "\
Exactly one side names a VM as NAME:/path (a colon before any slash; write ./a:b for a local
file whose name has a colon). Owners, modes, mtimes and symlinks (as symlinks) are kept.
Into a VM, the path is a directory: SRC lands in it under its own name (a tree keeps its
name too, so `banger vm cp ./site web:/srv` makes /srv/site). Out of a VM, DST is a
directory that SRC lands in under its own name; it is created if missing. Setuid and setgid
bits from the guest are dropped, and nothing is written outside DST. `-` as SRC reads a tar
stream from stdin; `-` as DST writes one to stdout.

Examples:
  banger vm cp ./site web:/srv
  banger vm cp web:/var/log/nginx ./logs
  banger vm cp web:/etc - | tar t";

/// Where a workspace goes in the guest unless told otherwise.
pub const WORKSPACE_DIR: &str = "/workspace";

pub const WORKSPACE_HELP: &str = "\
The files are those `git ls-files --cached --others --exclude-standard` lists (tracked files
deleted from the work tree are skipped), with their modes, mtimes and symlinks, owned by root
in the guest; .git goes too, so git works there. Submodules go as they are checked out (their
files and their .git). `vm exec` and `vm ssh` say when the host's checkout changed since;
`vm workspace sync` sends the difference and `vm workspace pull` brings guest commits back.

Examples:
  banger vm workspace copy web --preview
  banger vm workspace copy web ~/src/app --to /srv/app
  banger vm run --workspace -d --name dev debian && banger vm exec dev -- git status";

/// How a command runs in the guest: shared by `vm exec` and `vm run`.
#[derive(Debug, Clone, Default, Args)]
pub struct ExecOpts {
    /// Keep stdin open and send it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal (the local one goes raw; resizes follow).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable, KEY=VALUE (KEY alone takes banger's own); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvVar>,
    /// The working directory in the guest.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user in the guest: a name or uid, optionally with :group.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// A running VM.
    pub name: String,
    #[command(flatten)]
    pub opts: ExecOpts,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A local image name, or a reference to pull (e.g. alpine:3.19).
    pub image: String,
    /// The VM's name (default: a generated one).
    #[arg(long, value_parser = parse_vm_name)]
    pub name: Option<String>,
    /// Remove the VM when the command ends (also on failure and Ctrl-C).
    #[arg(long, conflicts_with = "detach")]
    pub rm: bool,
    /// Leave the VM running once its agent is ready, print its name, and run nothing.
    #[arg(short, long, conflicts_with_all = ["interactive", "tty"])]
    pub detach: bool,
    #[command(flatten)]
    pub opts: ExecOpts,
    /// firecracker or qemu (default: the daemon picks what this host runs best).
    #[arg(long)]
    pub vmm: Option<VmmKind>,
    /// A kernel from `banger kernel ls` (default: the one named `default`).
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Disk size, e.g. 8G.
    #[arg(long, value_parser = crate::args::parse_size)]
    pub disk: Option<u64>,
    /// No network interface.
    #[arg(long)]
    pub no_net: bool,
    /// Forward a host port to a guest port: [HOST_ADDR:]HOST_PORT:GUEST_PORT (HOST_ADDR
    /// defaults to localhost: 127.0.0.1 and ::1); repeatable. Works without --net.
    #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOST:GUEST", value_parser = crate::commands::port::parse)]
    pub ports: Vec<protocol::vm::PortForward>,
    /// Copy the git checkout DIR is in (default: the current directory's) to /workspace once
    /// the VM is up; the command then runs there unless -w says otherwise.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true, default_missing_value = ".")]
    pub workspace: Option<PathBuf>,
    /// Print to stderr where the time went (pull, disk, VMM, kernel, /init, agent, exec).
    #[arg(long)]
    pub timings: bool,
    /// The program and its arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// One `-e`: a `KEY=VALUE` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl EnvVar {
    pub fn pair(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

/// `KEY=VALUE`, or `KEY` alone for the value banger itself has (docker's rule).
pub fn parse_env(s: &str) -> Result<EnvVar, String> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, v.to_string()),
        None => {
            let v =
                std::env::var(s).map_err(|_| format!("{s:?} is not set here; give a value as {s}=VALUE"))?;
            (s, v)
        }
    };
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err(format!("{s:?} is not KEY=VALUE: the key must not be empty, nor either hold a NUL"));
    }
    Ok(EnvVar { key: key.to_string(), value })
}

/// `env` with each of `overrides` added, or replacing the entry of the same key in place.
pub fn merge_env(env: &[String], overrides: &[EnvVar]) -> Vec<String> {
    let mut out: Vec<String> = env.to_vec();
    for o in overrides {
        let prefix = format!("{}=", o.key);
        match out.iter_mut().find(|e| e.starts_with(&prefix) || **e == o.key) {
            Some(e) => *e = o.pair(),
            None => out.push(o.pair()),
        }
    }
    out
}

/// The daemon's rule for VM names: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn valid_vm_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn parse_vm_name(s: &str) -> Result<String, String> {
    if valid_vm_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a VM name: use up to 63 lower-case letters, digits and dashes, not starting with a dash"
        ))
    }
}

/// One side of `vm cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Vm {
        name: String,
        path: String,
    },
    /// `-`: a tar stream on stdin or stdout.
    Stdio,
}

/// `NAME:/path` when a colon comes before any slash; `-`; else a local path.
pub fn parse_location(s: &str) -> Result<Location, String> {
    if s == "-" {
        return Ok(Location::Stdio);
    }
    let colon = s.find(':');
    let slash = s.find('/');
    let Some(colon) = colon.filter(|c| slash.is_none_or(|sl| *c < sl)) else {
        return Ok(Location::Local(PathBuf::from(s)));
    };
    let (name, path) = (&s[..colon], &s[colon + 1..]);
    if !valid_vm_name(name) {
        return Err(format!("{s:?}: {name:?} is not a VM name; for a local path with a colon, write ./{s}"));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "{s:?}: a path in a VM is absolute, e.g. {name}:/root{}",
            if path.is_empty() { "" } else { "/…" }
        ));
    }
    Ok(Location::Vm { name: name.to_string(), path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_colon_before_any_slash_names_a_vm() {
        assert_eq!(
            parse_location("web:/srv/a"),
            Ok(Location::Vm { name: "web".into(), path: "/srv/a".into() })
        );
        assert_eq!(parse_location("./a:b"), Ok(Location::Local("./a:b".into())));
        assert_eq!(parse_location("dir/a:b"), Ok(Location::Local("dir/a:b".into())));
        assert_eq!(parse_location("/abs/x:y"), Ok(Location::Local("/abs/x:y".into())));
        assert_eq!(parse_location("plain"), Ok(Location::Local("plain".into())));
        assert_eq!(parse_location("-"), Ok(Location::Stdio));
        assert_eq!(
            parse_location("vm-1:/a:b"),
            Ok(Location::Vm { name: "vm-1".into(), path: "/a:b".into() })
        );
    }

    #[test]
    fn a_vm_path_must_be_absolute_and_its_name_valid_fail() {
        assert!(parse_location("web:relative").unwrap_err().contains("absolute"));
        assert!(parse_location("web:").unwrap_err().contains("absolute"));
        let e = parse_location("Web:/x").unwrap_err();
        assert!(e.contains("./Web:/x"), "{e}");
        assert!(parse_location(":/x").is_err());
    }

    #[test]
    fn env_pairs_parse_and_merge_in_place() {
        assert_eq!(parse_env("A=1"), Ok(EnvVar { key: "A".into(), value: "1".into() }));
        assert_eq!(parse_env("A=b=c").map(|e| e.value), Ok("b=c".into()));
        assert_eq!(parse_env("A=").map(|e| e.value), Ok(String::new()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("BANGER_SURELY_UNSET_VARIABLE").is_err());
        let image = vec!["PATH=/bin".to_string(), "MODE=prod".to_string()];
        let merged = merge_env(&image, &[parse_env("MODE=dev").unwrap(), parse_env("NEW=1").unwrap()]);
        assert_eq!(merged, ["PATH=/bin", "MODE=dev", "NEW=1"]);
    }

    #[test]
    fn vm_names_follow_the_daemons_rule() {
        for ok in ["a", "0", "web-1", &"a".repeat(63)] {
            assert!(valid_vm_name(ok), "{ok}");
        }
        for bad in ["", "-a", "Web", "a_b", "a.b", "a/b", &"a".repeat(64), "é"] {
            assert!(!valid_vm_name(bad), "{bad}");
        }
    }

    #[test]
    fn exec_takes_the_command_after_the_name_with_or_without_dashes() {
        use clap::Parser;

        use crate::args::{Cli, Command, VmCommand};
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Some(Command::Vm(VmCommand::Exec(e)))) => e,
            other => panic!("{other:?}"),
        };
        let e = parse(&["banger", "vm", "exec", "-it", "-e", "A=1", "-w", "/tmp", "web", "--", "ls", "-l"]);
        assert_eq!((e.name.as_str(), e.command.as_slice()), ("web", &["ls".to_string(), "-l".into()][..]));
        assert!(e.opts.interactive && e.opts.tty);
        assert_eq!(e.opts.workdir.as_deref(), Some("/tmp"));
        let e = parse(&["banger", "vm", "exec", "web", "sh", "-c", "exit 7"]);
        assert_eq!(e.command, ["sh", "-c", "exit 7"]);
        assert!(Cli::try_parse_from(["banger", "vm", "exec", "web"]).is_err(), "a command is required");
        match Cli::try_parse_from(["banger", "vm", "run", "--rm", "alpine", "--", "echo", "-n"])
            .map(|c| c.command)
        {
            Ok(Some(Command::Vm(VmCommand::Run(r)))) => {
                assert!(r.rm);
                assert_eq!(r.command, ["echo", "-n"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["banger", "vm", "run", "-d", "-i", "alpine"]).is_err());
        assert!(Cli::try_parse_from(["banger", "vm", "run", "--name", "Bad", "alpine"]).is_err());
    }
}
