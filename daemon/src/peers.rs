//! Peers: how the daemon's actors reach each other. One [`Peers`] handle is made by the
//! supervisor and cloned into every actor when it is built; the supervisor writes a child's
//! address into it as the child starts and clears it when the child exits. Reaching a peer is a
//! read of that handle, never a message to the supervisor, and a peer that is restarting (no
//! address yet, or a mailbox that closed under the request) is one error, defined here.

use std::sync::{Arc, RwLock};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use protocol::{Error, ErrorKind};

use crate::helper::HelperLink;
use crate::image_cache::ImageCache;
use crate::kernels::KernelStore;
use crate::network::Network;
use crate::supervisor::Supervisor;
use crate::vm_manager::VmManager;

/// The current address of every actor others talk to.
#[derive(Default)]
struct Addrs {
    supervisor: Option<Addr<Supervisor>>,
    helper: Option<Addr<HelperLink>>,
    images: Option<Addr<ImageCache>>,
    kernels: Option<Addr<KernelStore>>,
    network: Option<Addr<Network>>,
    vms: Option<Addr<VmManager>>,
}

/// A child's address, as the supervisor records it.
pub enum Started {
    Helper(Addr<HelperLink>),
    Images(Addr<ImageCache>),
    Kernels(Addr<KernelStore>),
    Network(Addr<Network>),
    Vms(Addr<VmManager>),
}

#[derive(Clone, Default)]
pub struct Peers {
    addrs: Arc<RwLock<Addrs>>,
}

/// The error for a request whose actor is restarting.
pub fn restarting(what: &str) -> Error {
    Error::new(ErrorKind::Unavailable, format!("the {what} is restarting")).with_hint("retry in a moment")
}

/// One peer as it is now: its address (if it runs) and what to call it in an error.
pub struct Peer<A: Actor> {
    addr: Option<Addr<A>>,
    what: &'static str,
}

impl<A: Actor> Peer<A> {
    pub fn addr(&self) -> Result<Addr<A>, Error> {
        self.addr.clone().ok_or_else(|| restarting(self.what))
    }

    /// Sends `msg` and waits for its answer, whatever its type.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, Error>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.addr()?.send(msg).await.map_err(|_| restarting(self.what))
    }

    /// Sends a message that answers with a `Result` and waits for it.
    pub async fn ask<M, T>(&self, msg: M) -> Result<T, Error>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.send(msg).await?
    }

    /// Queues `msg` without waiting for an answer.
    pub fn tell<M>(&self, msg: M) -> Result<(), Error>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.addr()?.do_send(msg);
        Ok(())
    }
}

impl Peers {
    fn read<A: Actor>(&self, what: &'static str, pick: impl FnOnce(&Addrs) -> &Option<Addr<A>>) -> Peer<A> {
        // A poisoned lock only means a writer panicked mid-assignment of an `Option`: still whole.
        let addrs = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        // A stopped actor's address stays here until its replacement's is written: it counts as
        // restarting from the moment its mailbox closes.
        Peer { addr: pick(&addrs).clone().filter(Addr::connected), what }
    }

    pub fn supervisor(&self) -> Peer<Supervisor> {
        self.read("supervisor", |a| &a.supervisor)
    }
    pub fn helper(&self) -> Peer<HelperLink> {
        self.read("helper link", |a| &a.helper)
    }
    pub fn images(&self) -> Peer<ImageCache> {
        self.read("image cache", |a| &a.images)
    }
    pub fn kernels(&self) -> Peer<KernelStore> {
        self.read("kernel store", |a| &a.kernels)
    }
    pub fn network(&self) -> Peer<Network> {
        self.read("network", |a| &a.network)
    }
    pub fn vms(&self) -> Peer<VmManager> {
        self.read("VM manager", |a| &a.vms)
    }

    fn write(&self, f: impl FnOnce(&mut Addrs)) {
        f(&mut self.addrs.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// The supervisor records itself once, as it starts.
    pub fn set_supervisor(&self, addr: Addr<Supervisor>) {
        self.write(|a| a.supervisor = Some(addr));
    }

    /// The supervisor records a child that just started.
    pub fn started(&self, child: Started) {
        self.write(|a| match child {
            Started::Helper(x) => a.helper = Some(x),
            Started::Images(x) => a.images = Some(x),
            Started::Kernels(x) => a.kernels = Some(x),
            Started::Network(x) => a.network = Some(x),
            Started::Vms(x) => a.vms = Some(x),
        });
    }
}
