//! Kernel modules from the initrd: `/banger/modules` lists them, one absolute path a line, in
//! load order (dependencies first). Each is loaded with `finit_module`; compressed ones
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel to decompress
//! (`MODULE_INIT_COMPRESSED_FILE`, which needs a kernel built with module decompression).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `MODULE_INIT_COMPRESSED_FILE` (linux/module.h).
const COMPRESSED_FILE: libc::c_int = 4;

/// The module paths listed in `text` (blank lines, comments and relative paths skipped).
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines().map(str::trim).filter(|l| l.starts_with('/')).map(PathBuf::from).collect()
}

fn compressed(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "xz" | "zst" | "gz"))
}

/// Loads one module; one that is already loaded (or built in) counts as loaded.
pub fn load(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let flags = if compressed(path) { COMPRESSED_FILE } else { 0 };
    // SAFETY: finit_module reads the module from a descriptor we own and an empty C string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), flags) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(()),
        _ => Err(format!("{}: {e}", path.display())),
    }
}

/// Loads every module `list` names, in order; returns how many failed (each is logged).
pub fn load_all(list: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(list) else { return 0 };
    let mut failed = 0;
    for path in parse_list(&text) {
        if let Err(e) = load(&path) {
            crate::log!("cannot load module {e}");
            failed += 1;
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_absolute_paths_in_order() {
        let list = "/lib/modules/6.1.0/kernel/drivers/virtio/virtio_mmio.ko\n\n# comment\n  \
                    /lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko.xz  \nrelative.ko\n";
        assert_eq!(
            parse_list(list),
            vec![
                PathBuf::from("/lib/modules/6.1.0/kernel/drivers/virtio/virtio_mmio.ko"),
                PathBuf::from("/lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko.xz"),
            ]
        );
    }

    #[test]
    fn compressed_modules_are_recognised() {
        assert!(compressed(Path::new("/m/a.ko.xz")));
        assert!(compressed(Path::new("/m/a.ko.zst")));
        assert!(!compressed(Path::new("/m/a.ko")));
    }

    #[test]
    fn a_missing_module_is_an_error_not_a_crash() {
        assert!(load(Path::new("/no/such/module.ko")).unwrap_err().contains("/no/such/module.ko"));
    }
}
