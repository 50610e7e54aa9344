//! KernelStore: owns `kernels/<name>/` (`vmlinux` and `kernel.json`). Takes `ImportKernel`,
//! `ListKernels`, `RemoveKernel`, `KernelPath`, and `Describe`/`Control` from the supervisor.
//! All file work runs on blocking threads.

use std::io::Read;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use protocol::vm::KernelInfo;
use protocol::{Error, ErrorKind};
use slog::Logger;

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::fsutil::{blocking, now, write_atomic};
use crate::image_cache::images::validate_name;

/// Kernels bigger than this are not kernels.
const MAX_KERNEL: u64 = 512 << 20;

#[derive(Message)]
#[rtype(result = "Result<KernelInfo, Error>")]
pub struct ImportKernel {
    pub name: String,
    pub source: String,
    pub input: std::fs::File,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<KernelInfo>, Error>")]
pub struct ListKernels;

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RemoveKernel(pub String);

/// The path of a kernel's ELF, if it exists.
#[derive(Message)]
#[rtype(result = "Result<PathBuf, Error>")]
pub struct KernelPath(pub String);

pub struct KernelStore {
    dir: PathBuf,
    guard: ChildGuard,
    _log: Logger,
}

impl KernelStore {
    pub fn new(cx: ChildCtx) -> Self {
        KernelStore { dir: cx.config.layout.state_dir.join("kernels"), guard: cx.guard, _log: cx.log }
    }
}

fn invalid(why: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("not a kernel banger can boot: {why}"))
}

/// Whether `bytes` is a bzImage (the x86 boot protocol's "HdrS" at 0x202).
fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x202..0x206) == Some(b"HdrS")
}

/// The ELF vmlinux inside a bzImage: its payload (after the setup sectors, at the header's
/// `payload_offset`, `payload_length` long), decompressed as gzip, xz or zstd.
pub fn extract_bzimage(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let u32_at =
        |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let setup_sects = match bytes.get(0x1f1) {
        Some(0) => 4,
        Some(n) => *n as usize,
        None => return Err(invalid("a truncated bzImage")),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248).ok_or_else(|| invalid("a truncated bzImage"))?;
    let payload = bytes
        .get(start..start + u32_at(0x24c).unwrap_or(0))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("a bzImage whose payload lies outside the file"))?;
    let mut out = vec![];
    let limited = |r: &mut dyn Read, out: &mut Vec<u8>| r.take(MAX_KERNEL + 1).read_to_end(out).map(|_| ());
    let decoded = if payload.starts_with(&[0x1f, 0x8b]) {
        limited(&mut flate2::read::GzDecoder::new(payload), &mut out)
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(payload).and_then(|mut d| limited(&mut d, &mut out))
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(payload), &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))
    } else {
        return Err(invalid(
            "a bzImage compressed with a method banger does not read (it reads gzip, xz and zstd)",
        )
        .with_hint("extract it with the kernel's scripts/extract-vmlinux, then import that"));
    };
    decoded.map_err(|e| invalid(&format!("its bzImage payload does not decompress: {e}")))?;
    if out.len() as u64 > MAX_KERNEL {
        return Err(invalid("its payload decompresses to over 512 MiB"));
    }
    Ok(out)
}

/// Checks that `head` starts an x86-64 ELF executable; explains what it is otherwise.
pub fn check_elf(head: &[u8]) -> Result<(), Error> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err(invalid("it is not an ELF file"));
    }
    if head[4] != 2 || u16::from_le_bytes([head[18], head[19]]) != 0x3e {
        return Err(invalid("it is not a 64-bit x86-64 ELF"));
    }
    Ok(())
}

fn import(dir: &Path, name: &str, source: &str, input: std::fs::File) -> Result<KernelInfo, Error> {
    validate_name(name)?;
    let target = dir.join(name);
    if target.exists() {
        return Err(Error::new(ErrorKind::Conflict, format!("a kernel named {name:?} exists"))
            .with_hint(format!("remove it first: banger kernel rm {name}")));
    }
    let mut bytes = vec![];
    input
        .take(MAX_KERNEL + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::internal(format!("cannot read the kernel: {e}")))?;
    if bytes.len() as u64 > MAX_KERNEL {
        return Err(Error::new(ErrorKind::InvalidInput, "the file is over 512 MiB; that is not a kernel"));
    }
    // A bzImage is unpacked to the ELF vmlinux Firecracker boots.
    let bytes = if is_bzimage(&bytes) { extract_bzimage(&bytes)? } else { bytes };
    check_elf(&bytes)?;
    let staging = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::internal(e.to_string()))?;
    let info =
        KernelInfo { name: name.into(), bytes: bytes.len() as u64, added_at: now(), source: source.into() };
    let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::internal(e.to_string()))?;
    let written = write_atomic(&staging.join("vmlinux"), &bytes)
        .and_then(|()| write_atomic(&staging.join("kernel.json"), &json))
        .and_then(|()| std::fs::rename(&staging, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(Error::internal(format!("cannot store the kernel: {e}")));
    }
    Ok(info)
}

fn list(dir: &Path) -> Result<Vec<KernelInfo>, Error> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(vec![]) };
    let mut out: Vec<KernelInfo> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path().join("kernel.json")).ok()?).ok())
        .collect();
    out.sort_by(|a: &KernelInfo, b| a.name.cmp(&b.name));
    Ok(out)
}

fn path(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    validate_name(name)?;
    let p = dir.join(name).join("vmlinux");
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::new(ErrorKind::NotFound, format!("no kernel named {name:?}"))
            .with_hint(format!("import one: banger kernel import PATH --name {name}")))
    }
}

impl Actor for KernelStore {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.guard.started();
    }
}

impl Handler<ImportKernel> for KernelStore {
    type Result = ResponseFuture<Result<KernelInfo, Error>>;
    fn handle(&mut self, msg: ImportKernel, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || import(&dir, &msg.name, &msg.source, msg.input)))
    }
}

impl Handler<ListKernels> for KernelStore {
    type Result = ResponseFuture<Result<Vec<KernelInfo>, Error>>;
    fn handle(&mut self, _: ListKernels, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || list(&dir)))
    }
}

impl Handler<KernelPath> for KernelStore {
    type Result = ResponseFuture<Result<PathBuf, Error>>;
    fn handle(&mut self, KernelPath(name): KernelPath, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || path(&dir, &name)))
    }
}

impl Handler<RemoveKernel> for KernelStore {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, RemoveKernel(name): RemoveKernel, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || {
            path(&dir, &name)?;
            std::fs::remove_dir_all(dir.join(&name))
                .map_err(|e| Error::internal(format!("cannot remove kernel {name}: {e}")))
        }))
    }
}

impl Handler<Describe> for KernelStore {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        Some(self.dir.display().to_string())
    }
}

crate::handle_control!(KernelStore);

/// The error for a request that needs the kernel store while it is restarting.
pub fn unavailable() -> Error {
    Error::new(ErrorKind::Unavailable, "the kernel store is restarting").with_hint("retry in a moment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x86_64_elf_kernels_are_accepted() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 0x3e;
        assert!(check_elf(&elf).is_ok());
        let mut arm = elf.clone();
        arm[18] = 0xb7;
        assert!(check_elf(&arm).is_err());
        assert!(check_elf(b"#!/bin/sh").is_err());
    }

    /// A bzImage as the boot protocol lays it out: setup sectors, then the protected-mode part
    /// whose header fields point at the compressed payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 2 * 512 + 64];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&64u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(payload);
        bz
    }

    #[test]
    fn a_bzimage_is_unpacked_to_its_elf() {
        use std::io::Write;
        let mut elf = vec![0u8; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 0x3e;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        assert_eq!(extract_bzimage(&bzimage(&gz.finish().unwrap())).unwrap(), elf);
        assert_eq!(extract_bzimage(&bzimage(&zstd::encode_all(&elf[..], 3).unwrap())).unwrap(), elf);
        let mut xz = vec![];
        lzma_rs::xz_compress(&mut &elf[..], &mut xz).unwrap();
        assert_eq!(extract_bzimage(&bzimage(&xz)).unwrap(), elf);
        let err = extract_bzimage(&bzimage(b"BZh91AY&SY")).unwrap_err();
        assert!(err.message.contains("gzip, xz and zstd"), "{err:?}");
        let mut truncated = bzimage(b"\x1f\x8b\x08");
        truncated.truncate(0x260);
        assert!(extract_bzimage(&truncated).is_err());
    }
}
