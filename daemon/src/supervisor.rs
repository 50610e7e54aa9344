//! The root supervisor: starts the daemon's actors in order, learns when one exits (its guard
//! reports, even after a panic), restarts it with exponential backoff, and stops them in reverse
//! order on shutdown. Owns the listening socket's fd and sd-notify. Takes `ChildStarted`,
//! `ChildExited`, `GetStatus`, `Shutdown` and (chaos builds) `Chaos`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use protocol::daemon::{ActorState, ActorStatus, ChaosAction, StatusReport};
use protocol::{Error, ErrorKind};
use slog::{Logger, error, info, o, warn};

use crate::api_server::ApiServer;
use crate::child::{ChildCtx, ChildExited, ChildGuard, ChildStarted, Control, Describe};
use crate::config::Config;
use crate::connection::seats::Seats;
use crate::connection::{Deps, version_info};
use crate::helper::HelperLink;
use crate::image_cache::ImageCache;
use crate::kernels::KernelStore;
use crate::network::Network;
use crate::notify::Notifier;
use crate::peers::{Peers, Started};
use crate::store::Store;
use crate::vm_manager::VmManager;
use crate::vmm::Backends;
use crate::vmm::firecracker::Firecracker;
use crate::vmm::qemu::Qemu;

/// The supervised actors, in start order; shutdown runs it backwards. The API comes last so
/// that READY means "the socket answers".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Store,
    Helper,
    Images,
    Kernels,
    Network,
    Vms,
    Api,
}

const CHILDREN: [Child; 7] =
    [Child::Store, Child::Helper, Child::Images, Child::Kernels, Child::Network, Child::Vms, Child::Api];

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::Store => "store",
            Child::Helper => "helper",
            Child::Images => "images",
            Child::Kernels => "kernels",
            Child::Network => "network",
            Child::Vms => "vms",
            Child::Api => "api",
        }
    }
}
/// First restart delay; doubles with each exit that follows a short run.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting starts again from the base delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long shutdown waits for one child before moving on.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: &'static str,
}

#[derive(Message)]
#[rtype(result = "StatusReport")]
pub struct GetStatus;

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Chaos(pub ChaosAction);

struct Handle {
    describe: Recipient<Describe>,
    control: Recipient<Control>,
}

impl Handle {
    fn of<A>(addr: Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Describe> + Handler<Control>,
    {
        Handle { describe: addr.clone().recipient(), control: addr.recipient() }
    }
}

struct Slot {
    child: Child,
    name: &'static str,
    state: ActorState,
    incarnation: u64,
    handle: Option<Handle>,
    restarts: u32,
    last_exit: Option<String>,
    started_at: Option<Instant>,
    /// Exits since the child last ran for `STABLE_AFTER`; sets the backoff exponent.
    quick_exits: u32,
    /// Chaos: how many upcoming starts should fail.
    fail_starts: u32,
}

pub struct Supervisor {
    config: Config,
    listener: OwnedFd,
    /// Who holds the daemon's connections: kept here, since connections outlive an ApiServer.
    seats: Seats,
    log: Logger,
    /// Where every child finds the others; written here as each one starts.
    peers: Peers,
    notifier: Notifier,
    started_at: Instant,
    slots: Vec<Slot>,
    next_incarnation: u64,
    ready: bool,
    shutting_down: bool,
}

impl Supervisor {
    pub fn new(config: Config, listener: OwnedFd, log: Logger) -> Self {
        let slots = CHILDREN
            .iter()
            .map(|&child| Slot {
                child,
                name: child.name(),
                state: ActorState::Starting,
                incarnation: 0,
                handle: None,
                restarts: 0,
                last_exit: None,
                started_at: None,
                quick_exits: 0,
                fail_starts: 0,
            })
            .collect();
        let notifier = Notifier::from_env(log.clone());
        Supervisor {
            seats: Seats::new(config.connections.max_per_uid),
            config,
            listener,
            log,
            peers: Peers::default(),
            notifier,
            started_at: Instant::now(),
            slots,
            next_incarnation: 1,
            ready: false,
            shutting_down: false,
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.name == name)
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let me = ctx.address();
        let slot = &mut self.slots[index];
        let fail = slot.fail_starts > 0;
        slot.fail_starts = slot.fail_starts.saturating_sub(1);
        slot.incarnation = incarnation;
        slot.state = ActorState::Starting;
        let (child, name) = (slot.child, slot.name);
        let cx = ChildCtx {
            config: self.config.clone(),
            log: self.log.new(o!("actor" => name, "incarnation" => incarnation)),
            guard: ChildGuard::new(name, incarnation, me.clone().recipient(), me.recipient(), fail),
            peers: self.peers.clone(),
        };
        let peers = self.peers.clone();
        let handle = match child {
            Child::Store => Some(Handle::of(Store::new(cx).start())),
            Child::Helper => Some(self.publish(HelperLink::new(cx).start(), Started::Helper)),
            Child::Images => Some(self.publish(ImageCache::new(cx).start(), Started::Images)),
            Child::Kernels => Some(self.publish(KernelStore::new(cx).start(), Started::Kernels)),
            Child::Network => Some(self.publish(Network::new(cx).start(), Started::Network)),
            Child::Vms => {
                let (probed, kvm) = protocol::vm::probe_vmm();
                let default = self.config.vmm.unwrap_or(probed);
                let vmms = Backends {
                    firecracker: Arc::new(Firecracker::new(peers.clone())),
                    qemu: Arc::new(Qemu::new(peers, kvm)),
                    default,
                };
                Some(self.publish(VmManager::new(cx, vmms).start(), Started::Vms))
            }
            Child::Api => {
                let deps = Deps { config: self.config.clone(), peers };
                match ApiServer::new(cx, &self.listener, deps, self.seats.clone()) {
                    Ok(api) => Some(Handle::of(api.start())),
                    // The guard was dropped with it, so the exit is already on its way.
                    Err(e) => {
                        error!(self.log, "cannot start the API server"; "error" => %e);
                        None
                    }
                }
            }
        };
        self.slots[index].handle = handle;
    }

    /// Records a child others talk to in the peers handle.
    fn publish<A>(&self, addr: Addr<A>, as_peer: fn(Addr<A>) -> Started) -> Handle
    where
        A: Actor<Context = Context<A>> + Handler<Describe> + Handler<Control>,
    {
        self.peers.started(as_peer(addr.clone()));
        Handle::of(addr)
    }

    /// Stops the last child still up; called again as each one exits.
    fn continue_shutdown(&mut self, ctx: &mut Context<Self>) {
        let Some(index) = self.slots.iter().rposition(|s| s.state != ActorState::Stopped) else {
            info!(self.log, "all actors stopped");
            System::current().stop();
            return;
        };
        let slot = &mut self.slots[index];
        match &slot.handle {
            Some(handle) if slot.state != ActorState::Stopping => {
                info!(self.log, "stopping"; "child" => slot.name);
                slot.state = ActorState::Stopping;
                handle.control.do_send(Control::Stop);
                let incarnation = slot.incarnation;
                ctx.run_later(STOP_TIMEOUT, move |act, ctx| {
                    let slot = &mut act.slots[index];
                    if slot.incarnation == incarnation && slot.state == ActorState::Stopping {
                        warn!(act.log, "child did not stop in time"; "child" => slot.name);
                        slot.state = ActorState::Stopped;
                        act.continue_shutdown(ctx);
                    }
                });
            }
            Some(_) => {}
            None => {
                slot.state = ActorState::Stopped;
                self.continue_shutdown(ctx);
            }
        }
    }

    fn actor_status(&self, slot: &Slot, detail: Option<String>) -> ActorStatus {
        ActorStatus {
            name: slot.name.to_string(),
            state: slot.state.clone(),
            restarts: slot.restarts,
            last_exit: slot.last_exit.clone(),
            detail,
            children: vec![],
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.peers.set_supervisor(ctx.address());
        self.notifier.status("starting");
        for index in 0..self.slots.len() {
            self.start_child(index, ctx);
        }
        if let Some(every) = self.notifier.watchdog_every {
            // The watchdog is fed from this actor's own loop, so a wedged supervisor stops feeding it.
            ctx.run_interval(every, |act, _| act.notifier.watchdog());
        }
    }

    /// Nothing supervises the supervisor: if it goes (a panic), the process exits non-zero and
    /// systemd or the user starts a fresh one, rather than leaving actors without a parent.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if !self.shutting_down {
            error!(self.log, "the supervisor stopped unexpectedly; exiting");
            System::current().stop_with_code(1);
        }
    }
}

impl Handler<ChildStarted> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildStarted, _: &mut Context<Self>) {
        let shutting_down = self.shutting_down;
        let Some(slot) = self.slot(msg.name).filter(|s| s.incarnation == msg.incarnation) else {
            return;
        };
        if shutting_down {
            return;
        }
        slot.state = ActorState::Running;
        slot.started_at = Some(Instant::now());
        if msg.name == Child::Api.name() && !self.ready {
            self.ready = true;
            info!(self.log, "ready"; "socket" => %self.config.socket.display());
            self.notifier.ready("ready");
        } else if self.ready && self.slots.iter().all(|s| s.state == ActorState::Running) {
            self.notifier.status("ready");
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(index) =
            self.slots.iter().position(|s| s.name == msg.name && s.incarnation == msg.incarnation)
        else {
            return;
        };
        let shutting_down = self.shutting_down;
        let slot = &mut self.slots[index];
        slot.handle = None;
        let how = msg.reason.unwrap_or_else(|| "panicked".into());
        slot.last_exit = Some(how.clone());
        if shutting_down {
            slot.state = ActorState::Stopped;
            self.continue_shutdown(ctx);
            return;
        }
        if slot.started_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            slot.quick_exits = 0;
        }
        let delay = BACKOFF_BASE.saturating_mul(1 << slot.quick_exits.min(16)).min(BACKOFF_MAX);
        slot.quick_exits += 1;
        slot.restarts += 1;
        slot.started_at = None;
        slot.state = ActorState::Restarting { in_ms: delay.as_millis() as u64 };
        warn!(self.log, "child exited; restarting"; "child" => slot.name, "how" => &how,
            "restarts" => slot.restarts, "delay_ms" => delay.as_millis() as u64);
        self.notifier.status(&format!("restarting {} ({how}) in {} ms", slot.name, delay.as_millis()));
        ctx.run_later(delay, move |act, ctx| act.start_child(index, ctx));
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        info!(self.log, "shutting down"; "reason" => msg.reason);
        self.shutting_down = true;
        self.notifier.stopping();
        self.continue_shutdown(ctx);
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = ResponseActFuture<Self, StatusReport>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self
            .slots
            .iter()
            .map(|s| {
                let ask = s.handle.as_ref().map(|h| h.describe.send(Describe));
                async move {
                    match ask {
                        Some(ask) => tokio::time::timeout(Duration::from_secs(1), ask).await.ok()?.ok()?,
                        None => None,
                    }
                }
            })
            .collect();
        Box::pin(join_all(asks).into_actor(self).map(|details, act, _| {
            let children = act.slots.iter().zip(details).map(|(s, d)| act.actor_status(s, d)).collect();
            let state = if act.shutting_down { ActorState::Stopping } else { ActorState::Running };
            StatusReport {
                version: version_info(0),
                pid: std::process::id(),
                uptime_ms: act.started_at.elapsed().as_millis() as u64,
                socket: act.config.socket.display().to_string(),
                state_dir: act.config.layout.state_dir.display().to_string(),
                root: ActorStatus {
                    name: "supervisor".into(),
                    state,
                    restarts: 0,
                    last_exit: None,
                    detail: Some(format!("{} children", act.slots.len())),
                    children,
                },
            }
        }))
    }
}

impl Handler<Chaos> for Supervisor {
    type Result = Result<(), Error>;

    fn handle(&mut self, Chaos(action): Chaos, _: &mut Context<Self>) -> Result<(), Error> {
        let (actor, control, fail_starts) = match action {
            ChaosAction::Panic { actor } => (actor, Control::Panic, 0),
            ChaosAction::Stop { actor } => (actor, Control::Stop, 0),
            ChaosAction::FailStarts { actor, times } => (actor, Control::Panic, times),
            ChaosAction::Echo { .. } => return Err(Error::internal("echo is answered by the connection")),
        };
        if actor == "supervisor" && control == Control::Panic {
            panic!("chaos: injected panic in the supervisor");
        }
        // `vm/NAME`: the VM's own actor, supervised by the VmManager.
        if let Some(vm) = actor.strip_prefix("vm/") {
            return self.peers.vms().tell(crate::vm_manager::ChaosVm { name: vm.to_string(), control });
        }
        let names = CHILDREN.map(Child::name).join(", ");
        let slot = self.slot(&actor).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("no actor named {actor:?}"))
                .with_hint(format!("actors: {names}"))
        })?;
        slot.fail_starts = fail_starts;
        let handle = slot.handle.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::Conflict, format!("{actor} is not running ({})", slot.state))
        })?;
        handle.control.do_send(control);
        Ok(())
    }
}
