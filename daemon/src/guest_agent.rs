//! The guest agent binary (`banger-agent`): read and checked before it goes into a VM's
//! initrd and disk. It runs as the guest's PID 1 before any library is there, so it must be a
//! static x86-64 executable: an ELF asking for a dynamic loader (PT_INTERP) is refused.

use std::io::Read;
use std::path::Path;

use protocol::{Error, ErrorKind};

/// An agent larger than this is not one (the real one is a few MiB).
const MAX_AGENT: u64 = 64 << 20;

const BUILD_HINT: &str = "build it static: `cd guest && cargo build --release` (its .cargo/config.toml sets \
                          +crt-static), then pass it with --agent PATH or BANGER_AGENT, or put it beside \
                          bangerd as banger-agent";

/// The agent's bytes, if it is a static x86-64 ELF executable.
pub fn load(path: &Path) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::new(ErrorKind::NotFound, format!("cannot open the guest agent {}: {e}", path.display()))
            .with_hint(BUILD_HINT)
    })?;
    let mut bytes = vec![];
    file.take(MAX_AGENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::internal(format!("cannot read the guest agent {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_AGENT {
        return Err(refused(path, "it is over 64 MiB"));
    }
    check_static(&bytes).map_err(|why| refused(path, &why))?;
    Ok(bytes)
}

fn refused(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("the guest agent {} cannot run as a guest's init: {why}", path.display()),
    )
    .with_hint(BUILD_HINT)
}

/// An x86-64 ELF executable (ET_EXEC, or ET_DYN for a static PIE) without PT_INTERP.
pub fn check_static(elf: &[u8]) -> Result<(), String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable".into());
    }
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at: usize| {
        elf.get(at..at + 8).and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
    };
    if elf[4] != 2 || u16_at(18) != Some(0x3e) {
        return Err("it is not a 64-bit x86-64 ELF".into());
    }
    if !matches!(u16_at(16), Some(2 | 3)) {
        return Err("it is an ELF, but not an executable".into());
    }
    let bad = || "its program headers lie outside the file".to_string();
    let (phoff, phentsize, phnum) =
        (u64_at(0x20).ok_or_else(bad)?, u16_at(0x36).ok_or_else(bad)?, u16_at(0x38).ok_or_else(bad)?);
    if phentsize < 56 {
        return Err(bad());
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or_else(bad)?;
        let ptype = elf.get(at..at + 4).ok_or_else(bad)?;
        if ptype == 3u32.to_le_bytes() {
            return Err("it is dynamically linked (it names an ELF interpreter, PT_INTERP), and a guest's \
                        init runs before any library is there"
                .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_elf;

    #[test]
    fn a_dynamically_linked_agent_is_refused_with_how_to_build_it() {
        assert!(check_static(&test_elf(0x2000, 1, 0x1000)).is_ok());
        assert!(check_static(&test_elf(0x2000, 3, 0x10)).unwrap_err().contains("dynamically linked"));
        assert!(check_static(b"#!/bin/sh\n").is_err());
        // Debian's own programs are dynamically linked.
        let err = load(Path::new("/bin/true")).unwrap_err();
        assert!(err.message.contains("dynamically linked"), "{err:?}");
        assert!(err.hint.as_deref().is_some_and(|h| h.contains("crt-static")), "{err:?}");
        let err = load(Path::new("/nonexistent/banger-agent")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }
}
