//! The VM network, with iproute2 and nftables run directly (never through a shell), each
//! argument a validated value: the bridge and its address, banger's own nftables table (NAT for
//! the subnet), IP forwarding, and one tap per VM.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use protocol::{Error, ErrorKind};
use sha2::{Digest, Sha256};

/// Finds a system tool without trusting PATH (the helper cleared its environment).
fn tool(name: &str) -> Result<PathBuf, Error> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(ErrorKind::Unavailable, format!("{name} is not installed"))
                .with_hint("install iproute2 and nftables")
        })
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let mut child = Command::new(tool(program)?)
        .args(args)
        .env_clear()
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::internal(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| Error::internal(format!("{program}: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::internal(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::internal(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether a network device exists: sysfs lists this network namespace's devices, without
/// running `ip` (a process start costs a millisecond or more here, on every VM's clean-up).
fn exists(dev: &str) -> bool {
    Path::new("/sys/class/net").join(dev).exists()
}

/// The subnet's network address in CIDR form, for the NAT rule.
fn network(addr: Ipv4Addr, prefix: u8) -> String {
    let mask = u32::MAX << (32 - prefix);
    format!("{}/{prefix}", Ipv4Addr::from(u32::from(addr) & mask))
}

pub fn ensure(bridge: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), Error> {
    if !exists(bridge) {
        run("ip", &["link", "add", bridge, "type", "bridge"], None)?;
    }
    run("ip", &["addr", "replace", &format!("{addr}/{prefix}"), "dev", bridge], None)?;
    run("ip", &["link", "set", bridge, "up"], None)?;
    let net = network(addr, prefix);
    // A table of banger's own per bridge (named for it): nothing else is touched, and two
    // banger daemons on one host keep their rules apart.
    let table = bridge;
    // Declaring then deleting the table makes the load idempotent: the rules are exactly these.
    let rules = format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {net} ip daddr != {net} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" accept\n\
         \t\toifname \"{bridge}\" ct state related,established accept\n\
         \t}}\n\
         }}\n"
    );
    run("nft", &["-f", "-"], Some(&rules))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| Error::internal(format!("cannot enable IP forwarding: {e}")))
}

pub fn remove(bridge: &str) -> Result<(), Error> {
    if exists(bridge) {
        run("ip", &["link", "del", bridge], None)?;
    }
    let table = bridge;
    run("nft", &["-f", "-"], Some(&format!("table ip {table} {{}}\ndelete table ip {table}\n")))?;
    Ok(())
}

/// The tap's name: 15 bytes at most, so derived from a hash of the state dir and the
/// (validated) VM name: two daemons' VMs of one name get two taps.
pub fn tap_name(state_dir: &Path, vm: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(state_dir.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(vm.as_bytes());
    let digest = hasher.finalize();
    format!("bgt{}", hex::encode(&digest[..6]))
}

pub fn create_tap(state_dir: &Path, vm: &str, bridge: &str, owner: u32) -> Result<String, Error> {
    if !exists(bridge) {
        return Err(Error::new(ErrorKind::Conflict, format!("the bridge {bridge} does not exist"))
            .with_hint("the daemon creates it first (EnsureNetwork)"));
    }
    let tap = tap_name(state_dir, vm);
    if exists(&tap) {
        run("ip", &["link", "del", &tap], None)?;
    }
    run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap", "user", &owner.to_string()], None)?;
    run("ip", &["link", "set", &tap, "master", bridge, "up"], None)?;
    Ok(tap)
}

pub fn delete_tap(state_dir: &Path, vm: &str) -> Result<(), Error> {
    let tap = tap_name(state_dir, vm);
    if exists(&tap) {
        run("ip", &["link", "del", &tap], None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_an_interface_name() {
        let (one, two) = (Path::new("/var/lib/banger"), Path::new("/tmp/other"));
        let t = tap_name(one, &"a".repeat(63));
        assert_eq!(t.len(), 15);
        assert_ne!(tap_name(one, "web"), tap_name(one, "web2"));
        assert_ne!(tap_name(one, "web"), tap_name(two, "web"), "each state dir its own taps");
        assert_eq!(network(Ipv4Addr::new(172, 30, 0, 1), 24), "172.30.0.0/24");
    }
}
