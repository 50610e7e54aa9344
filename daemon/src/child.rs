//! What every supervised actor carries and answers.
//!
//! actix does not restart an actor that panicked; its future is simply dropped. So each child
//! owns a [`ChildGuard`] whose `Drop` reports the exit to the supervisor, clean or not, and the
//! supervisor decides what happens next.

use actix::prelude::*;
use slog::Logger;

use crate::config::Config;
use crate::peers::Peers;

/// Sent by a child's guard when the child is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub name: &'static str,
    pub incarnation: u64,
    /// Why it exited, as the child said; `None` when it never said: it panicked. (actix runs
    /// `stopped()` even when it drops a panicked actor, so that hook cannot tell the two apart.)
    pub reason: Option<String>,
}

/// Sent by a child once it is up and serving.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildStarted {
    pub name: &'static str,
    pub incarnation: u64,
}

/// Asks a child for a one-line description of what it is doing, for `Status`.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct Describe;

/// The supervisor's orders to a child.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Control {
    /// Stop cleanly (shutdown, or a chaos `Stop`).
    Stop,
    /// Panic inside this handler (chaos builds only send it).
    Panic,
}

/// Everything a child is built from. The supervisor makes a fresh one for every incarnation.
pub struct ChildCtx {
    pub config: Config,
    pub log: Logger,
    pub guard: ChildGuard,
    /// How it reaches the other actors.
    pub peers: Peers,
}

pub struct ChildGuard {
    name: &'static str,
    incarnation: u64,
    parent: Recipient<ChildExited>,
    started: Recipient<ChildStarted>,
    fail_on_start: bool,
    exit: Option<String>,
}

impl ChildGuard {
    pub fn new(
        name: &'static str,
        incarnation: u64,
        parent: Recipient<ChildExited>,
        started: Recipient<ChildStarted>,
        fail_on_start: bool,
    ) -> Self {
        ChildGuard { name, incarnation, parent, started, fail_on_start, exit: None }
    }

    /// Call from the child's `started()` once it is serving.
    pub fn started(&self) {
        if self.fail_on_start {
            panic!("chaos: {} fails as it starts", self.name);
        }
        self.started.do_send(ChildStarted { name: self.name, incarnation: self.incarnation });
    }

    /// Records why the child is about to stop; call before `ctx.stop()`.
    pub fn exiting(&mut self, reason: impl Into<String>) {
        self.exit = Some(reason.into());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.parent.do_send(ChildExited {
            name: self.name,
            incarnation: self.incarnation,
            reason: self.exit.take(),
        });
    }
}

/// Implements the [`Control`] handler every child shares (the actor keeps its guard in `guard`).
#[macro_export]
macro_rules! handle_control {
    ($actor:ty) => {
        impl actix::Handler<$crate::child::Control> for $actor {
            type Result = ();
            fn handle(&mut self, msg: $crate::child::Control, ctx: &mut Self::Context) {
                match msg {
                    $crate::child::Control::Stop => {
                        self.guard.exiting("stopped");
                        actix::ActorContext::stop(ctx)
                    }
                    $crate::child::Control::Panic => panic!("chaos: injected panic"),
                }
            }
        }
    };
}
