//! The `banger` ↔ `bangerd` interface. [`Request`] is the whole of what the daemon can be asked;
//! the daemon's connection actor only routes it. Append variants, never reorder or change one
//! (see `docs/protocol.md`); the snapshot test in `tests/wire_snapshot.rs` guards this.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::exec::{ExecEvent, ExecInput, ExecSpec};
use crate::image::{ImageInfo, PruneReport, PullEvent, PullRequest};
use crate::vm::{KernelInfo, PortForward, VmCreate, VmInfo, Workspace};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; any time after the handshake. Answered with [`Response::Pong`].
    Ping,
    /// The daemon's software and protocol version. Answered with [`Response::Version`].
    Version,
    /// Uptime, version and the actor tree with states and restart counts.
    /// Answered with [`Response::Status`].
    Status,
    /// Graceful shutdown, the same as SIGTERM. Answered with [`Response::Ok`] before the
    /// shutdown starts; the socket closes once every actor has stopped.
    Shutdown,
    /// Fault injection for `chaos-tests/`. Only a daemon built with the `chaos` feature accepts
    /// it; any other answers [`Response::Error`] with kind `InvalidInput`.
    Chaos(ChaosAction),
    /// Pull an image from a registry and flatten it into `rootfs.ext4`. Answered with a stream
    /// of [`Response::PullProgress`] and finally [`Response::Image`]. Waits behind a running
    /// cache prune. Since protocol 2.
    ImagePull(PullRequest),
    /// Every stored image. Answered with [`Response::Images`]. Since protocol 2.
    ImageList,
    /// One image. Answered with [`Response::Image`] or a `NotFound` error. Since protocol 2.
    ImageInspect { name: String },
    /// Delete an image; refused while a VM uses it unless `force`. Answered with
    /// [`Response::Ok`]. Since protocol 2.
    ImageRemove { name: String, force: bool },
    /// Make an image from a flat rootfs tar. The tar arrives as a file descriptor passed with
    /// this request (SCM_RIGHTS). Answered like `ImagePull`. Since protocol 2.
    ImageImport { name: String, size: Option<u64>, file: String },
    /// Delete (or with `dry_run`, count) every cached blob. Waits for in-flight pulls and holds
    /// new ones back; concurrent prunes share one run. Answered with [`Response::Pruned`].
    /// Since protocol 2.
    CachePrune { dry_run: bool },
    /// Create a VM (disk cloned from the image, resources settled). Answered with
    /// [`Response::Vm`]. Since protocol 2.
    VmCreate(VmCreate),
    /// Boot a created or stopped VM; answered once it runs. Since protocol 2.
    VmStart { name: String },
    /// Ctrl-Alt-Del, then kill after `timeout_ms`. Answered with [`Response::Vm`].
    VmStop { name: String, timeout_ms: u64 },
    /// Kill the VMM at once. Answered with [`Response::Vm`]. Since protocol 2.
    VmKill { name: String },
    /// Stop (as `VmStop`), then start. Answered with [`Response::Vm`]. Since protocol 2.
    VmRestart { name: String, timeout_ms: u64 },
    /// Delete a VM; a running one only with `force` (it is killed). Answered with `Ok`.
    VmRemove { name: String, force: bool },
    /// VMs (running ones, or all). Answered with [`Response::Vms`]. Since protocol 2.
    VmList { all: bool },
    /// One VM. Answered with [`Response::Vm`]. Since protocol 2.
    VmInspect { name: String },
    /// The console log; with `follow`, a stream of [`Response::Log`] until the VM stops.
    VmLogs { name: String, follow: bool },
    /// Remove every VM that is not running. Answered with [`Response::Removed`].
    VmPrune,
    /// Import a kernel (an ELF vmlinux) passed as a descriptor. Answered with
    /// [`Response::Kernel`]. Since protocol 2.
    KernelImport { name: String, file: String },
    /// Answered with [`Response::Kernels`]. Since protocol 2.
    KernelList,
    /// Answered with `Ok`; refused while a VM uses it. Since protocol 2.
    KernelRemove { name: String },
    /// Remove what banger set up on the host: the bridge and its NAT table. Refused while a
    /// VM runs. Answered with [`Response::Removed`] (what went). Since protocol 2.
    SystemUninstall,
    /// `ImagePull` that says whether an existing image of that name may be replaced: without
    /// `replace` the pull is refused when the name is taken; with it, still refused while a VM
    /// was made from the image. Answered like `ImagePull`. Since protocol 4.
    ImagePullReplacing { pull: PullRequest, replace: bool },
    /// `ImageImport` with the same `replace` rule as `ImagePullReplacing`; the tar comes as a
    /// descriptor. Answered like `ImagePull`. Since protocol 4.
    ImageImportReplacing { name: String, size: Option<u64>, file: String, replace: bool },
    /// Run a process in a running VM. Answered with a stream of [`Response::Exec`]: `Started`,
    /// output, then `Exited` or `Failed` (the last one not flagged `MORE`). Meanwhile the
    /// client may send [`Request::ExecInput`]s on the same connection; hanging up kills the
    /// process. Waits for a booting VM's agent. Since protocol 5.
    VmExec { name: String, spec: ExecSpec },
    /// Stdin, a signal or a window size for the exec running on this connection; answered
    /// with nothing (the exec's stream goes on). Outside an exec it is an error. Since
    /// protocol 5.
    ExecInput(ExecInput),
    /// Copy into a VM: the client sends a tar stream as `ExecInput::Stdin` chunks, then
    /// `CloseStdin`; it is unpacked under `path`. Answered like `VmExec`. Since protocol 5.
    VmCopyIn { name: String, path: String },
    /// Copy out of a VM: `path` comes back as a tar stream in `Exec` output events, then
    /// `Exited`. Answered like `VmExec`. Since protocol 5.
    VmCopyOut { name: String, path: String },
    /// Wait until the VM's agent is ready (or the wait fails). Answered with [`Response::Vm`].
    /// Since protocol 5.
    VmWait { name: String, timeout_ms: u64 },
    /// One round trip to the VM's agent and back (no process started): answered with
    /// [`Response::Pong`] once the agent answered. Since protocol 5.
    VmPing { name: String },
    /// A TCP connection to `port` on the guest's loopback, through the agent's channel: the
    /// client sends bytes as `ExecInput::Stdin` (and `CloseStdin`), the guest's come back as
    /// `Exec` output; answered like `VmExec` (`Failed` when nothing listens). `banger vm proxy`,
    /// ssh's ProxyCommand. Since protocol 6.
    VmConnect { name: String, port: u16 },
    /// Forward a host port to a guest port from now on (also across daemon restarts, and
    /// every time the VM runs). Answered with [`Response::Vm`]; refused when the host port is
    /// taken. Since protocol 6.
    VmPortAdd { name: String, forward: PortForward },
    /// Stop forwarding `host_port` (on every address it was forwarded from). Answered with
    /// [`Response::Vm`]. Since protocol 6.
    VmPortRemove { name: String, host_port: u16 },
    /// Record (or with `None`, forget) what `banger vm workspace copy` put in the VM. Answered
    /// with [`Response::Vm`]. Since protocol 6.
    VmWorkspaceSet { name: String, workspace: Option<Workspace> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChaosAction {
    /// Make the named supervised actor panic inside a message handler.
    Panic { actor: String },
    /// Make the named actor stop itself cleanly (the supervisor restarts it all the same).
    Stop { actor: String },
    /// Make the named actor panic as it starts, for its next `times` starts.
    FailStarts { actor: String, times: u32 },
    /// Answer with `repeat` [`Response::Echo`] frames carrying `payload` (tests chunking and
    /// streaming over the real socket).
    Echo { payload: Vec<u8>, repeat: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Version(VersionInfo),
    Status(StatusReport),
    /// The request was accepted and has nothing else to say.
    Ok,
    Echo(Vec<u8>),
    Error(Error),
    PullProgress(PullEvent),
    Images(Vec<ImageInfo>),
    Image(ImageInfo),
    Pruned(PruneReport),
    Vm(VmInfo),
    Vms(Vec<VmInfo>),
    /// A piece of a console log.
    Log(Vec<u8>),
    /// Names of what was removed.
    Removed(Vec<String>),
    Kernel(KernelInfo),
    Kernels(Vec<KernelInfo>),
    /// One event of an exec or a copy. Since protocol 5.
    Exec(ExecEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// e.g. `bangerd 0.1.0`.
    pub software: String,
    /// The protocol version in use on this connection.
    pub protocol: u32,
    /// Whether fault injection is compiled in.
    pub chaos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: VersionInfo,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket: String,
    pub state_dir: String,
    /// The root supervisor, whose children are the daemon's actors.
    pub root: ActorStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorStatus {
    pub name: String,
    pub state: ActorState,
    /// How many times the supervisor has restarted it since the daemon started.
    pub restarts: u32,
    /// Why it last exited, if it ever did.
    pub last_exit: Option<String>,
    /// What the actor itself reports (connections served, helper link, …).
    pub detail: Option<String>,
    pub children: Vec<ActorStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorState {
    Starting,
    Running,
    /// Exited; the supervisor starts it again after `in_ms`.
    Restarting {
        in_ms: u64,
    },
    Stopping,
    Stopped,
}

impl std::fmt::Display for ActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActorState::Starting => f.write_str("starting"),
            ActorState::Running => f.write_str("running"),
            ActorState::Restarting { in_ms } => write!(f, "restarting in {in_ms} ms"),
            ActorState::Stopping => f.write_str("stopping"),
            ActorState::Stopped => f.write_str("stopped"),
        }
    }
}
