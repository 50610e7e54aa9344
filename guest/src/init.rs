//! The initrd's `/init`: load the virtio modules, wait for the root disk, mount it and switch
//! to it (as switch_root(8): the initramfs's files are freed, /dev, /proc and /sys move along),
//! then the same process goes on as the real system's PID 1.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use crate::cmdline::BootConfig;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const ROOT_WAIT: Duration = Duration::from_secs(10);
const NEW_ROOT: &str = "/newroot";

/// Whether `/` is the initramfs (a kernel started without an initrd runs us on the real root).
pub fn in_initramfs() -> bool {
    nix::sys::statfs::statfs("/").is_ok_and(|s| {
        let t = s.filesystem_type().0;
        t == RAMFS_MAGIC || t == TMPFS_MAGIC
    })
}

/// When the modules were loaded and the root switched to (µs of `CLOCK_BOOTTIME`).
pub struct Times {
    pub modules_us: u64,
    pub root_us: u64,
}

/// Loads the modules, mounts the root disk and switches to it. On error the initramfs is
/// still `/` (the agent then serves from there, so the host can see what went wrong).
pub fn switch_root(config: &BootConfig) -> Result<Times, String> {
    let failed = crate::modules::load_all(Path::new("/banger/modules"));
    if failed > 0 {
        crate::log!("{failed} module(s) failed to load");
    }
    let modules_us = crate::sys::boottime_us();
    mount_root(config)?;
    move_into_root()?;
    Ok(Times { modules_us, root_us: crate::sys::boottime_us() })
}

fn mount_root(config: &BootConfig) -> Result<(), String> {
    let _ = std::fs::create_dir_all(NEW_ROOT);
    let deadline = Instant::now() + ROOT_WAIT;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        if Path::new(&config.root).exists() {
            match mount(
                Some(config.root.as_str()),
                NEW_ROOT,
                Some(config.rootfstype.as_str()),
                MsFlags::empty(),
                None::<&str>,
            ) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        } else {
            last = "the device did not appear".into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("cannot mount the root disk {} ({}): {last}", config.root, config.rootfstype))
}

fn move_into_root() -> Result<(), String> {
    let old_root = std::fs::File::open("/").map_err(|e| format!("cannot open /: {e}"))?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = mount(Some(dir), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
            crate::log!("cannot move {dir} into the root: {e}; detaching it");
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::chdir(NEW_ROOT).map_err(|e| format!("cannot enter {NEW_ROOT}: {e}"))?;
    // Free the initramfs (it is memory): everything on its filesystem, not the new root.
    free_initramfs(&old_root);
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("cannot move the root to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("cannot chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("cannot chdir /: {e}"))?;
    Ok(())
}

/// Removes the initramfs's files (never crossing into another filesystem), as switch_root(8).
fn free_initramfs(old_root: &std::fs::File) {
    use std::os::unix::fs::MetadataExt;
    if !in_initramfs() {
        return;
    }
    let Ok(root_dev) = old_root.metadata().map(|m| m.dev()) else { return };
    let Ok(entries) = std::fs::read_dir("/") else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != root_dev || path == Path::new(NEW_ROOT) {
            continue;
        }
        let _ = if meta.is_dir() { remove_tree(&path, root_dev) } else { std::fs::remove_file(&path) };
    }
}

fn remove_tree(dir: &Path, dev: u64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != dev {
            continue; // a mount point: leave it
        }
        let _ = if meta.is_dir() { remove_tree(&path, dev) } else { std::fs::remove_file(&path) };
    }
    std::fs::remove_dir(dir)
}
