//! VmActor: one per VM. Owns its state machine (`Created → Starting → Running → Stopping →
//! Stopped | Failed(reason)`), persisted on every transition; its VMM (through the [`Vmm`]
//! trait), its console log's cap, and the watch on its VMM's pidfd. Takes `Start`, `Stop`,
//! `Kill`, `Info`, `Destroy` from the VmManager; tells it when it is gone (its guard).

pub mod agent;
pub mod console;
pub mod follow;
pub mod ports;
pub mod record;

use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protocol::vm::{AgentState, PortForward, VmAction, VmInfo, VmState, Workspace};
use protocol::{Error, ErrorKind};
use slog::{Logger, info, warn};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use self::record::{Paths, Record};
use crate::fsutil::now;
use crate::persist::Persisted;
use crate::vmm::{Boot, Running, Vmm};

#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct Start {
    pub boot: Boot,
}

#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct Stop {
    pub timeout: Duration,
}

#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct Kill;

#[derive(Message)]
#[rtype(result = "VmInfo")]
pub struct Info;

/// The way to the VM's guest agent, while the VM runs.
#[derive(Message)]
#[rtype(result = "Result<agent::AgentHandle, Error>")]
pub struct Agent;

/// The console log as a stream; with `follow`, on until the VMM exits.
#[derive(Message)]
#[rtype(result = "mpsc::Receiver<follow::Chunk>")]
pub struct Logs {
    pub follow: bool,
}

/// Records (or forgets) what `banger vm workspace copy` put in the guest.
#[derive(Message)]
#[rtype(result = "Result<VmInfo, Error>")]
pub struct SetWorkspace(pub Option<Workspace>);

/// Stop the actor for good; the VM must not be running. The manager deletes its files.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Destroy;

/// The VMM process is gone (its pidfd became readable).
#[derive(Message)]
#[rtype(result = "()")]
struct Exited {
    pid: u32,
}

/// The helper refused or failed to kill the VMM `pid` (a record naming a process that is not
/// its VMM): the VM is marked failed rather than waited on forever.
#[derive(Message)]
#[rtype(result = "()")]
struct KillFailed {
    pid: u32,
    error: Error,
}

/// What outlives the actor, however it goes: the VmManager is told, with a future that
/// resolves once the record's last queued state is on disk, so a replacement reads that state.
pub struct VmGuard {
    pub name: String,
    pub manager: Recipient<crate::vm_manager::VmGone>,
    /// Told when the VM fails, so its address is released.
    pub failed: Recipient<crate::vm_manager::VmFailed>,
    /// The writer of `vm.json`.
    pub record: Persisted,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let settled = Box::pin(self.record.settled());
        self.manager.do_send(crate::vm_manager::VmGone { name: self.name.clone(), settled });
    }
}

pub struct VmActor {
    record: Record,
    paths: Paths,
    vmm: Arc<dyn Vmm>,
    log: Logger,
    guard: VmGuard,
    /// Set when the exit about to come was asked for (stop, kill): it ends in `Stopped`.
    expected_exit: bool,
    waiters: Vec<oneshot::Sender<Result<VmInfo, Error>>>,
    /// While the VMM runs: the console watch that feeds `vm logs -f` and trims the log.
    console: Option<follow::Watch>,
    /// While the VMM runs: the link to the guest agent.
    agent: Option<agent::Link>,
    /// The user's public ssh key, for the guest's `authorized_keys`.
    client_key: PathBuf,
    /// While the VMM runs: the port forwards' listeners.
    forwards: ports::Forwards,
    /// The forwards' listeners bound by a start (which a taken port refuses), until it runs.
    bound: Option<Vec<ports::Bound>>,
}

impl VmActor {
    pub fn new(
        record: Record,
        paths: Paths,
        vmm: Arc<dyn Vmm>,
        client_key: PathBuf,
        log: Logger,
        guard: VmGuard,
    ) -> Self {
        VmActor {
            record,
            paths,
            vmm,
            log,
            guard,
            expected_exit: false,
            waiters: vec![],
            console: None,
            agent: None,
            client_key,
            forwards: Default::default(),
            bound: None,
        }
    }

    fn name(&self) -> String {
        self.record.info.name.clone()
    }

    /// The VM as a client sees it: its record, and what its agent link knows now.
    fn info(&self) -> VmInfo {
        let mut info = self.record.info.clone();
        if let (Some(link), Some(ssh)) = (&self.agent, &mut info.ssh) {
            ssh.server = link.ssh_server();
        }
        info.agent = self.agent.as_ref().map(agent::Link::state);
        info
    }

    /// Moves to `state` and queues the record for the disk (written in order, off this
    /// thread). What must not happen before the state is on disk awaits `saved`.
    fn set(&mut self, state: VmState) {
        info!(self.log, "state"; "state" => %state);
        self.record.info.state = state;
        self.persist();
    }

    /// Queues the record as it now is for the disk (written in order, off this thread).
    fn persist(&mut self) {
        match self.record.to_json() {
            Ok(json) => self.guard.record.save(json),
            Err(e) => warn!(self.log, "cannot persist the VM state"; "error" => %e.message),
        }
    }

    /// Resolves once every state set so far is on disk (a failed write is logged).
    fn saved(&self) -> impl Future<Output = ()> + use<> {
        let (settled, log) = (self.guard.record.settled(), self.log.clone());
        async move {
            if let Err(e) = settled.await {
                warn!(log, "cannot persist the VM state"; "error" => %e.message);
            }
        }
    }

    /// Whether the VM's state allows `action` (the one rule set, in `protocol::vm`).
    fn check(&self, action: VmAction) -> Result<(), Error> {
        self.record.info.state.check(&self.record.info.name, action)
    }

    /// Watches the VMM's pidfd (its exit arrives as `Exited`) and its console until then, and
    /// links up with the guest agent.
    fn watch(&mut self, running: &Running, ctx: &mut Context<Self>) {
        self.console = Some(follow::Watch::start(self.paths.console()));
        // VMs made before ssh keys have none.
        let ssh = self.record.info.ssh.as_ref().map(|_| agent::SshKeys {
            host_key: self.paths.dir.join(crate::ssh::HOST_KEY_FILE),
            client_public: self.client_key.clone(),
        });
        let link = agent::Link::start(self.vmm.clone(), running.clone(), ssh, self.log.clone());
        self.forwards = ports::Forwards::default();
        // Bound by the start; a re-adopted VM binds them now, and runs regardless of one that
        // cannot listen (the log says which).
        let bound = self.bound.take().unwrap_or_else(|| {
            let bind = |f: &PortForward| {
                ports::bind(f)
                    .map_err(|e| warn!(self.log, "a port forward cannot listen"; "forward" => %f, "error" => %e.message))
                    .ok()
            };
            self.record.info.ports.iter().filter_map(bind).collect()
        });
        for b in bound {
            self.forwards.serve(b, &link.handle(), &self.log);
        }
        self.agent = Some(link);
        let pid = running.pid;
        let addr = ctx.address();
        let log = self.log.clone();
        actix::spawn(async move {
            match pidfd(pid) {
                Ok(fd) => {
                    // SAFETY: the AsyncFd takes the OwnedFd, which stays open as long as it does.
                    if let Ok(fd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                        let _ = fd.readable().await;
                    }
                }
                // Already gone.
                Err(e) => warn!(log, "cannot watch the VMM"; "pid" => pid, "error" => %e),
            }
            addr.do_send(Exited { pid });
        });
    }

    fn wait(&mut self) -> oneshot::Receiver<Result<VmInfo, Error>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// The reply for a request that waits for the VMM to exit.
    fn until_exit(&mut self) -> ResponseActFuture<Self, Result<VmInfo, Error>> {
        let rx = self.wait();
        Box::pin(
            async move { rx.await.map_err(|_| Error::internal("the VM actor stopped"))? }.into_actor(self),
        )
    }
}

/// VM names: `^[a-z0-9][a-z0-9-]{0,62}$` (they name taps, jails and directories).
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidInput, format!("invalid VM name {name:?}"))
            .with_hint("use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"))
    }
}

/// pidfd_open(2): a descriptor that becomes readable when `pid` exits, even for a non-child.
fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the result is checked before use.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Actor for VmActor {
    type Context = Context<Self>;

    /// Re-adoption: a record that says a VMM runs is checked against the process table.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(running) = self.record.running.clone() else {
            if matches!(self.record.info.state, VmState::Starting | VmState::Running | VmState::Stopping) {
                self.set(VmState::Failed("bangerd stopped while the VM was starting".into()));
            }
            return;
        };
        let vmm = self.vmm.clone();
        let check = async move { vmm.alive(&running).await };
        ctx.wait(check.into_actor(self).map(|alive, act, ctx| {
            let Some(running) = act.record.running.clone() else { return };
            if alive {
                info!(act.log, "re-adopted a running VMM"; "pid" => running.pid);
                if act.record.info.state == VmState::Stopping {
                    act.set(VmState::Running);
                }
                act.watch(&running, ctx);
            } else {
                ctx.notify(Exited { pid: running.pid });
            }
        }));
    }
}

impl Handler<Start> for VmActor {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, msg: Start, _: &mut Context<Self>) -> Self::Result {
        let bound = self.check(VmAction::Start).and_then(|()| ports::bind_all(&self.record.info.ports));
        match bound {
            Ok(bound) => self.bound = Some(bound),
            Err(e) => return Box::pin(async move { Err(e) }.into_actor(self)),
        }
        if let Some(ip) = &msg.boot.ip {
            self.record.info.spec.ip = Some(ip.clone());
        }
        self.set(VmState::Starting);
        self.expected_exit = false;
        let (vmm, console_log, starting) = (self.vmm.clone(), self.paths.console(), self.saved());
        let boot = async move {
            // `Starting` is on disk before a VMM exists: a daemon that dies now knows to fail it.
            starting.await;
            let log = console_log.clone();
            let console = crate::fsutil::blocking(move || {
                console::open_for_vmm(&log)
                    .map_err(|e| Error::internal(format!("cannot open {}: {e}", log.display())))
            })
            .await?;
            let booted = vmm.boot(msg.boot, OwnedFd::from(console)).await;
            if let Err(e) = &booted {
                let lines = tokio::task::spawn_blocking(move || console::tail(&console_log, 5))
                    .await
                    .unwrap_or_default();
                if !lines.is_empty() {
                    let message = format!("{}\nlast console lines:\n{lines}", e.message);
                    return Err(Error { message, ..e.clone() });
                }
            }
            booted
        };
        Box::pin(
            boot.into_actor(self)
                .map(|booted, act, ctx| {
                    let reply = match booted {
                        Ok(running) => {
                            act.record.running = Some(running.clone());
                            act.record.info.pid = Some(running.pid);
                            act.record.info.started_at = Some(now());
                            act.set(VmState::Running);
                            act.watch(&running, ctx);
                            Ok(act.record.info.clone())
                        }
                        Err(e) => {
                            // The forwards' ports are let go with the failed boot.
                            act.bound = None;
                            act.set(VmState::Failed(e.message.clone()));
                            let (vmm, name) = (act.vmm.clone(), act.name());
                            actix::spawn(async move {
                                let _ = vmm.cleanup(&name).await;
                            });
                            Err(e)
                        }
                    };
                    (reply, act.saved())
                })
                // The reply reports a state that is on disk.
                .then(|(reply, saved), act, _| {
                    async move {
                        saved.await;
                        reply
                    }
                    .into_actor(act)
                }),
        )
    }
}

impl Handler<Stop> for VmActor {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, msg: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let info = self.record.info.clone();
        match (self.check(VmAction::Stop), self.record.running.clone()) {
            (Err(e), _) => Box::pin(async move { Err(e) }.into_actor(self)),
            (Ok(()), Some(running)) => {
                self.expected_exit = true;
                if info.state == VmState::Running {
                    self.set(VmState::Stopping);
                    let vmm = self.vmm.clone();
                    let r = running.clone();
                    let log = self.log.clone();
                    // The agent unmounts cleanly; the VMM's own way is for a guest without one.
                    let agent = self.agent.as_ref().filter(|a| matches!(a.state(), AgentState::Ready(_)));
                    let agent = agent.map(|a| a.handle());
                    actix::spawn(async move {
                        if let Some(agent) = agent {
                            match agent.power_off().await {
                                Ok(()) => return,
                                Err(e) => {
                                    warn!(log, "the agent did not power off; asking the VMM"; "error" => %e.message)
                                }
                            }
                        }
                        if let Err(e) = vmm.shutdown(&r).await {
                            warn!(log, "the VMM's shutdown failed; the timeout will kill it"; "error" => %e.message);
                        }
                    });
                }
                // Past the timeout, kill; a VMM that already exited makes this a no-op.
                ctx.run_later(msg.timeout, move |act, ctx| {
                    if act.record.running.as_ref().is_some_and(|r| r.pid == running.pid) {
                        warn!(act.log, "no shutdown within the timeout; killing");
                        act.kill(&running, ctx);
                    }
                });
                self.until_exit()
            }
            // No VMM: nothing to stop.
            (Ok(()), None) => Box::pin(async move { Ok(info) }.into_actor(self)),
        }
    }
}

impl Handler<Kill> for VmActor {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;

    fn handle(&mut self, _: Kill, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check(VmAction::Kill) {
            return Box::pin(async move { Err(e) }.into_actor(self));
        }
        let Some(running) = self.record.running.clone() else {
            let info = self.record.info.clone();
            return Box::pin(async move { Ok(info) }.into_actor(self));
        };
        self.expected_exit = true;
        self.kill(&running, ctx);
        self.until_exit()
    }
}

impl Handler<Exited> for VmActor {
    type Result = ();

    fn handle(&mut self, msg: Exited, ctx: &mut Context<Self>) {
        let Some(running) = self.record.running.take_if(|r| r.pid == msg.pid) else { return };
        self.record.info.pid = None;
        // The exit code is in the VMM's log and the reason in the console: files, read off this
        // thread. No other message for this VM is handled meanwhile.
        let (vmm, console_log, expected) = (self.vmm.clone(), self.paths.console(), self.expected_exit);
        let read = tokio::task::spawn_blocking(move || {
            let code = vmm.exit_code(&running, &console_log);
            let lines = (!expected && code != Some(0)).then(|| console::tail(&console_log, 5));
            (code, lines)
        });
        let read = async move { read.await.unwrap_or((None, Some(String::new()))) };
        ctx.wait(read.into_actor(self).map(|(code, lines), act, _| act.exited(code, lines)));
    }
}

impl Handler<KillFailed> for VmActor {
    type Result = ();

    fn handle(&mut self, msg: KillFailed, _: &mut Context<Self>) {
        if self.record.running.take_if(|r| r.pid == msg.pid).is_none() {
            return;
        }
        self.record.info.pid = None;
        self.release_address();
        let state = VmState::Failed(format!("its VMM could not be killed: {}", msg.error.message));
        self.end(state, Err(msg.error));
    }
}

impl VmActor {
    /// Asks for the VMM to be killed, off the mailbox; a refusal arrives as `KillFailed`.
    fn kill(&self, running: &Running, ctx: &mut Context<Self>) {
        let (vmm, name, log, addr, running) =
            (self.vmm.clone(), self.name(), self.log.clone(), ctx.address(), running.clone());
        actix::spawn(async move {
            if let Err(error) = vmm.kill(&name, &running).await {
                warn!(log, "kill failed"; "error" => %error.message);
                addr.do_send(KillFailed { pid: running.pid, error });
            }
        });
    }

    /// The VMM is gone: `Stopped` if the exit was asked for or clean, else `Failed` with the
    /// console's last lines. Its host resources are released while the state is written; then
    /// whoever waits for the exit is told.
    fn exited(&mut self, code: Option<i32>, lines: Option<String>) {
        let how = match code {
            Some(c) => format!("exit code {c}"),
            None => "killed".to_string(),
        };
        self.record.info.last_exit = Some(how.clone());
        let state = match lines {
            None => VmState::Stopped,
            Some(lines) => {
                self.release_address();
                VmState::Failed(format!("the VMM exited unexpectedly ({how}); last console lines:\n{lines}"))
            }
        };
        self.end(state, Ok(()));
    }

    /// A failed VM's address goes back to the pool; the next start leases one again.
    fn release_address(&mut self) {
        self.record.info.spec.ip = None;
        self.guard.failed.do_send(crate::vm_manager::VmFailed { name: self.name() });
    }

    /// The VMM is gone (or given up on): the VM takes `state`, and its host resources go.
    fn end(&mut self, state: VmState, outcome: Result<(), Error>) {
        // The watch sends the VMM's last output to its followers, then ends their streams.
        self.console = None;
        self.agent = None;
        self.forwards = ports::Forwards::default();
        self.expected_exit = false;
        self.set(state);
        self.release(outcome);
    }

    /// Releases the VM's host resources (tap, jail) while its state is written, then answers
    /// whoever waits for the exit: with the VM, or with why the VMM could not be stopped.
    fn release(&mut self, outcome: Result<(), Error>) {
        let (vmm, name, log, saved) = (self.vmm.clone(), self.name(), self.log.clone(), self.saved());
        let info = self.record.info.clone();
        let waiters = std::mem::take(&mut self.waiters);
        let console_log = self.paths.console();
        actix::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || console::trim(&console_log)).await;
            // Released before anyone hears the VM stopped, so a restart finds it clean.
            let (cleaned, ()) = futures_util::join!(vmm.cleanup(&name), saved);
            if let Err(e) = cleaned {
                warn!(log, "cannot clean up after the VMM"; "error" => %e.message);
            }
            for w in waiters {
                let _ = w.send(outcome.clone().map(|()| info.clone()));
            }
        });
    }
}

/// Fault injection. A VM actor is not a supervised child: `Stop` ends it like a panic does,
/// and either way its guard has the VmManager adopt the VM again.
impl Handler<crate::child::Control> for VmActor {
    type Result = ();
    fn handle(&mut self, msg: crate::child::Control, ctx: &mut Context<Self>) {
        match msg {
            crate::child::Control::Stop => ctx.stop(),
            crate::child::Control::Panic => panic!("chaos: injected panic in a VM actor"),
        }
    }
}

impl Handler<Info> for VmActor {
    type Result = MessageResult<Info>;
    fn handle(&mut self, _: Info, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.info())
    }
}

impl Handler<SetWorkspace> for VmActor {
    type Result = ResponseActFuture<Self, Result<VmInfo, Error>>;
    fn handle(&mut self, SetWorkspace(workspace): SetWorkspace, _: &mut Context<Self>) -> Self::Result {
        if let VmState::Damaged(_) = self.record.info.state {
            let name = &self.record.info.name;
            let e =
                Error::new(ErrorKind::Conflict, format!("VM {name} is damaged; its record cannot change"))
                    .with_hint(format!("remove it: banger vm rm {name}"));
            return Box::pin(async move { Err(e) }.into_actor(self));
        }
        self.record.info.workspace = workspace.map(Box::new);
        self.persist();
        let info = self.info();
        // Answered once the record is on disk, so a daemon restart keeps what was told.
        let saved = self.saved();
        Box::pin(
            async move {
                saved.await;
                Ok(info)
            }
            .into_actor(self),
        )
    }
}

impl Handler<Agent> for VmActor {
    type Result = Result<agent::AgentHandle, Error>;
    fn handle(&mut self, _: Agent, _: &mut Context<Self>) -> Self::Result {
        let name = &self.record.info.name;
        self.agent.as_ref().map(agent::Link::handle).ok_or_else(|| {
            Error::new(ErrorKind::Conflict, format!("VM {name} is {}", self.record.info.state))
                .with_hint(format!("start it first: banger vm start {name}"))
        })
    }
}

impl Handler<Logs> for VmActor {
    type Result = MessageResult<Logs>;
    fn handle(&mut self, msg: Logs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match (&self.console, msg.follow) {
            (Some(watch), true) => watch.follow(),
            _ => follow::read_once(self.paths.console()),
        })
    }
}

impl Handler<Destroy> for VmActor {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, _: Destroy, ctx: &mut Context<Self>) -> Self::Result {
        let refused = match self.record.running {
            Some(_) => VmState::Running.check(&self.record.info.name, VmAction::Remove),
            None => self.check(VmAction::Remove),
        };
        if let Err(e) = refused {
            return Box::pin(async move { Err(e) });
        }
        // Stopped at once, so nothing more reaches it; the answer waits until its last state is
        // written, since the manager deletes the VM's directory next.
        let saved = self.saved();
        ctx.stop();
        Box::pin(async move {
            saved.await;
            Ok(())
        })
    }
}
