//! Command-line flags and the configuration every actor is built from.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use nix::unistd::{Gid, Group, Uid};
use protocol::paths::Layout;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Parser)]
#[command(name = "bangerd", version, about = "The banger owner daemon")]
pub struct Args {
    /// Listen here instead of the default socket.
    #[arg(long, env = "BANGER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Keep all state (and the default sockets) under this directory.
    #[arg(long, env = "BANGER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run as the system service: /run/banger and /var/lib/banger.
    #[arg(long)]
    pub system: bool,
    /// Members of this group may use the socket too (mode 0660).
    #[arg(long)]
    pub group: Option<String>,
    /// banger-helper's socket; default: helper.sock beside the daemon socket when it exists.
    #[arg(long)]
    pub helper_socket: Option<PathBuf>,
    /// Do not connect to a helper at all.
    #[arg(long, conflicts_with = "helper_socket")]
    pub no_helper: bool,
    /// A registry (host[:port]) to reach over plain HTTP; repeatable. Loopback ones always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// The bridge VMs attach to (default: banger and 8 hex digits from the state dir's path).
    #[arg(long)]
    pub bridge: Option<String>,
    /// The VM subnet, e.g. 172.30.0.0/24 (default: the one saved in network.json, else the first
    /// of banger's that no host route overlaps, then saved). The host is .1 on the bridge.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Refuse an image whose uncompressed content exceeds this many bytes (default 64 GiB).
    #[arg(long)]
    pub max_image_bytes: Option<u64>,
    /// The VMM a VM gets when it does not choose: firecracker or qemu (default: Firecracker
    /// on hardware KVM, QEMU where KVM is missing or software-only).
    #[arg(long, env = "BANGER_VMM")]
    pub vmm: Option<protocol::vm::VmmKind>,
    /// A settings file (TOML; see docs/config.md). Default: `bangerd.toml` in the state dir
    /// (`/etc/banger/bangerd.toml` for the system service). Flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The guest agent (a static binary) written into every VM's disk and initrd. Default:
    /// `banger-agent` beside bangerd's own executable.
    #[arg(long, env = "BANGER_AGENT")]
    pub agent: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// error, warning, info, debug or trace.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    pub log_level: slog::Level,
}

fn parse_level(s: &str) -> Result<slog::Level, String> {
    s.parse().map_err(|()| format!("unknown log level {s:?}: use error, warning, info, debug or trace"))
}

#[derive(Debug, Clone)]
pub struct Config {
    pub layout: Layout,
    pub socket: PathBuf,
    /// Who may connect besides root: the daemon's own uid, and this group's members.
    pub owner: Uid,
    pub group: Option<(Gid, String)>,
    pub helper_socket: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub max_image_bytes: u64,
    /// Entries (files, directories, links) per image: each costs an inode and mkfs time.
    pub max_image_entries: u64,
    /// The size a single layer (or blob) may declare; checked before the first byte.
    pub max_layer_bytes: u64,
    pub bridge: String,
    /// The subnet asked for (network address, prefix length); `None`: the saved or a free one.
    pub subnet: Option<(std::net::Ipv4Addr, u8)>,
    /// VM defaults the settings file gives (the host's own fill the gaps).
    pub vm_defaults: VmDefaults,
    pub connections: Connections,
    /// The guest agent binary (checked when a VM is created, not at start).
    pub agent: PathBuf,
    /// The VMM for VMs that do not choose; `None`: probed.
    pub vmm: Option<protocol::vm::VmmKind>,
}

/// How long clients may hold the daemon's connections.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// A connection with no request in flight for this long is closed; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Connections one uid other than the owner's (and root's) may hold at once.
    pub max_per_uid: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { idle_timeout: Some(std::time::Duration::from_secs(300)), max_per_uid: 64 }
    }
}

#[cfg(test)]
impl Config {
    /// A daemon's settings with everything under `dir` and no helper: for actor unit tests.
    pub fn for_tests(dir: &std::path::Path) -> Self {
        Config {
            layout: Layout::under(dir),
            socket: dir.join("run/bangerd.sock"),
            owner: Uid::effective(),
            group: None,
            helper_socket: None,
            insecure_registries: vec![],
            max_image_bytes: 1 << 30,
            max_image_entries: 1_000_000,
            max_layer_bytes: 1 << 30,
            bridge: bridge_for(dir),
            subnet: Some((std::net::Ipv4Addr::new(10, 250, 250, 0), 24)),
            vm_defaults: VmDefaults::default(),
            connections: Connections::default(),
            agent: dir.join("banger-agent"),
            vmm: None,
        }
    }
}

/// `bangerd.toml`: every key optional; flags win.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub vm: VmDefaults,
    #[serde(default)]
    pub network: NetworkFile,
    #[serde(default)]
    pub images: ImagesFile,
    #[serde(default)]
    pub connections: ConnectionsFile,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFile {
    /// Seconds; 0 keeps idle connections open for good.
    pub idle_timeout_secs: Option<u64>,
    pub max_per_uid: Option<usize>,
}

impl ConnectionsFile {
    fn resolve(&self) -> Result<Connections, String> {
        let default = Connections::default();
        let idle_timeout = match self.idle_timeout_secs {
            None => default.idle_timeout,
            Some(0) => None,
            Some(s) => Some(std::time::Duration::from_secs(s)),
        };
        let max_per_uid = match self.max_per_uid {
            None => default.max_per_uid,
            Some(0) => {
                return Err("[connections] max_per_uid = 0 would lock out everyone but the owner; \
                            use the socket's mode for that (drop --group)"
                    .into());
            }
            Some(n) => n,
        };
        Ok(Connections { idle_timeout, max_per_uid })
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub bridge: Option<String>,
    pub subnet: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesFile {
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    pub max_image_bytes: Option<u64>,
    pub max_image_entries: Option<u64>,
    pub max_layer_bytes: Option<u64>,
}

impl File {
    /// Reads the settings file; a missing default one is empty, a missing named one an error.
    pub fn load(path: &std::path::Path, named: bool) -> Result<File, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => Ok(File::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Self, String> {
        let layout = Layout::resolve(args.state_dir.as_deref(), args.system);
        let file = match &args.config {
            Some(path) => File::load(path, true)?,
            None if args.system && args.state_dir.is_none() => {
                File::load(std::path::Path::new("/etc/banger/bangerd.toml"), false)?
            }
            None => File::load(&layout.state_dir.join("bangerd.toml"), false)?,
        };
        let socket = args.socket.clone().unwrap_or_else(|| layout.daemon_socket());
        let group = match &args.group {
            None => None,
            Some(name) => match Group::from_name(name) {
                Ok(Some(g)) => Some((g.gid, name.clone())),
                Ok(None) => {
                    return Err(format!("group {name:?} does not exist: create it with `groupadd {name}`"));
                }
                Err(e) => return Err(format!("cannot look up group {name:?}: {e}")),
            },
        };
        let helper_socket = if args.no_helper {
            None
        } else {
            Some(args.helper_socket.clone().unwrap_or_else(|| layout.helper_socket()))
        };
        let bridge =
            args.bridge.clone().or(file.network.bridge).unwrap_or_else(|| bridge_for(&layout.state_dir));
        Ok(Config {
            layout,
            socket,
            owner: Uid::effective(),
            group,
            helper_socket,
            insecure_registries: [args.insecure_registries.clone(), file.images.insecure_registries].concat(),
            max_image_bytes: args.max_image_bytes.or(file.images.max_image_bytes).unwrap_or(64 << 30),
            max_image_entries: file.images.max_image_entries.unwrap_or(DEFAULT_MAX_IMAGE_ENTRIES),
            max_layer_bytes: file.images.max_layer_bytes.unwrap_or(DEFAULT_MAX_LAYER_BYTES),
            bridge,
            subnet: match args.subnet.as_ref().or(file.network.subnet.as_ref()) {
                Some(s) => Some(parse_subnet(s)?),
                None => None,
            },
            vm_defaults: file.vm,
            connections: file.connections.resolve()?,
            agent: match &args.agent {
                Some(path) => path.clone(),
                None => default_agent()?,
            },
            vmm: args.vmm,
        })
    }
}

/// `banger-agent` beside this executable.
fn default_agent() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| {
        format!("cannot tell where bangerd is ({e}), so not where banger-agent is: pass --agent PATH")
    })?;
    Ok(exe.with_file_name("banger-agent"))
}

/// Big distribution images hold tens of thousands of entries; a million is far past any of
/// them and still builds in minutes.
const DEFAULT_MAX_IMAGE_ENTRIES: u64 = 1_000_000;
/// Larger than any real layer; a manifest declaring more is refused before a byte is fetched.
const DEFAULT_MAX_LAYER_BYTES: u64 = 16 << 30;

/// The bridge of a state dir: `banger` and 8 hex digits of its path's hash, so two daemons on
/// one host never share a bridge, a NAT table (named the same) or a tap.
pub fn bridge_for(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("banger{}", hex::encode(&digest[..4]))
}

/// `a.b.c.d/p`, p from 16 to 29, as the network address.
fn parse_subnet(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("--subnet {s:?}: expected a network like 172.30.0.0/24 (prefix 16 to 29)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(16..=29).contains(&prefix) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - prefix);
    Ok((std::net::Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_files_are_strict_and_optional() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.toml");
        assert!(File::load(&path, false).unwrap().vm.cpus.is_none(), "a missing default file is empty");
        assert!(File::load(&path, true).is_err(), "a named file must exist");
        std::fs::write(&path, "[vm]\ncpus = 1\nmemory_mib = 64\n[network]\nbridge = \"banger7\"\n").unwrap();
        let f = File::load(&path, true).unwrap();
        assert_eq!(
            (f.vm.cpus, f.vm.memory_mib, f.network.bridge.as_deref()),
            (Some(1), Some(64), Some("banger7"))
        );
        std::fs::write(&path, "[connections]\nidle_timeout_secs = 0\nmax_per_uid = 3\n").unwrap();
        let c = File::load(&path, true).unwrap().connections.resolve().unwrap();
        assert_eq!((c.idle_timeout, c.max_per_uid), (None, 3), "0 s: idle connections stay");
        std::fs::write(&path, "[connections]\nmax_per_uid = 0\n").unwrap();
        assert!(File::load(&path, true).unwrap().connections.resolve().is_err());
        std::fs::write(&path, "[images]\nmax_image_entries = 10\nmax_layer_bytes = 99\n").unwrap();
        let f = File::load(&path, true).unwrap();
        assert_eq!((f.images.max_image_entries, f.images.max_layer_bytes), (Some(10), Some(99)));
        std::fs::write(&path, "[vm]\ncpu = 1\n").unwrap();
        assert!(File::load(&path, true).unwrap_err().contains("unknown field"), "typos are errors");
    }
}
