//! Network: owns the VM subnet's addresses. Leases one per networked VM (persisted in
//! `network.json`, so a restart hands out no address twice), derives each VM's MAC from its
//! name, and has the helper create the bridge and NAT the first time a VM needs them. Takes
//! `LeaseIp`, `ReleaseIp`, `EnsureBridge`, and `Describe`/`Control` from the supervisor.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use actix::prelude::*;
use protocol::helper::{HelperRequest, NetworkSpec};
use protocol::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slog::{Logger, info};

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::persist::Persisted;
use crate::supervisor::{Lookup, Supervisor};

/// A VM's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
    pub bridge: String,
}

impl Lease {
    /// The kernel's `ip=` argument: address, gateway, netmask, device, no autoconf, DNS.
    pub fn kernel_arg(&self) -> String {
        let mask = Ipv4Addr::from(u32::MAX << (32 - self.prefix));
        format!("ip={}::{}:{mask}::eth0:off:{}", self.ip, self.gateway, self.gateway)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Lease, Error>")]
pub struct LeaseIp(pub String);

#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseIp(pub String);

/// Make sure the bridge and NAT exist (once per daemon run).
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct EnsureBridge;

#[derive(Default, Serialize, Deserialize)]
struct Leases {
    leases: BTreeMap<String, Ipv4Addr>,
}

pub struct Network {
    file: PathBuf,
    /// The writer of `file`.
    leases_file: Persisted,
    bridge: String,
    /// The subnet's network address and prefix; the host (gateway) is `.1`.
    net: Ipv4Addr,
    prefix: u8,
    leases: Leases,
    ensured: bool,
    supervisor: Addr<Supervisor>,
    log: Logger,
    guard: ChildGuard,
}

/// The MAC a VM gets: locally administered, unicast, from a hash of its name.
pub fn mac_for(vm: &str) -> String {
    let d = Sha256::digest(vm.as_bytes());
    format!("06:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2], d[3], d[4])
}

/// The first of banger's candidate subnets that no host route overlaps.
pub fn pick_subnet(routes: &[(Ipv4Addr, u8)]) -> (Ipv4Addr, u8) {
    let candidates = [(172, 30), (172, 31), (10, 213), (192, 168)]
        .map(|(a, b)| (Ipv4Addr::new(a, b, if a == 192 { 213 } else { 0 }, 0), 24u8));
    let overlaps = |(net, prefix): (Ipv4Addr, u8), (rnet, rprefix): (Ipv4Addr, u8)| {
        let p = prefix.min(rprefix);
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        u32::from(net) & mask == u32::from(rnet) & mask
    };
    candidates
        .into_iter()
        .find(|c| routes.iter().filter(|r| r.1 > 0).all(|r| !overlaps(*c, *r)))
        .unwrap_or(candidates[0])
}

/// The host's IPv4 routes (destination, prefix), from /proc/net/route.
pub fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((Ipv4Addr::from(u32::from_be(dest)), u32::from_be(mask).count_ones() as u8))
        })
        .collect()
}

impl Network {
    pub fn new(cx: ChildCtx, supervisor: Addr<Supervisor>) -> Self {
        let (net, prefix) = cx.config.subnet;
        let file = cx.config.layout.state_dir.join("network.json");
        Network {
            file: file.clone(),
            leases_file: Persisted::durable(file),
            bridge: cx.config.bridge.clone(),
            net,
            prefix,
            leases: Leases::default(),
            ensured: false,
            supervisor,
            log: cx.log,
            guard: cx.guard,
        }
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    fn lease_for(&self, vm: &str, ip: Ipv4Addr) -> Lease {
        Lease {
            ip,
            gateway: self.gateway(),
            prefix: self.prefix,
            mac: mac_for(vm),
            bridge: self.bridge.clone(),
        }
    }

    /// Queues the leases for the disk (in order, off this thread).
    fn save(&mut self) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(&self.leases).map_err(|e| Error::internal(e.to_string()))?;
        self.leases_file.save(json);
        Ok(())
    }
}

impl Actor for Network {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let file = self.file.clone();
        let read = async move { tokio::task::spawn_blocking(move || std::fs::read(file)).await };
        // No lease is handed out before the saved ones are known.
        ctx.wait(read.into_actor(self).map(|bytes, act, _| {
            if let Ok(Ok(bytes)) = bytes {
                act.leases = serde_json::from_slice(&bytes).unwrap_or_default();
            }
            act.guard.started();
        }));
    }
}

impl Handler<LeaseIp> for Network {
    type Result = ResponseFuture<Result<Lease, Error>>;
    fn handle(&mut self, LeaseIp(vm): LeaseIp, _: &mut Context<Self>) -> Self::Result {
        let lease = self.lease(vm);
        // A new lease is on disk before its address is handed out.
        let settled = self.leases_file.settled();
        Box::pin(async move {
            let lease = lease?;
            settled.await?;
            Ok(lease)
        })
    }
}

impl Network {
    fn lease(&mut self, vm: String) -> Result<Lease, Error> {
        if let Some(ip) = self.leases.leases.get(&vm) {
            return Ok(self.lease_for(&vm, *ip));
        }
        let size = 1u32 << (32 - self.prefix);
        let base = u32::from(self.net);
        let taken: std::collections::HashSet<Ipv4Addr> = self.leases.leases.values().copied().collect();
        // .0 is the network, .1 the host, the last the broadcast.
        let free = (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Conflict,
                    format!("no free address left in {}/{}", self.net, self.prefix),
                )
                .with_hint("remove VMs you no longer need, or use a larger --subnet")
            })?;
        self.leases.leases.insert(vm.clone(), free);
        self.save()?;
        info!(self.log, "leased"; "vm" => &vm, "ip" => %free);
        Ok(self.lease_for(&vm, free))
    }
}

impl Handler<ReleaseIp> for Network {
    type Result = ();
    fn handle(&mut self, ReleaseIp(vm): ReleaseIp, _: &mut Context<Self>) {
        if self.leases.leases.remove(&vm).is_some() {
            let _ = self.save();
        }
    }
}

impl Network {
    /// Asks the helper to create (or remove) the bridge and NAT; remembers whether they exist.
    fn bridge_request(&mut self, create: bool) -> ResponseActFuture<Self, Result<String, Error>> {
        let spec = NetworkSpec {
            bridge: self.bridge.clone(),
            host_cidr: format!("{}/{}", self.gateway(), self.prefix),
        };
        let bridge = spec.bridge.clone();
        let request =
            if create { HelperRequest::EnsureNetwork(spec) } else { HelperRequest::RemoveNetwork(spec) };
        let supervisor = self.supervisor.clone();
        let work = async move {
            let helper = supervisor.send(Lookup).await.ok().and_then(|p| p.helper);
            crate::helper::call(helper, request, None).await.map(|_| bridge)
        };
        Box::pin(work.into_actor(self).map(move |done, act, _| {
            if done.is_ok() {
                act.ensured = create;
            }
            done
        }))
    }
}

impl Handler<EnsureBridge> for Network {
    type Result = ResponseActFuture<Self, Result<(), Error>>;
    fn handle(&mut self, _: EnsureBridge, _: &mut Context<Self>) -> Self::Result {
        if self.ensured {
            return Box::pin(async { Ok(()) }.into_actor(self));
        }
        Box::pin(self.bridge_request(true).map(|done, _, _| done.map(|_| ())))
    }
}

/// Remove the bridge and its NAT table (`banger system uninstall`).
#[derive(Message)]
#[rtype(result = "Result<String, Error>")]
pub struct RemoveBridge;

impl Handler<RemoveBridge> for Network {
    type Result = ResponseActFuture<Self, Result<String, Error>>;
    fn handle(&mut self, _: RemoveBridge, _: &mut Context<Self>) -> Self::Result {
        self.bridge_request(false)
    }
}

impl Handler<Describe> for Network {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        Some(format!(
            "{} on {}/{}, {} lease(s)",
            self.bridge,
            self.gateway(),
            self.prefix,
            self.leases.leases.len()
        ))
    }
}

crate::handle_control!(Network);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_stable() {
        let m = mac_for("web");
        assert!(m.starts_with("06:") && m.len() == 17);
        assert_eq!(m, mac_for("web"));
        assert_ne!(m, mac_for("web2"));
    }

    #[test]
    fn the_default_subnet_avoids_host_routes() {
        assert_eq!(pick_subnet(&[]), (Ipv4Addr::new(172, 30, 0, 0), 24));
        let taken = [(Ipv4Addr::new(172, 16, 0, 0), 12), (Ipv4Addr::new(0, 0, 0, 0), 0)];
        assert_eq!(
            pick_subnet(&taken),
            (Ipv4Addr::new(10, 213, 0, 0), 24),
            "the default route does not count"
        );
    }

    #[test]
    fn kernel_ip_argument() {
        let l = Lease {
            ip: Ipv4Addr::new(172, 30, 0, 5),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            prefix: 24,
            mac: mac_for("x"),
            bridge: "banger0".into(),
        };
        assert_eq!(l.kernel_arg(), "ip=172.30.0.5::172.30.0.1:255.255.255.0::eth0:off:172.30.0.1");
    }
}
