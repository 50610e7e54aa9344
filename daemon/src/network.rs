//! Network: owns the VM subnet and its addresses. The subnet is chosen once and saved with the
//! leases in `network.json` (one per networked VM), so a restart moves no VM and hands out no
//! address twice; a `network.json` that cannot be read is moved aside and the leases are
//! rebuilt from the VM records (`Claim`, sent by the VmManager as it adopts). Derives each VM's
//! MAC from its name, and has the helper create the bridge and NAT the first time a VM needs
//! them. Takes `LeaseIp`, `ReleaseIp`, `Claim`, `EnsureBridge`, `RemoveBridge`, and
//! `Describe`/`Control` from the supervisor.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use actix::prelude::*;
use protocol::helper::{HelperRequest, NetworkSpec};
use protocol::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slog::{Logger, info, warn};

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::peers::Peers;
use crate::persist::Persisted;

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
    /// The kernel's `ip=` argument (address, gateway, netmask, device, no autoconf, DNS), for a
    /// kernel with its network driver built in; and the agent's, which configures the network
    /// once it has loaded the driver.
    pub fn kernel_args(&self) -> [String; 3] {
        let mask = Ipv4Addr::from(u32::MAX << (32 - self.prefix));
        [
            format!("ip={}::{}:{mask}::eth0:off:{}", self.ip, self.gateway, self.gateway),
            format!("banger.ip={}/{}", self.ip, self.prefix),
            format!("banger.gw={}", self.gateway),
        ]
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

/// The addresses the VMs on disk hold (name, address), from their records.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Claim(pub Vec<(String, Ipv4Addr)>);

#[derive(Default, Serialize, Deserialize)]
struct Leases {
    /// `a.b.c.0/p`, saved the first time one is chosen (absent in files of older daemons).
    #[serde(default)]
    subnet: Option<String>,
    leases: BTreeMap<String, Ipv4Addr>,
}

pub struct Network {
    file: PathBuf,
    /// The writer of `file`.
    leases_file: Persisted,
    bridge: String,
    /// The subnet asked for in the settings, if any.
    asked: Option<(Ipv4Addr, u8)>,
    /// The subnet's network address and prefix; the host (gateway) is `.1`. Settled at start.
    net: Ipv4Addr,
    prefix: u8,
    leases: Leases,
    /// What happened to an unreadable `network.json`, for `daemon status`.
    recovered: Option<String>,
    ensured: bool,
    peers: Peers,
    log: Logger,
    guard: ChildGuard,
}

/// The MAC a VM gets: locally administered, unicast, from a hash of its name.
pub fn mac_for(vm: &str) -> String {
    let d = Sha256::digest(vm.as_bytes());
    format!("06:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2], d[3], d[4])
}

/// The first of banger's candidate /24s (172.30, 172.31, then 10.213.0–255) that no host route
/// overlaps (other daemons' bridges included); `None` when every one does.
pub fn pick_subnet(routes: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let candidates = [Ipv4Addr::new(172, 30, 0, 0), Ipv4Addr::new(172, 31, 0, 0)]
        .into_iter()
        .chain((0..=255).map(|c| Ipv4Addr::new(10, 213, c, 0)));
    let overlaps = |net: Ipv4Addr, (rnet, rprefix): (Ipv4Addr, u8)| {
        let p = rprefix.min(24);
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        u32::from(net) & mask == u32::from(rnet) & mask
    };
    candidates
        .into_iter()
        .find(|c| routes.iter().filter(|r| r.1 > 0).all(|r| !overlaps(*c, *r)))
        .map(|c| (c, 24))
}

fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (net, prefix) = s.split_once('/')?;
    Some((net.parse().ok()?, prefix.parse().ok().filter(|p| (16..=29).contains(p))?))
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
    pub fn new(cx: ChildCtx) -> Self {
        let file = cx.config.layout.state_dir.join("network.json");
        Network {
            file: file.clone(),
            leases_file: Persisted::durable(file),
            bridge: cx.config.bridge.clone(),
            asked: cx.config.subnet,
            net: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            leases: Leases::default(),
            recovered: None,
            ensured: false,
            peers: cx.peers,
            log: cx.log,
            guard: cx.guard,
        }
    }

    /// Takes the saved state (or what was made of an unreadable file) and settles the subnet:
    /// the one asked for, else the saved one, else a free one, which is saved.
    fn load(&mut self, read: std::io::Result<Vec<u8>>) {
        match read.map(|bytes| serde_json::from_slice::<Leases>(&bytes)) {
            Ok(Ok(leases)) => self.leases = leases,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => self.corrupt(e.to_string()),
            Err(e) => self.corrupt(e.to_string()),
        }
        let saved = self.leases.subnet.as_deref().and_then(parse_subnet);
        let (net, prefix) = match (self.asked, saved) {
            (Some(asked), saved) => {
                if saved.is_some_and(|s| s != asked) {
                    warn!(self.log, "the settings name another subnet than the saved one; VMs get new addresses";
                        "saved" => self.leases.subnet.as_deref().unwrap_or(""));
                }
                asked
            }
            (None, Some(saved)) => saved,
            // Every candidate taken: leases are refused with advice (see `lease`).
            (None, None) => pick_subnet(&host_routes()).unwrap_or((Ipv4Addr::UNSPECIFIED, 0)),
        };
        (self.net, self.prefix) = (net, prefix);
        if prefix > 0 {
            self.leases.subnet = Some(format!("{net}/{prefix}"));
            let keep: BTreeMap<String, Ipv4Addr> = std::mem::take(&mut self.leases.leases)
                .into_iter()
                .filter(|(_, ip)| self.contains(*ip))
                .collect();
            self.leases.leases = keep;
            let _ = self.save();
        }
    }

    /// An unreadable `network.json`: kept aside; the leases come back from the VM records.
    fn corrupt(&mut self, why: String) {
        let note = match crate::fsutil::move_aside(&self.file) {
            Ok(aside) => format!(
                "network.json was unreadable ({why}); kept as {}, leases rebuilt from the VM records",
                aside.display()
            ),
            Err(e) => format!("network.json was unreadable ({why}) and could not be moved aside: {e}"),
        };
        warn!(self.log, "{}", note);
        self.recovered = Some(note);
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        if self.prefix == 0 {
            return false;
        }
        let mask = u32::MAX << (32 - self.prefix);
        let host = u32::from(ip) & !mask;
        u32::from(ip) & mask == u32::from(self.net) && host > 1 && host < !mask
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
        // No lease is handed out before the saved ones are known. (Moving a corrupt file
        // aside is one rename, done inline.)
        ctx.wait(read.into_actor(self).map(|read, act, _| {
            act.load(read.unwrap_or_else(|e| Err(std::io::Error::other(e))));
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

/// The Network's own failures, turned into the wire's [`Error`] in one place.
#[derive(Debug)]
pub enum NetworkError {
    /// Every candidate subnet overlaps a host route.
    NoFreeSubnet,
    /// Every address of the subnet is leased.
    Exhausted(String),
}

impl From<NetworkError> for Error {
    fn from(e: NetworkError) -> Error {
        match e {
            NetworkError::NoFreeSubnet => Error::new(
                ErrorKind::Conflict,
                "every subnet banger would pick (172.30/24, 172.31/24, 10.213.0-255/24) overlaps a host route",
            )
            .with_hint("name a free one: bangerd --subnet 10.77.0.0/24 (or [network] subnet in bangerd.toml)"),
            NetworkError::Exhausted(subnet) => {
                Error::new(ErrorKind::Conflict, format!("no free address left in {subnet}"))
                    .with_hint("remove VMs you no longer need, or use a larger --subnet")
            }
        }
    }
}

impl Network {
    fn lease(&mut self, vm: String) -> Result<Lease, Error> {
        if self.prefix == 0 {
            return Err(NetworkError::NoFreeSubnet.into());
        }
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
            .ok_or_else(|| NetworkError::Exhausted(format!("{}/{}", self.net, self.prefix)))?;
        self.leases.leases.insert(vm.clone(), free);
        self.save()?;
        info!(self.log, "leased"; "vm" => &vm, "ip" => %free);
        Ok(self.lease_for(&vm, free))
    }
}

impl Handler<Claim> for Network {
    type Result = ();
    /// Each VM keeps the address its record holds; one claimed twice stays with the first.
    fn handle(&mut self, Claim(claims): Claim, _: &mut Context<Self>) {
        let mut changed = false;
        for (vm, ip) in claims {
            if !self.contains(ip) || self.leases.leases.get(&vm) == Some(&ip) {
                continue;
            }
            if let Some(holder) =
                self.leases.leases.iter().find(|(_, held)| **held == ip).map(|(n, _)| n.clone())
            {
                warn!(self.log, "two VMs claim one address; the first keeps it"; "ip" => %ip, "holder" => holder, "vm" => &vm);
                continue;
            }
            info!(self.log, "lease restored from the VM's record"; "vm" => &vm, "ip" => %ip);
            self.leases.leases.insert(vm, ip);
            changed = true;
        }
        if changed {
            let _ = self.save();
        }
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
        let peers = self.peers.clone();
        let work = async move { crate::helper::call(&peers, request, None).await.map(|_| bridge) };
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
        let mut line = format!(
            "{} on {}/{}, {} lease(s)",
            self.bridge,
            self.gateway(),
            self.prefix,
            self.leases.leases.len()
        );
        if let Some(note) = &self.recovered {
            line.push_str("; ");
            line.push_str(note);
        }
        Some(line)
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
        assert_eq!(pick_subnet(&[]), Some((Ipv4Addr::new(172, 30, 0, 0), 24)));
        let mut taken = vec![(Ipv4Addr::new(172, 16, 0, 0), 12), (Ipv4Addr::new(0, 0, 0, 0), 0)];
        assert_eq!(
            pick_subnet(&taken),
            Some((Ipv4Addr::new(10, 213, 0, 0), 24)),
            "the default route does not count"
        );
        taken.push((Ipv4Addr::new(10, 213, 0, 0), 24));
        assert_eq!(pick_subnet(&taken), Some((Ipv4Addr::new(10, 213, 1, 0), 24)), "another daemon's bridge");
        taken.push((Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(pick_subnet(&taken), None, "all taken: no silent overlap");
    }

    #[test]
    fn saved_subnets_parse_back() {
        assert_eq!(parse_subnet("10.213.4.0/24"), Some((Ipv4Addr::new(10, 213, 4, 0), 24)));
        assert_eq!(parse_subnet("10.213.4.0/8"), None);
        assert_eq!(parse_subnet("junk"), None);
    }

    #[test]
    fn kernel_ip_argument() {
        let l = Lease {
            ip: Ipv4Addr::new(172, 30, 0, 5),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            prefix: 24,
            mac: mac_for("x"),
            bridge: "bangerab12cd34".into(),
        };
        assert_eq!(
            l.kernel_args(),
            [
                "ip=172.30.0.5::172.30.0.1:255.255.255.0::eth0:off:172.30.0.1",
                "banger.ip=172.30.0.5/24",
                "banger.gw=172.30.0.1"
            ]
        );
    }
}
