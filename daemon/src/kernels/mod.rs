//! KernelStore: owns `kernels/<name>/`: `vmlinux` (ELF, Firecracker), `bzImage` (QEMU),
//! `modules.cpio` (the guest's modules, the first part of every VM's initrd) and
//! `kernel.json`. Takes `ImportKernel`, `ListKernels`, `RemoveKernel`,
//! `GetKernelFiles`, and `Describe`/`Control` from the supervisor. All file work runs on blocking
//! threads; an import is made in a scratch directory and renamed into place whole.

mod archive;
pub mod cpio;
mod import;
pub mod initrd;
mod modules;

use std::path::{Path, PathBuf};

use actix::prelude::*;
use protocol::vm::KernelInfo;
use protocol::{Error, ErrorKind};
use slog::Logger;

use crate::child::{ChildCtx, ChildGuard, Describe};
use crate::fsutil::{blocking, now, write_atomic};
use crate::image_cache::images::validate_object_name;

fn validate_name(name: &str) -> Result<(), Error> {
    validate_object_name("kernel", name)
}

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

/// Every file a kernel is kept as: what a VMM boots and what a VM's initrd starts with.
#[derive(Message)]
#[rtype(result = "Result<KernelFiles, Error>")]
pub struct GetKernelFiles(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// The ELF (Firecracker boots it); every kernel has one.
    pub vmlinux: PathBuf,
    /// The bzImage (QEMU boots it), for kernels imported from one.
    pub bzimage: Option<PathBuf>,
    /// The guest's modules as a newc cpio; a VM's initrd is this followed by `/init`
    /// ([`initrd::write`]). `None`: the kernel needs no initrd (it boots `init=/.banger/agent`).
    pub modules_cpio: Option<PathBuf>,
    pub release: Option<String>,
}

pub struct KernelStore {
    dir: PathBuf,
    /// The guest agent, whose size counts in each kernel's initrd.
    agent: PathBuf,
    guard: ChildGuard,
    log: Logger,
    /// What was made of unreadable metadata, for `daemon status`.
    recovered: Vec<String>,
}

impl KernelStore {
    pub fn new(cx: ChildCtx) -> Self {
        KernelStore {
            dir: cx.config.layout.state_dir.join("kernels"),
            agent: cx.config.agent.clone(),
            guard: cx.guard,
            log: cx.log,
            recovered: vec![],
        }
    }
}

/// The KernelStore's own failures, turned into the wire's [`Error`] in one place.
#[derive(Debug)]
pub enum KernelError {
    /// The file is not a kernel banger can boot, and why.
    NotBootable(String),
    TooLarge,
    Exists(String),
    NotFound(String),
    /// A file operation failed: what was being done, and the error.
    Io(String),
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        match e {
            KernelError::NotBootable(why) => {
                Error::new(ErrorKind::InvalidInput, format!("not a kernel banger can boot: {why}")).with_hint(
                    "import an x86-64 vmlinux (ELF), a bzImage (with --modules /lib/modules/RELEASE for \
                     its modules), or a Debian linux-image-*.deb",
                )
            }
            KernelError::TooLarge => Error::new(
                ErrorKind::InvalidInput,
                "the file is over the size limit (a kernel 512 MiB, a package 1 GiB); that is not a kernel",
            ),
            KernelError::Exists(name) => {
                Error::new(ErrorKind::Conflict, format!("a kernel named {name:?} exists"))
                    .with_hint(format!("remove it first: banger kernel rm {name}"))
            }
            KernelError::NotFound(name) => {
                Error::new(ErrorKind::NotFound, format!("no kernel named {name:?}")).with_hint(format!(
                    "import one: banger kernel import PATH --name {name}, PATH a linux-image-*.deb, \
                         a bzImage or a vmlinux (`scripts/dev kernel` fetches Debian's; see `banger kernel \
                         import --help`)"
                ))
            }
            KernelError::Io(what) => Error::internal(what),
        }
    }
}

fn invalid(why: &str) -> Error {
    KernelError::NotBootable(why.to_string()).into()
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
    if archive::Compression::sniff(payload) == archive::Compression::None {
        return Err(invalid(
            "a bzImage compressed with a method banger does not read (it reads gzip, xz, zstd and lz4)",
        )
        .with_hint("extract it with the kernel's scripts/extract-vmlinux, then import that"));
    }
    let mut out = vec![];
    let decoded = archive::unpack(&mut &payload[..], &mut out, MAX_KERNEL).map_err(|e| match e {
        archive::Unpack::TooLarge => "it decompresses to over 512 MiB".to_string(),
        archive::Unpack::Bad(why) => why,
    });
    decoded.map_err(|e| invalid(&format!("its bzImage payload does not decompress: {e}")))?;
    Ok(out)
}

/// Checks that `elf` is an x86-64 ELF executable a VMM can load: at least one loadable
/// segment, each lying inside the file. Explains what it is otherwise.
pub fn check_elf(elf: &[u8]) -> Result<(), Error> {
    if elf.len() < 20 || &elf[..4] != b"\x7fELF" {
        return Err(invalid("it is not an ELF file"));
    }
    if elf[4] != 2 || u16::from_le_bytes([elf[18], elf[19]]) != 0x3e {
        return Err(invalid("it is not a 64-bit x86-64 ELF"));
    }
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at: usize| {
        elf.get(at..at + 8).and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
    };
    let truncated = || invalid("its ELF header is truncated");
    if u16_at(16).ok_or_else(truncated)? != 2 {
        return Err(invalid("it is an ELF, but not an executable (a kernel's vmlinux is ET_EXEC)"));
    }
    let (phoff, phentsize, phnum) = (
        u64_at(0x20).ok_or_else(truncated)?,
        u16_at(0x36).ok_or_else(truncated)?,
        u16_at(0x38).ok_or_else(truncated)?,
    );
    let mut loadable = 0;
    for i in 0..phnum {
        let at = phentsize.checked_mul(i).and_then(|o| o.checked_add(phoff)).filter(|_| phentsize >= 56);
        let ph = at
            .and_then(|at| elf.get(at..at.checked_add(56)?))
            .ok_or_else(|| invalid("its program headers lie outside the file"))?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 1 {
            continue;
        }
        let field =
            |o: usize| usize::try_from(u64::from_le_bytes(ph[o..o + 8].try_into().unwrap_or([0xff; 8]))).ok();
        let inside = field(8)
            .zip(field(32))
            .and_then(|(off, size)| off.checked_add(size))
            .is_some_and(|end| end <= elf.len());
        if !inside {
            return Err(invalid("a loadable segment lies outside the file (truncated?)"));
        }
        loadable += 1;
    }
    if loadable == 0 {
        return Err(invalid("its ELF has no loadable segment"));
    }
    Ok(())
}

fn import(dir: &Path, name: &str, source: &str, input: std::fs::File) -> Result<KernelInfo, Error> {
    validate_name(name)?;
    let target = dir.join(name);
    if target.exists() {
        return Err(KernelError::Exists(name.into()).into());
    }
    let store =
        |e: std::io::Error| -> Error { KernelError::Io(format!("cannot store the kernel: {e}")).into() };
    std::fs::create_dir_all(dir).map_err(store)?;
    // Scratch (unpacked package data) and the kernel's directory in the making; removed when
    // this returns, whatever happened.
    let scratch = tempfile::Builder::new().prefix(".tmp-").tempdir_in(dir).map_err(store)?;
    let got = import::read(input, scratch.path())?;
    let staging = scratch.path().join("kernel");
    std::fs::create_dir(&staging).map_err(store)?;
    let info = KernelInfo {
        name: name.into(),
        bytes: got.vmlinux.len() as u64,
        added_at: now(),
        source: source.into(),
        release: got.release.clone(),
        vmlinux: true,
        bzimage: got.bzimage.is_some(),
        initrd_bytes: got.modules.as_ref().map(|(cpio, _)| cpio.len() as u64),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::internal(e.to_string()))?;
    write_atomic(&staging.join("vmlinux"), &got.vmlinux).map_err(store)?;
    if let Some(bz) = &got.bzimage {
        write_atomic(&staging.join("bzImage"), bz).map_err(store)?;
    }
    if let Some((cpio, _)) = &got.modules {
        write_atomic(&staging.join("modules.cpio"), cpio).map_err(store)?;
    }
    write_atomic(&staging.join("kernel.json"), &json).map_err(store)?;
    rename_noreplace(&staging, &target).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KernelError::Exists(name.into()).into(),
        _ => store(e),
    })?;
    crate::fsutil::sync_dir(dir);
    Ok(info)
}

/// Renames `from` to `to`, failing if `to` exists (even as an empty directory).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A kernel's size in `kernel ls`: with the agent's part of the initrd when it has one.
fn with_agent(mut info: KernelInfo, agent: &Path) -> KernelInfo {
    if let (Some(modules), Ok(meta)) = (info.initrd_bytes, std::fs::metadata(agent)) {
        info.initrd_bytes = Some(modules + initrd::init_cpio_len(meta.len()));
    }
    info
}

/// Every kernel. One whose `kernel.json` cannot be read is kept aside and its metadata made
/// again from its `vmlinux` (it stays listed, bootable and its name taken); `recovered` gets
/// a line saying so.
fn list(dir: &Path, recovered: &mut Vec<String>) -> Result<Vec<KernelInfo>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(KernelError::Io(format!("cannot list {}: {e}", dir.display())).into()),
    };
    let mut out = vec![];
    for name in entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)) {
        if name.starts_with('.') || !dir.join(&name).join("vmlinux").is_file() {
            continue;
        }
        let meta = dir.join(&name).join("kernel.json");
        let read = std::fs::read(&meta).map_err(|e| e.to_string());
        match read.and_then(|b| serde_json::from_slice::<KernelInfo>(&b).map_err(|e| e.to_string())) {
            Ok(info) => out.push(info),
            Err(why) => {
                let (info, note) = remake(dir, &name, why)?;
                recovered.push(note);
                out.push(info);
            }
        }
    }
    out.sort_by(|a: &KernelInfo, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A kernel's metadata written again from its vmlinux; the unreadable file (if any) kept aside.
fn remake(dir: &Path, name: &str, why: String) -> Result<(KernelInfo, String), Error> {
    let meta = dir.join(name).join("kernel.json");
    let kept = match meta.exists() {
        true => crate::fsutil::move_aside(&meta)
            .map(|aside| format!("kept as {}, ", aside.display()))
            .map_err(|e| {
                KernelError::Io(format!(
                    "kernel {name}: kernel.json is unreadable ({why}); cannot move it aside: {e}"
                ))
            })?,
        false => String::new(),
    };
    let vmlinux = std::fs::metadata(dir.join(name).join("vmlinux"))
        .map_err(|e| KernelError::Io(format!("kernel {name}: {e}")))?;
    let added_at = vmlinux.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let info = KernelInfo {
        name: name.to_string(),
        bytes: vmlinux.len(),
        added_at: added_at.map_or(0, |d| d.as_secs()),
        source: format!("unknown (kernel.json was unreadable: {why})"),
        release: None,
        vmlinux: true,
        bzimage: dir.join(name).join("bzImage").is_file(),
        initrd_bytes: std::fs::metadata(dir.join(name).join("modules.cpio")).ok().map(|m| m.len()),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::internal(e.to_string()))?;
    write_atomic(&meta, &json)
        .map_err(|e| KernelError::Io(format!("cannot write {}: {e}", meta.display())))?;
    Ok((
        info,
        format!("kernel {name}: kernel.json was unreadable ({why}); {kept}made again from its vmlinux"),
    ))
}

fn path(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    validate_name(name)?;
    let p = dir.join(name).join("vmlinux");
    if p.is_file() { Ok(p) } else { Err(KernelError::NotFound(name.into()).into()) }
}

fn files(dir: &Path, name: &str) -> Result<KernelFiles, Error> {
    let vmlinux = path(dir, name)?;
    let kept = |file: &str| Some(dir.join(name).join(file)).filter(|p| p.is_file());
    let release = std::fs::read(dir.join(name).join("kernel.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<KernelInfo>(&b).ok())
        .and_then(|k| k.release);
    Ok(KernelFiles { vmlinux, bzimage: kept("bzImage"), modules_cpio: kept("modules.cpio"), release })
}

impl Actor for KernelStore {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        // Scratch left by an import the daemon died in.
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(".tmp-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        self.guard.started();
    }
}

impl Handler<GetKernelFiles> for KernelStore {
    type Result = ResponseFuture<Result<KernelFiles, Error>>;
    fn handle(&mut self, GetKernelFiles(name): GetKernelFiles, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || files(&dir, &name)))
    }
}

impl Handler<ImportKernel> for KernelStore {
    type Result = ResponseFuture<Result<KernelInfo, Error>>;
    fn handle(&mut self, msg: ImportKernel, _: &mut Context<Self>) -> Self::Result {
        let (dir, agent) = (self.dir.clone(), self.agent.clone());
        Box::pin(blocking(move || {
            import(&dir, &msg.name, &msg.source, msg.input).map(|k| with_agent(k, &agent))
        }))
    }
}

impl Handler<ListKernels> for KernelStore {
    type Result = ResponseActFuture<Self, Result<Vec<KernelInfo>, Error>>;
    fn handle(&mut self, _: ListKernels, _: &mut Context<Self>) -> Self::Result {
        let (dir, agent) = (self.dir.clone(), self.agent.clone());
        let read = blocking(move || {
            let mut notes = vec![];
            list(&dir, &mut notes)
                .map(|kernels| (kernels.into_iter().map(|k| with_agent(k, &agent)).collect(), notes))
        });
        Box::pin(read.into_actor(self).map(|listed, act, _| {
            let (kernels, notes) = listed?;
            for note in notes {
                slog::warn!(act.log, "{}", note);
                act.recovered.push(note);
            }
            Ok(kernels)
        }))
    }
}

impl Handler<RemoveKernel> for KernelStore {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, RemoveKernel(name): RemoveKernel, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        Box::pin(blocking(move || {
            path(&dir, &name)?;
            std::fs::remove_dir_all(dir.join(&name))
                .map_err(|e| KernelError::Io(format!("cannot remove kernel {name}: {e}")).into())
        }))
    }
}

impl Handler<Describe> for KernelStore {
    type Result = Option<String>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Option<String> {
        Some(
            [self.dir.display().to_string()]
                .into_iter()
                .chain(self.recovered.iter().cloned())
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

crate::handle_control!(KernelStore);

#[cfg(test)]
/// An x86-64 ET_EXEC ELF of `len` bytes with one program header of type `ptype` covering
/// `seg` bytes from offset 0x1000.
pub fn test_elf(len: usize, ptype: u32, seg: u64) -> Vec<u8> {
    let mut elf = vec![0u8; len];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[16] = 2;
    elf[18] = 0x3e;
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&ptype.to_le_bytes());
    elf[64 + 8..64 + 16].copy_from_slice(&0x1000u64.to_le_bytes());
    elf[64 + 32..64 + 40].copy_from_slice(&seg.to_le_bytes());
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_metadata_is_kept_aside_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        for (name, meta) in [("bad", Some(&b"nope"[..])), ("bare", None)] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("vmlinux"), test_elf(0x2000, 1, 0x1000)).unwrap();
            if let Some(meta) = meta {
                std::fs::write(dir.path().join(name).join("kernel.json"), meta).unwrap();
            }
        }
        let mut notes = vec![];
        let listed = list(dir.path(), &mut notes).unwrap();
        assert_eq!(listed.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["bad", "bare"]);
        assert!(
            listed
                .iter()
                .all(|k| k.bytes == 0x2000 && k.source.starts_with("unknown (kernel.json was unreadable"))
        );
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("kept as"), "{notes:?}");
        let mut again = vec![];
        assert_eq!(list(dir.path(), &mut again).unwrap(), listed, "written back: the same next time");
        assert!(again.is_empty());
        assert!(path(dir.path(), "bad").is_ok(), "still bootable");
    }

    #[test]
    fn only_loadable_x86_64_elf_kernels_are_accepted() {
        assert!(check_elf(&test_elf(0x2000, 1, 0x1000)).is_ok());
        let mut arm = test_elf(0x2000, 1, 0x1000);
        arm[18] = 0xb7;
        assert!(check_elf(&arm).is_err());
        assert!(check_elf(b"#!/bin/sh").is_err());
        let message = |e: Error| e.message;
        // A 64-byte header with no program headers (it imported as a kernel before).
        let mut bare = test_elf(0x2000, 1, 0);
        bare.truncate(64);
        bare[0x38] = 0;
        assert!(message(check_elf(&bare).unwrap_err()).contains("no loadable segment"));
        assert!(
            message(check_elf(&test_elf(0x2000, 4, 0x1000)).unwrap_err()).contains("no loadable segment"),
            "a note only"
        );
        assert!(
            message(check_elf(&test_elf(0x1800, 1, 0x1000)).unwrap_err()).contains("outside the file"),
            "truncated"
        );
        let mut far = test_elf(0x2000, 1, 0x1000);
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(message(check_elf(&far).unwrap_err()).contains("outside the file"), "headers past the end");
        let mut shared = test_elf(0x2000, 1, 0x1000);
        shared[16] = 3;
        assert!(message(check_elf(&shared).unwrap_err()).contains("not an executable"));
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
        let elf = test_elf(0x2000, 1, 0x1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        assert_eq!(extract_bzimage(&bzimage(&gz.finish().unwrap())).unwrap(), elf);
        assert_eq!(extract_bzimage(&bzimage(&zstd::encode_all(&elf[..], 3).unwrap())).unwrap(), elf);
        let mut xz = xz2::write::XzEncoder::new(vec![], 1);
        xz.write_all(&elf).unwrap();
        assert_eq!(extract_bzimage(&bzimage(&xz.finish().unwrap())).unwrap(), elf);
        let err = extract_bzimage(&bzimage(b"BZh91AY&SY")).unwrap_err();
        assert!(err.message.contains("gzip, xz, zstd and lz4"), "{err:?}");
        let mut truncated = bzimage(b"\x1f\x8b\x08");
        truncated.truncate(0x260);
        assert!(extract_bzimage(&truncated).is_err());
    }
}
