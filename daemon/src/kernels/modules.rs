//! Which kernel modules a guest loads, in which order: the drivers banger's guests need and
//! every module they depend on, dependencies first. Dependencies come from `modules.dep` when
//! the package has one (an installed system's modules directory), else from each module's own
//! `.modinfo` `depends=` (what depmod reads them from; a Debian package ships no modules.dep).

use std::collections::{HashMap, HashSet};

/// The drivers a banger guest needs: MMIO transport, disk, network, console/serial port, vsock.
pub const NEEDED: [&str; 5] =
    ["virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport"];

/// The file name suffixes a module may have, compressed or not.
const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// A module's name from its path: the file name without its suffix, `-` read as `_` (as the
/// kernel does).
pub fn name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    SUFFIXES.iter().find_map(|s| file.strip_suffix(s)).map(|n| n.replace('-', "_"))
}

/// `modules.dep`: module name → the names it depends on.
pub fn parse_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().filter_map(name_of).collect();
            Some((name_of(module.trim())?, deps))
        })
        .collect()
}

/// `modules.builtin`: the names of modules built into the kernel.
pub fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines().filter_map(|l| name_of(l.trim())).collect()
}

/// The `depends=` of a module's `.modinfo` section (an ELF64 relocatable object).
pub fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    if ko.len() < 64 || &ko[..4] != b"\x7fELF" || ko[4] != 2 {
        return Err("it is not a 64-bit ELF module".into());
    }
    let bad = || "its ELF section headers lie outside the file".to_string();
    let u16_at = |at: usize| ko.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at: usize| {
        ko.get(at..at + 8).and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
    };
    let u32_at =
        |at: usize| ko.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28).ok_or_else(bad)?,
        u16_at(0x3a).ok_or_else(bad)?,
        u16_at(0x3c).ok_or_else(bad)?,
        u16_at(0x3e).ok_or_else(bad)?,
    );
    if shentsize < 64 {
        return Err(bad());
    }
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(at)?, u64_at(at + 0x18)?, u64_at(at + 0x20)?))
    };
    let bytes = |off: usize, size: usize| ko.get(off..off.checked_add(size)?);
    let (_, str_off, str_size) = section(shstrndx).ok_or_else(bad)?;
    let names = bytes(str_off, str_size).ok_or_else(bad)?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(bad)?;
        let name = names.get(name..).and_then(|n| n.split(|&c| c == 0).next()).unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let info = bytes(off, size).ok_or_else(bad)?;
        let depends = info.split(|&c| c == 0).find_map(|kv| kv.strip_prefix(b"depends="));
        let depends = String::from_utf8_lossy(depends.unwrap_or_default()).into_owned();
        return Ok(depends.split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")).collect());
    }
    Err("it has no .modinfo section: not a kernel module".into())
}

/// Why no load order could be made.
#[derive(Debug, PartialEq, Eq)]
pub enum OrderError {
    /// A module needed (by the chain shown) is neither in the package nor built in.
    Missing { module: String, chain: Vec<String> },
    /// Modules depend on each other in a cycle (shown closed: a → b → a).
    Cycle(Vec<String>),
    /// A module's dependencies could not be read.
    Unreadable { module: String, why: String },
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Missing { module, chain } if chain.is_empty() => {
                write!(f, "the module {module} is neither in the package nor built into the kernel")
            }
            OrderError::Missing { module, chain } => write!(
                f,
                "the module {module} (needed by {}) is neither in the package nor built into the kernel",
                chain.join(" ← ")
            ),
            OrderError::Cycle(chain) => {
                write!(f, "modules depend on each other in a cycle: {}", chain.join(" → "))
            }
            OrderError::Unreadable { module, why } => write!(f, "cannot read the module {module}: {why}"),
        }
    }
}

/// A module's dependencies by name: `Ok(None)` when the package has no such module.
pub type Deps<'a> = dyn FnMut(&str) -> Result<Option<Vec<String>>, String> + 'a;

/// The modules to load for `wanted`, each after everything it depends on. `deps(name)` gives
/// a module's dependencies, `None` if the package has no such module; built-in ones are left
/// out (and not followed).
pub fn load_order(
    wanted: &[&str],
    builtin: &HashSet<String>,
    deps: &mut Deps<'_>,
) -> Result<Vec<String>, OrderError> {
    let mut order = vec![];
    let mut done = HashSet::new();
    let mut path = vec![];
    for w in wanted {
        visit(w, builtin, deps, &mut path, &mut done, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    builtin: &HashSet<String>,
    deps: &mut Deps<'_>,
    path: &mut Vec<String>,
    done: &mut HashSet<String>,
    order: &mut Vec<String>,
) -> Result<(), OrderError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if let Some(at) = path.iter().position(|p| p == name) {
        let mut cycle = path[at..].to_vec();
        cycle.push(name.to_string());
        return Err(OrderError::Cycle(cycle));
    }
    let list =
        deps(name).map_err(|why| OrderError::Unreadable { module: name.into(), why })?.ok_or_else(|| {
            OrderError::Missing { module: name.into(), chain: path.iter().rev().cloned().collect() }
        })?;
    path.push(name.to_string());
    for d in &list {
        visit(d, builtin, deps, path, done, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> HashMap<String, Vec<String>> {
        parse_dep(text)
    }

    fn order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, OrderError> {
        let t = table(dep);
        load_order(wanted, &parse_builtin(builtin), &mut |n| Ok(t.get(n).cloned()))
    }

    #[test]
    fn dependencies_come_first_once_each() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n";
        assert_eq!(
            order(dep, "", &["virtio_blk", "virtio_net"]).unwrap(),
            ["virtio_ring", "virtio", "virtio_blk", "failover", "net_failover", "virtio_net"]
        );
    }

    #[test]
    fn built_in_modules_are_skipped_with_their_dependencies() {
        let dep = "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\n";
        assert_eq!(order(dep, "kernel/b.ko\n", &["a"]).unwrap(), ["a"]);
        assert_eq!(order("", "kernel/x-y.ko\n", &["x_y"]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_cycle_is_an_error_naming_it() {
        let dep = "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\n";
        let err = order(dep, "", &["a"]).unwrap_err();
        assert_eq!(err, OrderError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        assert!(err.to_string().contains("a → b → c → a"), "{err}");
    }

    #[test]
    fn a_missing_dependency_is_an_error_naming_who_needs_it() {
        let err = order("kernel/a.ko: kernel/b.ko\n", "", &["a"]).unwrap_err();
        assert!(matches!(&err, OrderError::Missing { module, .. } if module == "b"));
        assert!(err.to_string().contains("the module b (needed by a)"), "{err}");
        let err = order("", "", &["virtio_blk"]).unwrap_err();
        assert!(err.to_string().starts_with("the module virtio_blk is neither"), "{err}");
    }

    #[test]
    fn names_come_from_paths_with_dashes_as_underscores() {
        assert_eq!(
            name_of("kernel/net/vmw-vsock/vmw_vsock_virtio-transport.ko.zst").as_deref(),
            Some("vmw_vsock_virtio_transport")
        );
        assert_eq!(name_of("modules.dep"), None);
    }

    /// A minimal relocatable ELF with a `.modinfo` section.
    pub fn module_with(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut ko = vec![0u8; 64];
        ko[..4].copy_from_slice(b"\x7fELF");
        ko[4] = 2;
        let info_off = ko.len();
        ko.extend(modinfo);
        let str_off = ko.len();
        ko.extend(shstr);
        let shoff = ko.len();
        ko[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        ko[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        ko[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        ko[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        for (name, off, size) in
            [(0u32, 0usize, 0usize), (1, info_off, modinfo.len()), (10, str_off, shstr.len())]
        {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            ko.extend(sh);
        }
        ko
    }

    #[test]
    fn modinfo_gives_the_dependencies() {
        let ko = module_with(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        assert_eq!(modinfo_depends(&ko).unwrap(), ["virtio", "virtio_ring"]);
        assert_eq!(modinfo_depends(&module_with(b"depends=\0")).unwrap(), Vec::<String>::new());
        assert!(modinfo_depends(b"not elf").is_err());
        let mut broken = module_with(b"depends=a\0");
        broken[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo_depends(&broken).unwrap_err().contains("outside the file"));
    }
}
