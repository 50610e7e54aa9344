//! The helper's socket: one task per connection, the owner uid only, one request at a time.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::{Uid, User};
use protocol::channel::{Channel, SocketAccess, bind_listener, server_handshake};
use protocol::daemon::VersionInfo;
use protocol::handshake::{Hello, ServiceKind};
use protocol::helper::{HelperRequest, HelperResponse};
use protocol::{Error, ErrorKind};
use tokio::signal::unix::{SignalKind, signal};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

use crate::jail::Jails;
use crate::{net, validate};

pub struct Config {
    pub socket: PathBuf,
    pub owner: Uid,
    pub pid_file: Option<PathBuf>,
    pub jails: Jails,
}

pub async fn run(config: Config) -> Result<(), String> {
    let access = SocketAccess { mode: 0o600, owner: Some(config.owner), group: None };
    let fd = bind_listener(&config.socket, &access)?;
    let mut listener =
        UnixSeqpacketListener::try_from(fd).map_err(|e| format!("cannot register the socket: {e}"))?;
    if let Some(p) = &config.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    log(&format!("listening on {} for uid {}", config.socket.display(), config.owner));
    let jails = Arc::new(config.jails);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(sock) => { tokio::spawn(serve(sock, config.owner, jails.clone())); }
                Err(e) => log(&format!("accept failed: {e}")),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    log("stopping");
    if jails.unmount_if_idle() {
        log("no jail left: unmounted their tmpfs");
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some(p) = &config.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

fn log(line: &str) {
    eprintln!("banger-helper[{}]: {line}", std::process::id());
}

fn admit(owner: Uid, sock: &UnixSeqpacket) -> Result<(), Error> {
    let uid = Uid::from_raw(
        sock.peer_cred().map_err(|e| Error::internal(format!("no peer credentials: {e}")))?.uid(),
    );
    if uid == owner {
        return Ok(());
    }
    let name = |u: Uid| User::from_uid(u).ok().flatten().map(|u| u.name).unwrap_or_else(|| u.to_string());
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "banger-helper serves only {} (uid {owner}); uid {uid} ({}) may not use it",
            name(owner),
            name(uid)
        ),
    )
    .with_hint("only bangerd talks to the helper; use the `banger` command instead"))
}

async fn serve(sock: UnixSeqpacket, owner: Uid, jails: Arc<Jails>) {
    let verdict = admit(owner, &sock);
    let mut chan = Channel::new(sock);
    let ours = Hello::new(ServiceKind::Helper, "banger-helper");
    let protocol = match server_handshake(&mut chan, &ours, verdict).await {
        Ok(v) => v,
        Err(e) => return log(&format!("refused a connection: {}", e.message)),
    };
    loop {
        let request = match chan.recv::<HelperRequest>().await {
            Ok(Some((r, _))) => r,
            Ok(None) => return,
            Err(e) => {
                log(&format!("closing a connection that sent a bad message: {e}"));
                if let Some(reply) = e.to_reply() {
                    let _ = chan.send(&HelperResponse::Error(reply), false).await;
                }
                return;
            }
        };
        let console = chan.take_fd();
        let reply = match request {
            HelperRequest::Ping => HelperResponse::Pong,
            HelperRequest::Version => HelperResponse::Version(VersionInfo {
                software: format!("banger-helper {}", protocol::SOFTWARE_VERSION),
                protocol,
                chaos: false,
            }),
            privileged => {
                let summary = format!("{privileged:?}");
                let started = std::time::Instant::now();
                let jails = jails.clone();
                // Commands and file work block; keep them off the runtime's thread.
                let outcome = tokio::task::spawn_blocking(move || act(privileged, console, owner, &jails))
                    .await
                    .unwrap_or_else(|e| Err(Error::internal(format!("the operation failed: {e}"))));
                match outcome {
                    Ok(reply) => {
                        let op = summary.split([' ', '(', '{']).next().unwrap_or("");
                        log(&format!("{op} done in {:.1} ms", started.elapsed().as_secs_f64() * 1e3));
                        reply
                    }
                    Err(e) => {
                        log(&format!("refused or failed: {summary}: {}", e.message));
                        HelperResponse::Error(e)
                    }
                }
            }
        };
        if chan.send(&reply, false).await.is_err() {
            return;
        }
    }
}

/// Validates and carries out one privileged request.
fn act(
    request: HelperRequest,
    console: Option<OwnedFd>,
    owner: Uid,
    jails: &Jails,
) -> Result<HelperResponse, Error> {
    match request {
        HelperRequest::Ping | HelperRequest::Version => Err(Error::internal("not a privileged request")),
        HelperRequest::EnsureNetwork(spec) => {
            validate::bridge_name(&spec.bridge)?;
            let (addr, prefix) = validate::host_cidr(&spec.host_cidr)?;
            net::ensure(&spec.bridge, addr, prefix).map(|()| HelperResponse::Ok)
        }
        HelperRequest::RemoveNetwork(spec) => {
            validate::bridge_name(&spec.bridge)?;
            net::remove(&spec.bridge).map(|()| HelperResponse::Ok)
        }
        HelperRequest::CreateTap { vm, bridge } => {
            validate::vm_name(&vm)?;
            validate::bridge_name(&bridge)?;
            net::create_tap(&jails.state_dir, &vm, &bridge, owner.as_raw())
                .map(|name| HelperResponse::Tap { name })
        }
        HelperRequest::DeleteTap { vm } => {
            validate::vm_name(&vm)?;
            net::delete_tap(&jails.state_dir, &vm).map(|()| HelperResponse::Ok)
        }
        HelperRequest::LaunchVm(spec) => jails
            .launch(&spec, console)
            .map(|(pid, root)| HelperResponse::Launched { pid, jail_root: root.display().to_string() }),
        HelperRequest::KillVm { vm, pid } => jails.kill(&vm, pid).map(|()| HelperResponse::Ok),
        HelperRequest::CleanJail { vm } => jails.clean(&vm).map(|()| HelperResponse::Ok),
    }
}
