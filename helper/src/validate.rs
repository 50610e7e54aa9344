//! Every field of every privileged request is checked here before anything is done with it.
//! The daemon builds these requests, but the helper is root and trusts no one: names are
//! charset- and length-checked, paths canonicalised and required to lie in banger's own
//! directories, network parameters required to be private and sane.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::sys::stat::SFlag;
use nix::unistd::Uid;
use protocol::{Error, ErrorKind};

use crate::beneath::{Dir, explain};

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

/// A file the helper may hand to a VM, as a descriptor: `path` must lie in `<state>/images`,
/// `<state>/kernels` or `<state>/vms`, be reached from the state dir's descriptor with no symlink
/// on the way, and be a regular file with one link (a hard link could name any file on the
/// filesystem), owned by the owner or root.
pub fn owned_file(state: &Dir, state_dir: &Path, owner: Uid, path: &str) -> Result<OwnedFd, Error> {
    let refuse = |why: String| Error::new(ErrorKind::PermissionDenied, format!("refusing {path:?}: {why}"));
    let rel = Path::new(path)
        .strip_prefix(state_dir)
        .map_err(|_| refuse(format!("it is not inside {}", state_dir.display())))?;
    let inside = rel.components().next().is_some_and(
        |c| matches!(c, Component::Normal(d) if ["images", "kernels", "vms"].iter().any(|ok| d == *ok)),
    );
    if !inside || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refuse(format!("it is not inside {}/{{images,kernels,vms}}", state_dir.display())));
    }
    let fd = state.handle(rel).map_err(|e| refuse(explain(e)))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| refuse(e.to_string()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(refuse("it is not a regular file".into()));
    }
    if st.st_nlink != 1 {
        return Err(refuse(format!("it has {} hard links; banger's files have one", st.st_nlink)));
    }
    if st.st_uid != owner.as_raw() && st.st_uid != 0 {
        return Err(refuse(format!("it belongs to uid {}, not to banger's owner", st.st_uid)));
    }
    // One link is no proof where the owner may hard-link root's files: a file linked before root
    // replaced its original by rename has one link again.
    if st.st_uid != owner.as_raw() && !hardlinks_protected() {
        return Err(refuse("it belongs to root, and fs.protected_hardlinks is off".into()));
    }
    Ok(fd)
}

/// Whether the kernel stops users from hard-linking files they do not own.
fn hardlinks_protected() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1")
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
        let t = tempfile::tempdir().unwrap();
        let state = t.path();
        std::fs::create_dir_all(state.join("vms/web")).unwrap();
        std::fs::write(state.join("vms/web/disk.ext4"), b"").unwrap();
        std::fs::write(state.join("secret"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", state.join("vms/web/link")).unwrap();
        std::os::unix::fs::symlink(state.join("vms/web"), state.join("vms/dirlink")).unwrap();
        std::fs::write(state.join("vms/web/twice"), b"").unwrap();
        std::fs::hard_link(state.join("vms/web/twice"), state.join("vms/web/twice2")).unwrap();
        let dir = Dir::open(state).unwrap();
        let me = nix::unistd::geteuid();
        let check = |rel: &str| owned_file(&dir, state, me, &state.join(rel).display().to_string());
        assert!(check("vms/web/disk.ext4").is_ok());
        assert!(check("secret").is_err(), "outside images/kernels/vms");
        assert!(check("vms/web/link").is_err(), "a symlink out");
        assert!(check("vms/dirlink/disk.ext4").is_err(), "a symlinked directory on the way");
        assert!(check("vms/web/../../secret").is_err(), "dot-dot out");
        assert!(check("vms/web").is_err(), "a directory");
        let linked = check("vms/web/twice").unwrap_err();
        assert!(linked.message.contains("hard links"), "{linked:?}");
        assert!(owned_file(&dir, state, me, "/etc/passwd").is_err());
        if me.is_root() {
            // A file of a third uid (neither the owner nor root) is not banger's.
            std::fs::write(state.join("vms/web/theirs"), b"").unwrap();
            nix::unistd::chown(&state.join("vms/web/theirs"), Some(Uid::from_raw(54321)), None).unwrap();
            let theirs = check("vms/web/theirs").unwrap_err();
            assert!(theirs.message.contains("uid 54321"), "{theirs:?}");
        }
    }
}
