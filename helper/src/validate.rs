//! Every field of every privileged request is checked here before anything is done with it.
//! The daemon builds these requests, but the helper is root and trusts no one: names are
//! charset- and length-checked, paths canonicalised and required to lie in banger's own
//! directories, network parameters required to be private and sane.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use protocol::{Error, ErrorKind};

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// VM names: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn vm_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(invalid(format!("invalid VM name {name:?}: use 1-63 of a-z, 0-9 and '-'"))) }
}

/// Bridge names: `banger` and up to 9 more of a-z, 0-9 (an interface name has 15 bytes).
pub fn bridge_name(name: &str) -> Result<(), Error> {
    let ok = name.strip_prefix("banger").is_some_and(|rest| {
        rest.len() <= 9 && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid bridge name {name:?}: it must be banger[a-z0-9]{{0,9}}")))
    }
}

/// The host's address on the VM subnet, `a.b.c.d/p`: private, /16 to /29, a host address.
pub fn host_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), Error> {
    let bad = |why: &str| invalid(format!("invalid subnet {cidr:?}: {why}"));
    let (addr, prefix) = cidr.split_once('/').ok_or_else(|| bad("expected a.b.c.d/prefix"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("not a prefix length"))?;
    if !(16..=29).contains(&prefix) {
        return Err(bad("the prefix must be between /16 and /29"));
    }
    if !addr.is_private() {
        return Err(bad("VM subnets must be private (10/8, 172.16/12, 192.168/16)"));
    }
    let host = u32::from(addr) & (u32::MAX >> prefix);
    if host == 0 || host == u32::MAX >> prefix {
        return Err(bad("the host address cannot be the network or broadcast address"));
    }
    Ok((addr, prefix))
}

/// A file the helper may hand to a VM: it must resolve (symlinks and all) to a regular file in
/// `<state>/images`, `<state>/kernels` or `<state>/vms`.
pub fn owned_file(state_dir: &Path, path: &str) -> Result<PathBuf, Error> {
    let refuse = |why: String| Error::new(ErrorKind::PermissionDenied, format!("refusing {path:?}: {why}"));
    let state = state_dir.canonicalize().map_err(|e| refuse(format!("the state dir is unusable: {e}")))?;
    let real = Path::new(path).canonicalize().map_err(|e| refuse(e.to_string()))?;
    let inside = ["images", "kernels", "vms"].iter().any(|d| real.starts_with(state.join(d)));
    if !inside {
        return Err(refuse(format!("it is not inside {}/{{images,kernels,vms}}", state.display())));
    }
    let meta = std::fs::symlink_metadata(&real).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    Ok(real)
}

/// Paths given on the command line of a root process: absolute, without `..`.
pub fn absolute(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown} must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("{shown} must not contain `..`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names() {
        for good in ["web", "a", "vm-1", &"a".repeat(63)] {
            assert!(vm_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Web", "a_b", "a/b", "..", "x\0", &"a".repeat(64)] {
            assert!(vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bridges_and_subnets() {
        assert!(bridge_name("banger0").is_ok());
        assert!(bridge_name("bangertest12345").is_ok(), "15 bytes");
        assert!(bridge_name("bangertest123456").is_err(), "16 bytes");
        assert!(bridge_name("eth0").is_err());
        assert!(bridge_name("banger0; rm").is_err());
        assert_eq!(host_cidr("172.30.0.1/24").unwrap(), (Ipv4Addr::new(172, 30, 0, 1), 24));
        for bad in [
            "8.8.8.1/24",
            "172.30.0.0/24",
            "172.30.0.255/24",
            "10.0.0.1/8",
            "10.0.0.1/30",
            "10.0.0.1",
            "x/24",
        ] {
            assert!(host_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_must_be_banger_files() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("vms/web")).unwrap();
        std::fs::write(state.path().join("vms/web/disk.ext4"), b"").unwrap();
        std::fs::write(state.path().join("secret"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", state.path().join("vms/web/link")).unwrap();
        let p = |rel: &str| state.path().join(rel).display().to_string();
        assert!(owned_file(state.path(), &p("vms/web/disk.ext4")).is_ok());
        assert!(owned_file(state.path(), &p("secret")).is_err(), "outside images/kernels/vms");
        assert!(owned_file(state.path(), &p("vms/web/link")).is_err(), "a symlink out");
        assert!(owned_file(state.path(), &p("vms/web/../../secret")).is_err(), "dot-dot out");
        assert!(owned_file(state.path(), &p("vms/web")).is_err(), "a directory");
        assert!(owned_file(state.path(), "/etc/passwd").is_err());
    }
}
