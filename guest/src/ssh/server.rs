//! The built-in SSH server: `banger-agent ssh-server --port P --host-key FILE
//! --authorized-keys FILE [--address ADDR]`. Public keys only (the ones in the file, read
//! at every attempt, so a new key works at once), for the user the server runs as; session
//! channels (exec, shell, pty, sftp) and direct-tcpip. No agent, X11 or remote forwarding.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};

use crate::users::Passwd;

/// How long a direct-tcpip connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The command line of `banger-agent ssh-server`.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub address: Option<IpAddr>,
    pub port: u16,
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
}

pub const USAGE: &str =
    "usage: banger-agent ssh-server --port P --host-key FILE --authorized-keys FILE [--address ADDR]";

pub fn parse(args: &[String]) -> Result<Args, String> {
    let (mut address, mut port, mut host_key, mut authorized_keys) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--address" => {
                address = Some(value.parse().map_err(|_| format!("{value} is not an IP address"))?)
            }
            "--port" => port = Some(value.parse().map_err(|_| format!("{value} is not a port"))?),
            "--host-key" => host_key = Some(PathBuf::from(value)),
            "--authorized-keys" => authorized_keys = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    match (port, host_key, authorized_keys) {
        (Some(port), Some(host_key), Some(authorized_keys)) => {
            Ok(Args { address, port, host_key, authorized_keys })
        }
        _ => Err(USAGE.into()),
    }
}

/// `banger-agent ssh-server …`: runs until killed.
pub fn main(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::from(2);
        }
    };
    let key = match PrivateKey::read_openssh_file(&args.host_key) {
        Ok(k) => k,
        Err(e) => {
            crate::log!("ssh-server: cannot read the host key {}: {e}", args.host_key.display());
            return ExitCode::FAILURE;
        }
    };
    // Two workers: sessions never wait behind a file operation of another.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            crate::log!("ssh-server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::log!("ssh-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every address when none is given: IPv6's and IPv4's where the kernel has IPv6, IPv4's else.
async fn bind(address: Option<IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    match address {
        Some(a) => TcpListener::bind(SocketAddr::new(a, port)).await,
        None => match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await,
        },
    }
}

async fn serve(args: Args, key: PrivateKey) -> Result<(), String> {
    let listener = bind(args.address, args.port)
        .await
        .map_err(|e| format!("cannot listen on port {}: {e}", args.port))?;
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-banger-agent_{}", protocol::SOFTWARE_VERSION).into(),
        ),
        methods,
        keys: vec![key],
        // OpenSSH's client probes with "none" first: no delay for that one.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // A shell left open is not garbage; a peer that vanished is found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    };
    let user = std::sync::Arc::new(ServerUser::current());
    let mut server = Server { authorized_keys: Arc::new(args.authorized_keys), user };
    server.run_on_socket(Arc::new(config), &listener).await.map_err(|e| format!("the server stopped: {e}"))
}

/// Who logs in: the server runs as one user and serves that user only.
#[derive(Debug, Clone)]
pub struct ServerUser {
    pub uid: u32,
}

impl ServerUser {
    fn current() -> Self {
        ServerUser { uid: nix::unistd::geteuid().as_raw() }
    }

    /// The account `name` logs into, if it is this server's user.
    pub fn account(&self, name: &str) -> Option<Passwd> {
        match crate::users::find(Path::new("/"), |p| p.name == name) {
            Some(p) => (p.uid == self.uid).then_some(p),
            // An image without /etc/passwd still has root.
            None => (name == "root" && self.uid == 0).then(|| Passwd {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
            }),
        }
    }
}

#[derive(Clone)]
struct Server {
    authorized_keys: Arc<PathBuf>,
    user: Arc<ServerUser>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, _peer: Option<SocketAddr>) -> Connection {
        Connection { authorized_keys: self.authorized_keys.clone(), user: self.user.clone(), account: None }
    }
}

/// One client connection.
pub struct Connection {
    authorized_keys: Arc<PathBuf>,
    user: Arc<ServerUser>,
    /// Set once authenticated.
    account: Option<Passwd>,
}

/// The keys in an `authorized_keys` file (options before a key are not supported: such
/// lines are skipped).
pub fn authorized(text: &str) -> Vec<PublicKey> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| PublicKey::from_openssh(l).ok())
        .collect()
}

impl Connection {
    fn allows(&self, user: &str, key: &PublicKey) -> Option<Passwd> {
        let account = self.user.account(user)?;
        let text = std::fs::read_to_string(&*self.authorized_keys).ok()?;
        authorized(&text).iter().any(|k| k.key_data() == key.key_data()).then_some(account)
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.allows(user, offer.public_key).is_some() { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.allows(user, key.public_key) {
            Some(account) => {
                self.account = Some(account);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(account) = self.account.clone() else { return Ok(()) };
        reply.accept().await;
        tokio::spawn(super::session::run(channel, session.handle(), account));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let addrs = resolve(host);
        // Connecting may take a while; the connection's other channels go on meanwhile.
        tokio::spawn(async move {
            let Some(mut stream) = connect(&addrs, port).await else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            };
            reply.accept().await;
            let mut channel = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut channel, &mut stream).await;
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if super::session::env_allowed(name, value) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" { session.channel_success(channel) } else { session.channel_failure(channel) }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    // Agent forwarding (refused: `agent_request` answers false by default), remote forwarding
    // (`tcpip_forward`, false by default) and the other channel kinds (their open handles are
    // dropped: refused) keep russh's defaults.
}

/// Where a direct-tcpip target name points. No resolver library here (a static binary cannot
/// load NSS modules): IP literals, localhost, and the guest's /etc/hosts.
fn resolve(host: &str) -> Vec<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("ip6-localhost") {
        return vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts_lookup(&hosts, host)
}

fn hosts_lookup(hosts: &str, host: &str) -> Vec<IpAddr> {
    hosts
        .lines()
        .filter_map(|l| {
            let mut words = l.split('#').next().unwrap_or("").split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

async fn connect(addrs: &[IpAddr], port: u16) -> Option<TcpStream> {
    for ip in addrs {
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(SocketAddr::new(*ip, port))).await;
        if let Ok(Ok(stream)) = attempt {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_is_checked() {
        let a = parse(&strings(&["--port", "22", "--host-key", "/k", "--authorized-keys", "/a"])).unwrap();
        assert_eq!(a, Args { address: None, port: 22, host_key: "/k".into(), authorized_keys: "/a".into() });
        assert!(
            parse(&strings(&["--port", "99999", "--host-key", "/k", "--authorized-keys", "/a"])).is_err()
        );
        assert!(parse(&strings(&["--port", "22"])).unwrap_err().contains("usage"));
        assert!(parse(&strings(&["--bogus", "1"])).unwrap_err().contains("unknown option --bogus"));
        let a = parse(&strings(&[
            "--address",
            "127.0.0.1",
            "--port",
            "1",
            "--host-key",
            "k",
            "--authorized-keys",
            "a",
        ]));
        assert_eq!(a.unwrap().address, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn authorized_keys_skip_comments_and_junk() {
        let text = "# a comment\n\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKlBEBG7PruFA4LQcbwKDiK/Qg2GiAMnbdwviGRRNDqK a@b\n\
                    no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKlBEBG7PruFA4LQcbwKDiK/Qg2GiAMnbdwviGRRNDqK\n\
                    garbage\n";
        assert_eq!(authorized(text).len(), 1);
    }

    #[test]
    fn names_resolve_without_a_resolver() {
        assert_eq!(resolve("10.1.2.3"), vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(resolve("[::1]"), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(resolve("LOCALHOST").len(), 2);
        let hosts = "127.0.0.1 localhost\n10.0.0.5 db db.internal # the database\n";
        assert_eq!(hosts_lookup(hosts, "db.internal"), vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(hosts_lookup(hosts, "database").is_empty());
    }
}
