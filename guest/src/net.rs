//! The guest's network from the kernel command line, with the classic ioctls (no netlink
//! library, no `ip`): lo up; eth0 gets `banger.ip` and a default route via `banger.gw`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::cmdline::BootConfig;

pub fn configure(config: &BootConfig) {
    let sock = match socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None) {
        Ok(s) => s,
        Err(e) => return crate::log!("no network: cannot open a socket: {e}"),
    };
    if let Err(e) = up(&sock, "lo") {
        crate::log!("cannot bring lo up: {e}");
    }
    let Some((ip, prefix)) = config.ip else { return };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !std::path::Path::new("/sys/class/net/eth0").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    let steps = [
        set_addr(&sock, "eth0", libc::SIOCSIFADDR, ip).map_err(|e| format!("address {ip}: {e}")),
        set_addr(&sock, "eth0", libc::SIOCSIFNETMASK, mask).map_err(|e| format!("netmask {mask}: {e}")),
        up(&sock, "eth0").map_err(|e| format!("up: {e}")),
    ];
    for e in steps.into_iter().filter_map(Result::err) {
        crate::log!("eth0: {e}");
    }
    if let Some(gw) = config.gw
        && let Err(e) = default_route(&sock, gw)
    {
        crate::log!("cannot add the default route via {gw}: {e}");
    }
}

fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &OwnedFd, request: libc::Ioctl, req: &mut libc::ifreq) -> std::io::Result<()> {
    // SAFETY: `req` is a valid ifreq for the duration of the call, as these requests expect.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn set_addr(sock: &OwnedFd, name: &str, request: libc::Ioctl, addr: Ipv4Addr) -> std::io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(sock, request, &mut req)
}

fn default_route(sock: &OwnedFd, gw: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: rtentry is plain data; all zeroes is a valid value (no device, no metric).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    // SAFETY: `rt` is a valid rtentry for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt as *mut libc::rtentry) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
