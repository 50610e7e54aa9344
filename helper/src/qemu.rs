//! QEMU (`-M microvm`) confined as the jailer confines Firecracker: chrooted into its own jail
//! on the jails' tmpfs, which holds only its kernel, initrd and disk and, read-only, `/usr` (QEMU
//! is dynamically linked and reads its firmware from there); the owner's uid and gid with no
//! supplementary groups and no new privileges; the VM's cgroups; no descriptor but its console
//! and its tap. Its command line is built here from checked fields only; the daemon never
//! writes one.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::{Gid, Uid};
use protocol::helper::{LaunchSpec, QemuSpec};
use protocol::{Error, ErrorKind};

/// The paths QEMU sees in its jail. The sockets live in `run/`, the one directory its uid owns:
/// the jail root stays root's, so nothing can be planted where the helper mounts.
pub const KERNEL: &str = "bzImage";
pub const INITRD: &str = "initrd";
pub const DISK: &str = "disk.ext4";
pub const RUN: &str = "run";
pub const PID_FILE: &str = "qemu.pid";

/// TCG's translation cache (QEMU's default is 1 GiB, which the VM's memory limit would have to
/// allow for).
const TB_SIZE_MIB: u64 = 128;
/// What QEMU needs beyond the guest's memory: the translation cache, and itself.
pub const OVERHEAD_MIB: u64 = TB_SIZE_MIB + 128;

/// The descriptor number QEMU finds its tap on.
const TAP_FD: RawFd = 3;
/// The longest kernel command line accepted (Linux's own limit on x86 is 2048).
const MAX_CMDLINE: usize = 2048;

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Checks what the daemon sent: the command line is printable ASCII of bounded length (it goes
/// to QEMU as one argument, where a comma would start another option), the MAC is a MAC.
pub fn validate(spec: &QemuSpec) -> Result<(), Error> {
    let printable = spec.cmdline.bytes().all(|b| (b' '..=b'~').contains(&b));
    if spec.cmdline.len() > MAX_CMDLINE || !printable || spec.cmdline.contains(',') {
        return Err(invalid(format!(
            "the kernel command line must be at most {MAX_CMDLINE} printable ASCII bytes without commas"
        )));
    }
    if let Some(mac) = &spec.mac {
        let parts: Vec<&str> = mac.split(':').collect();
        let ok = parts.len() == 6
            && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(invalid(format!("{mac:?} is not a MAC address")));
        }
    }
    if spec.tap.is_some() && spec.mac.is_none() {
        return Err(invalid("a tap needs a MAC address".into()));
    }
    Ok(())
}

/// QEMU's arguments. Paths are inside the jail.
pub fn args(launch: &LaunchSpec, spec: &QemuSpec, tap: bool) -> Vec<String> {
    let accel = if spec.kvm { "kvm".to_string() } else { format!("tcg,tb-size={TB_SIZE_MIB}") };
    let cpu = if spec.kvm { "host" } else { "max" };
    let mut args: Vec<String> = [
        "-M",
        "microvm,rtc=on",
        "-accel",
        &accel,
        "-cpu",
        cpu,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        // No spawning, no privilege changes, no obsolete syscalls: QEMU's own seccomp filter.
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("/{KERNEL}"));
    if launch.initrd.is_some() {
        args.extend(["-initrd".into(), format!("/{INITRD}")]);
    }
    args.extend(["-append".into(), spec.cmdline.clone()]);
    args.extend(["-m".into(), launch.memory_mib.to_string(), "-smp".into(), launch.cpus.to_string()]);
    if launch.disk.is_some() {
        args.extend([
            "-drive".into(),
            format!("id=root,file=/{DISK},format=raw,if=none,discard=unmap"),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
        ]);
    }
    if let (true, Some(mac)) = (tap, &spec.mac) {
        args.extend([
            "-netdev".into(),
            format!("tap,id=net0,fd={TAP_FD}"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]);
    }
    args.extend([
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!("socket,id=agent,path=/{RUN}/agent.sock,server=on,wait=off"),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={}", protocol::agent::PORT_NAME),
        "-qmp".into(),
        format!("unix:/{RUN}/qmp.sock,server=on,wait=off"),
    ]);
    args
}

/// Opens the VM's tap (made by `CreateTap`, owned by the owner) for QEMU, as root, so QEMU needs
/// no `/dev/net/tun` in its jail.
pub fn open_tap(name: &str) -> Result<OwnedFd, Error> {
    let fail = |e: std::io::Error| Error::internal(format!("cannot open the tap {name}: {e}"));
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(fail)?;
    // struct ifreq: the name, then the flags.
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return Err(invalid(format!("{name:?} is not an interface name")));
    }
    ifr[..bytes.len()].copy_from_slice(bytes);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is sized for (40 bytes).
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if r < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(tun))
}

/// What the host lends a QEMU jail, bound in read-only: (host path, path in the jail, is a
/// directory). `/dev/kvm` is not lent but made anew, owned by the VM's uid (see `jail.rs`).
pub const LENT: [(&str, &str, bool); 3] =
    [("/usr", "usr", true), ("/etc/ld.so.cache", "etc/ld.so.cache", false), ("/dev/null", "dev/null", false)];
/// Links a merged-/usr system has at its root, made in the jail the same.
pub const LINKS: [(&str, &str); 3] = [("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")];

/// What the child does between fork and exec, prepared before the fork (no allocation after).
pub struct Confinement {
    /// The jail root, as `/proc/self/fd/N` of a descriptor the child inherits.
    root: CString,
    /// cgroup files the child writes "0" to, joining them (v1 `tasks`, v2 `cgroup.procs`).
    cgroups: Vec<CString>,
    tap: Option<RawFd>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl Confinement {
    /// `root` is the jail root's descriptor; it must stay open until the child has run.
    pub fn new(
        root: RawFd,
        cgroups: Vec<CString>,
        tap: Option<RawFd>,
        uid: Uid,
        gid: Gid,
    ) -> Result<Self, Error> {
        let root =
            CString::new(format!("/proc/self/fd/{root}")).map_err(|_| Error::internal("NUL in a path"))?;
        Ok(Confinement { root, cgroups, tap, uid: uid.as_raw(), gid: gid.as_raw() })
    }

    /// Installs the confinement on `command`.
    pub fn apply(self, command: &mut Command) {
        // SAFETY: the hook runs in the forked child before exec. It only makes system calls on
        // C strings built before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || self.enter());
        }
    }

    fn enter(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: plain system calls on valid, NUL-terminated strings and integers; each result
        // is checked.
        unsafe {
            for path in &self.cgroups {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            // Its own network (it reaches the world through the tap's descriptor only), IPC and
            // host name.
            check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS))?;
            // Entered by descriptor: the path to the jail lies in the owner's state dir.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::chroot(c".".as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            // dup2 clears close-on-exec on the copy (the original is above TAP_FD, never it).
            if let Some(tap) = self.tap {
                check(libc::dup2(tap, TAP_FD))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // Every descriptor but stdio (the console) and the tap is closed at exec.
            let first = if self.tap.is_some() { TAP_FD + 1 } else { TAP_FD } as u32;
            check(libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC)
                as libc::c_int)?;
        }
        Ok(())
    }
}

/// The tap, at a number above `TAP_FD` and close-on-exec like every other descriptor of the
/// helper's (other children must not inherit it): only QEMU's `dup2` onto `TAP_FD` passes it.
pub fn passable(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we then own.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if dup < 0 {
        return Err(Error::internal(format!("cannot pass the tap: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QemuSpec {
        QemuSpec {
            cmdline: "console=ttyS0 banger.ip=172.30.0.5/24".into(),
            tap: Some("bgt0".into()),
            mac: Some("06:00:ac:1e:00:05".into()),
            kvm: false,
        }
    }

    #[test]
    fn hostile_fields_are_refused() {
        assert!(validate(&spec()).is_ok());
        for cmdline in ["a,b", "a\nb", &"x".repeat(3000), "init=/x\u{7f}"] {
            assert!(validate(&QemuSpec { cmdline: cmdline.into(), ..spec() }).is_err(), "{cmdline:?}");
        }
        for mac in ["06:00:ac:1e:00", "06:00:ac:1e:00:05,id=x", "zz:00:00:00:00:00"] {
            assert!(validate(&QemuSpec { mac: Some(mac.into()), ..spec() }).is_err(), "{mac}");
        }
    }

    #[test]
    fn the_command_line_names_only_jail_paths() {
        let launch = LaunchSpec {
            vm: "web".into(),
            kernel: "/state/kernels/default/bzImage".into(),
            initrd: Some("/state/vms/web/initrd".into()),
            disk: Some("/state/vms/web/disk.ext4".into()),
            cpus: 2,
            memory_mib: 256,
            config: None,
            qemu: Some(spec()),
        };
        let args = args(&launch, &spec(), true);
        let text = args.join(" ");
        assert!(text.contains("-accel tcg,tb-size=128 -cpu max"), "{text}");
        assert!(text.contains("-kernel /bzImage -initrd /initrd"), "{text}");
        assert!(text.contains("file=/disk.ext4"), "{text}");
        assert!(text.contains("tap,id=net0,fd=3"), "{text}");
        assert!(text.contains("name=org.banger.agent"), "{text}");
        assert!(!text.contains("/state/"), "host paths never reach QEMU: {text}");
    }
}
