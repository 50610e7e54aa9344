//! A VM's initrd: its kernel's `modules.cpio` followed by a cpio holding `/init`, the guest
//! agent (Linux unpacks concatenated archives as one).

use std::path::Path;

use super::cpio::Cpio;

/// The length of the `/init` archive for an agent of `agent_len` bytes.
pub fn init_cpio_len(agent_len: u64) -> u64 {
    // The header (110 bytes) and "init\0" padded to 4, the data padded to 4, the trailer's
    // header and "TRAILER!!!\0" padded to 4.
    116 + agent_len.div_ceil(4) * 4 + 124
}

/// Writes `out` (a new file) as `modules_cpio` followed by `/init` = `agent`, mode 0755, and
/// syncs it. Returns its length.
pub fn write(modules_cpio: &Path, agent: &[u8], out: &Path) -> Result<u64, String> {
    let mut modules = std::fs::File::open(modules_cpio)
        .map_err(|e| format!("cannot open the kernel's modules ({}): {e}", modules_cpio.display()))?;
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let written = std::io::copy(&mut modules, &mut w)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
        .and_then(|n| {
            let mut init = Cpio::new(&mut w);
            init.file("init", 0o755, agent)
                .and_then(|()| init.finish())
                .map(|(_, m)| n + m)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))
        })?;
    let file = w.into_inner().map_err(|e| format!("cannot write {}: {}", out.display(), e.error()))?;
    file.sync_all().map_err(|e| format!("cannot sync {}: {e}", out.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpio::{Entry, read_all};

    #[test]
    fn the_initrd_is_the_modules_then_init() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Cpio::new(vec![]);
        m.file("/banger/modules", 0o644, b"").unwrap();
        let modules = dir.path().join("modules.cpio");
        std::fs::write(&modules, m.finish().unwrap().0).unwrap();
        for agent_len in [0usize, 1, 5, 4096] {
            let out = dir.path().join(format!("initrd{agent_len}"));
            let agent = vec![7u8; agent_len];
            let len = write(&modules, &agent, &out).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(bytes.len() as u64, len);
            let modules_len = std::fs::metadata(&modules).unwrap().len();
            assert_eq!(len, modules_len + init_cpio_len(agent_len as u64), "agent of {agent_len} bytes");
            let entries = read_all(&bytes).unwrap();
            assert_eq!(entries.last(), Some(&Entry { name: "init".into(), mode: 0o100755, data: agent }));
            assert_eq!(entries[0].name, "banger");
        }
        assert!(write(&modules, b"", &dir.path().join("initrd0")).is_err(), "never over a file");
    }
}
