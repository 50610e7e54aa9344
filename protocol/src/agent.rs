//! The `bangerd` ↔ `banger-agent` interface. The daemon is the client: it connects over the
//! VM's channel (a virtio-serial port under QEMU, vsock under Firecracker, a unix socket when
//! the agent runs as a host process in tests), sends [`crate::handshake::Hello`] with
//! [`crate::handshake::ServiceKind::Agent`], then [`AgentRequest::Sync`]. Messages are framed
//! by [`crate::stream`] (the seqpacket framing, length-prefixed) with the same byte limits.
//!
//! Many execs share one channel, each named by the `id` the daemon gave it. Both directions
//! are flow-controlled per exec: a side sends at most [`WINDOW`] bytes of an exec's data that
//! the other has not acknowledged, so one slow reader never stalls the others.
//!
//! The channel may reset (a snapshot resets vsock; a daemon restarts): the agent keeps
//! listening, kills the execs of the lost session, and serves the next `Hello`.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::exec::{ExecEvent, ExecInput, ExecSpec};

/// The name of the agent's virtio-serial port (QEMU).
pub const PORT_NAME: &str = "org.banger.agent";
/// The vsock port the agent listens on (Firecracker).
pub const VSOCK_PORT: u32 = 52;
/// Unacknowledged data bytes per exec and direction.
pub const WINDOW: u64 = 1 << 20;
/// The most execs (and copies) one session may run at once.
pub const MAX_EXECS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// The host's wall clock and entropy for the guest's RNG; first after every handshake.
    /// Answered with [`AgentEvent::Ready`].
    Sync { unix_time_ns: u64, seed: Vec<u8> },
    /// Start a process. Answered with [`AgentEvent::Exec`] events under `id`.
    Exec { id: u32, spec: ExecSpec },
    /// Input for exec `id` (stdin, signals, resizes).
    Input { id: u32, input: ExecInput },
    /// The host has consumed `bytes` of exec `id`'s output: the agent may send that many more.
    OutputAck { id: u32, bytes: u64 },
    /// Unpack the tar stream sent as exec `id`'s stdin under the directory `path` (created if
    /// missing), keeping owners, modes, symlinks and mtimes. The stream may be one zstd frame
    /// (known by its magic; since protocol 6). Answered like an exec: `Started`,
    /// then `Exited(Code(0))` or `Failed`.
    CopyIn { id: u32, path: String },
    /// Send `path` (a file or a tree) as a tar stream on exec `id`'s stdout, then
    /// `Exited(Code(0))`, or `Failed`.
    CopyOut { id: u32, path: String },
    /// Liveness: answered with [`AgentEvent::Pong`].
    Ping { nonce: u64 },
    /// Stop every process, unmount, and power the VM off. Answered with `Ok` before it starts.
    PowerOff,
    /// Open a TCP connection to the guest's own loopback (`127.0.0.1:port`, then `[::1]:port`)
    /// and carry it as exec `id`: `Started { pid: 0 }`, the guest side's bytes as `Stdout`
    /// output, the host's as stdin (`CloseStdin` shuts the guest socket's write side), then
    /// `Exited(Code(0))` once the guest side has closed and everything is sent; or
    /// `Failed { code: 1, message }` when nothing listens ("connection refused"). The same
    /// windows as an exec apply. Used by `banger vm proxy` (ssh's ProxyCommand) and port
    /// forwards; it needs no guest network, only loopback. Since protocol 6.
    Connect { id: u32, port: u16 },
    /// Install the VM's ssh host key and the user's public key, and start an SSH server on
    /// port 22 if none runs: the image's own `sshd` when it has one, else the agent's built-in
    /// server. Sent after every `Ready` (so a restarted agent or a restored clone gets it again);
    /// answered with [`AgentEvent::Ssh`] or `Error`. Since protocol 6.
    Ssh(SshSetup),
}

/// What the guest needs to serve ssh with keys the host already trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSetup {
    /// The VM's ed25519 host key, OpenSSH private-key format (`-----BEGIN OPENSSH PRIVATE
    /// KEY-----`). Written to `/etc/ssh/ssh_host_ed25519_key` (0600, its `.pub` beside it).
    pub host_key: String,
    /// Lines for root's `authorized_keys` (`ssh-ed25519 AAAA… comment`).
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    Ready(AgentReady),
    Exec {
        id: u32,
        event: ExecEvent,
    },
    /// The agent has taken `bytes` of exec `id`'s stdin: the host may send that many more.
    StdinAck {
        id: u32,
        bytes: u64,
    },
    Pong {
        nonce: u64,
    },
    Ok,
    /// The answer to [`AgentRequest::Ssh`]: which server listens on port 22, e.g.
    /// `openssh /usr/sbin/sshd` or `banger-agent`. Since protocol 6.
    Ssh {
        server: String,
    },
    /// A request the agent could not take (unknown id, a duplicate id, too many execs).
    Error {
        id: Option<u32>,
        error: Error,
    },
}

/// What the agent says once it has taken the host's clock and entropy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReady {
    /// e.g. `banger-agent 0.1.0`.
    pub software: String,
    pub hostname: String,
    pub timings: BootTimings,
}

/// Where the guest's boot time went, in microseconds of `CLOCK_BOOTTIME` (0 is the kernel's
/// start). Steps the boot skipped (no initrd) are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimings {
    /// The agent started as the initrd's `/init` (or as `init=` without one).
    pub init_us: u64,
    /// The modules were loaded.
    pub modules_us: Option<u64>,
    /// The root disk was mounted and switched to.
    pub root_us: Option<u64>,
    /// PID 1's duties were done (mounts, hostname, network) and the agent listened.
    pub listening_us: u64,
    /// The agent answered its first `Sync`.
    pub ready_us: u64,
}
