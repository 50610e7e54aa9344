//! What `kernel import` makes of its input, told apart by magic: an ELF vmlinux, a bzImage, a
//! Debian package (`ar` with a compressed `data.tar`), or a tar laid out like a package's data
//! (`boot/vmlinuz-RELEASE` and `lib/modules/RELEASE/…`, which the CLI makes of a bzImage and
//! its modules directory). Every read is bounded; scratch files go to a directory the caller
//! removes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use protocol::Error;

use super::archive::{self, Kind, LIMITS, Span, TarEntry, Unpack};
use super::cpio::Cpio;
use super::modules::{self, NEEDED, OrderError};
use super::{KernelError, MAX_KERNEL, check_elf, extract_bzimage, invalid, is_bzimage};

/// A package (or its input stream) larger than this is refused before it is unpacked.
const MAX_PACKAGE: u64 = 1 << 30;
/// A module larger than this (unpacked) is not one.
const MAX_MODULE: u64 = 64 << 20;
/// `modules.dep` and `modules.builtin` at most.
const MAX_LIST: u64 = 16 << 20;
/// The most modules, and bytes of them, the guest's needs may pull in (11 and 0.7 MiB for
/// Debian's cloud kernel).
const MAX_CLOSURE: usize = 256;
const MAX_CLOSURE_BYTES: u64 = 256 << 20;

/// The files a kernel is kept as.
pub struct Imported {
    pub release: Option<String>,
    pub vmlinux: Vec<u8>,
    pub bzimage: Option<Vec<u8>>,
    /// The newc cpio of the guest's modules and `/banger/modules`, with the module names in
    /// load order.
    pub modules: Option<(Vec<u8>, Vec<String>)>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| KernelError::Io(format!("{what}: {e}")).into()
}

/// Reads `input` (a descriptor the client passed: a file or a pipe) into what banger keeps.
pub fn read(input: File, scratch: &Path) -> Result<Imported, Error> {
    let (mut file, len) = seekable(input, scratch)?;
    let mut head = vec![];
    (&mut file).take(1024).read_to_end(&mut head).map_err(io("cannot read the kernel"))?;
    if head.starts_with(b"\x7fELF") {
        let bytes = whole(&mut file, len)?;
        check_elf(&bytes)?;
        return Ok(Imported { release: None, vmlinux: bytes, bzimage: None, modules: None });
    }
    if is_bzimage(&head) {
        let bytes = whole(&mut file, len)?;
        let vmlinux = extract_bzimage(&bytes)?;
        check_elf(&vmlinux)?;
        return Ok(Imported {
            release: bzimage_release(&bytes),
            vmlinux,
            bzimage: Some(bytes),
            modules: None,
        });
    }
    if head.starts_with(b"!<arch>\n") {
        let span = archive::deb_data(&mut file, len)
            .map_err(|why| invalid(&format!("as a Debian package, {why}")))?;
        file.seek(SeekFrom::Start(span.offset)).map_err(io("cannot read the package"))?;
        let (mut data, len) = unpack_to(&mut (&mut file).take(span.len), scratch, "data.tar")?;
        return package(&mut data, len);
    }
    if is_tar(&head) {
        return package(&mut file, len);
    }
    if archive::Compression::sniff(&head) != archive::Compression::None {
        file.seek(SeekFrom::Start(0)).map_err(io("cannot read the kernel"))?;
        let (mut data, len) = unpack_to(&mut file, scratch, "data.tar")?;
        let mut head = [0u8; 512];
        data.read_exact(&mut head)
            .map_err(|_| invalid("it decompresses to something too short to be a tar"))?;
        if is_tar(&head) {
            return package(&mut data, len);
        }
        return Err(invalid("it is compressed, but not a tar of boot/ and lib/modules/ inside"));
    }
    Err(invalid(
        "it is none of: an ELF vmlinux, a bzImage, a Debian linux-image package, a tar of boot/ and lib/modules/",
    ))
}

fn is_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar")
}

/// The input as a file banger can seek in: itself if it is one, else copied into `scratch`.
fn seekable(mut input: File, scratch: &Path) -> Result<(File, u64), Error> {
    let meta = input.metadata().map_err(io("cannot read the kernel"))?;
    if meta.is_file() {
        if meta.len() > MAX_PACKAGE {
            return Err(KernelError::TooLarge.into());
        }
        input.seek(SeekFrom::Start(0)).map_err(io("cannot read the kernel"))?;
        return Ok((input, meta.len()));
    }
    let path = scratch.join("input");
    let mut copy = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("cannot make a scratch file"))?;
    let len = std::io::copy(&mut (&mut input).take(MAX_PACKAGE + 1), &mut copy)
        .map_err(io("cannot read the kernel from the client"))?;
    if len > MAX_PACKAGE {
        return Err(KernelError::TooLarge.into());
    }
    copy.seek(SeekFrom::Start(0)).map_err(io("cannot read the scratch file"))?;
    Ok((copy, len))
}

fn whole(file: &mut File, len: u64) -> Result<Vec<u8>, Error> {
    if len > MAX_KERNEL {
        return Err(KernelError::TooLarge.into());
    }
    Span { offset: 0, len }.read(file).map_err(io("cannot read the kernel"))
}

/// Unpacks `input` into `scratch/name`, at most the package limit.
fn unpack_to(input: &mut dyn Read, scratch: &Path, name: &str) -> Result<(File, u64), Error> {
    let path = scratch.join(name);
    let mut out = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("cannot make a scratch file"))?;
    let len = archive::unpack(input, &mut std::io::BufWriter::new(&mut out), LIMITS.unpacked_bytes).map_err(
        |e| match e {
            Unpack::TooLarge => invalid(&format!(
                "its data unpacks to over {} GiB; no kernel package is that large",
                LIMITS.unpacked_bytes >> 30
            )),
            Unpack::Bad(why) => invalid(&format!("its data does not unpack: {why} (truncated or damaged?)")),
        },
    )?;
    out.seek(SeekFrom::Start(0)).map_err(io("cannot read the scratch file"))?;
    Ok((out, len))
}

/// The release a bzImage names in its header (`kernel_version`), if it names a plausible one.
fn bzimage_release(bz: &[u8]) -> Option<String> {
    let at = u16::from_le_bytes(bz.get(0x20e..0x210)?.try_into().ok()?) as usize + 0x200;
    let text = bz.get(at..at.checked_add(128)?.min(bz.len()))?;
    let word = text.split(|&c| c == b' ' || c == 0).next()?;
    let release = std::str::from_utf8(word).ok()?;
    valid_release(release).then(|| release.to_string())
}

fn valid_release(r: &str) -> bool {
    !r.is_empty() && r.len() <= 128 && r.bytes().all(|c| c.is_ascii_alphanumeric() || b"._+-~".contains(&c))
}

/// A package's kernel and modules, from the tar in `file`.
fn package(file: &mut File, len: u64) -> Result<Imported, Error> {
    let entries =
        archive::index_tar(file, len, &LIMITS).map_err(|why| invalid(&format!("its tar: {why}")))?;
    let kernels: Vec<&TarEntry> = entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.path.strip_prefix("boot/vmlinuz-").is_some_and(valid_release))
        .collect();
    let kernel = match kernels[..] {
        [k] => k,
        [] => return Err(invalid("the package holds no boot/vmlinuz-RELEASE")),
        _ => return Err(invalid("the package holds several kernels (boot/vmlinuz-*); import one at a time")),
    };
    let release = kernel.path.trim_start_matches("boot/vmlinuz-").to_string();
    if kernel.data.len > MAX_KERNEL {
        return Err(KernelError::TooLarge.into());
    }
    let bzimage = kernel.data.read(file).map_err(io("cannot read the package's kernel"))?;
    if !is_bzimage(&bzimage) {
        return Err(invalid(&format!("{} is not a bzImage", kernel.path)));
    }
    let vmlinux = extract_bzimage(&bzimage)?;
    check_elf(&vmlinux)?;
    let modules = modules_cpio(file, &entries, &release)?;
    Ok(Imported { release: Some(release), vmlinux, bzimage: Some(bzimage), modules: Some(modules) })
}

/// The guest's modules for `release` as a cpio, with their names in load order.
fn modules_cpio(
    file: &mut File,
    entries: &[TarEntry],
    release: &str,
) -> Result<(Vec<u8>, Vec<String>), Error> {
    let mut files: HashMap<String, (String, Span)> = HashMap::new();
    let (mut dep, mut builtin) = (None, None);
    for e in entries.iter().filter(|e| e.kind == Kind::File) {
        let Some(rel) = ["lib/modules/", "usr/lib/modules/"].iter().find_map(|p| {
            e.path.strip_prefix(p).and_then(|r| r.strip_prefix(release)).and_then(|r| r.strip_prefix('/'))
        }) else {
            continue;
        };
        match rel {
            "modules.dep" => dep = Some(e.data),
            "modules.builtin" => builtin = Some(e.data),
            _ => {
                if let Some(name) = modules::name_of(rel) {
                    files.insert(name, (rel.to_string(), e.data));
                }
            }
        }
    }
    let mut text =
        |span: Option<Span>, what: &str| -> Result<String, Error> {
            match span {
                None => Ok(String::new()),
                Some(s) if s.len > MAX_LIST => Err(invalid(&format!("its {what} is over 16 MiB"))),
                Some(s) => Ok(String::from_utf8_lossy(&s.read(file).map_err(io("cannot read the package"))?)
                    .into_owned()),
            }
        };
    let builtin = modules::parse_builtin(&text(builtin, "modules.builtin")?);
    let dep = dep.map(|d| text(Some(d), "modules.dep").map(|t| modules::parse_dep(&t))).transpose()?;
    let mut loaded: HashMap<String, Vec<u8>> = HashMap::new();
    let mut loaded_bytes = 0u64;
    let order = modules::load_order(&NEEDED, &builtin, &mut |name| {
        let Some((rel, span)) = files.get(name) else { return Ok(None) };
        // A package's dependency chain bounds what is held (and how deep the walk goes).
        if loaded.len() >= MAX_CLOSURE {
            return Err(format!("the modules the guest needs depend on more than {MAX_CLOSURE} others"));
        }
        let bytes = module(file, rel, *span)?;
        loaded_bytes += bytes.len() as u64;
        if loaded_bytes > MAX_CLOSURE_BYTES {
            return Err(format!(
                "the modules the guest needs unpack to more than {} MiB",
                MAX_CLOSURE_BYTES >> 20
            ));
        }
        let deps = match &dep {
            Some(table) => table.get(name).cloned().unwrap_or_default(),
            None => modules::modinfo_depends(&bytes)?,
        };
        loaded.insert(name.to_string(), bytes);
        Ok(Some(deps))
    })
    .map_err(|e| match e {
        OrderError::Missing { .. } => invalid(&format!("{e} (release {release})")).with_hint(
            "import the kernel's own modules: --modules /lib/modules/RELEASE, or its linux-image .deb",
        ),
        _ => invalid(&e.to_string()),
    })?;
    let mut cpio = Cpio::new(vec![]);
    let mut list = String::new();
    for name in &order {
        let (rel, _) = &files[name];
        let rel = ["xz", "zst", "gz"]
            .iter()
            .find_map(|s| rel.strip_suffix(&format!(".ko.{s}")))
            .map_or(rel.clone(), |stem| format!("{stem}.ko"));
        let path = format!("/lib/modules/{release}/{rel}");
        cpio.file(&path, 0o644, &loaded[name]).map_err(io("cannot write the modules archive"))?;
        list.push_str(&path);
        list.push('\n');
    }
    cpio.file("/banger/modules", 0o644, list.as_bytes()).map_err(io("cannot write the modules archive"))?;
    let (bytes, _) = cpio.finish().map_err(io("cannot write the modules archive"))?;
    Ok((bytes, order))
}

/// A module's bytes, decompressed if it is compressed.
fn module(file: &mut File, rel: &str, span: Span) -> Result<Vec<u8>, String> {
    file.seek(SeekFrom::Start(span.offset)).map_err(|e| e.to_string())?;
    let mut out = vec![];
    archive::unpack(&mut file.take(span.len), &mut out, MAX_MODULE).map_err(|e| match e {
        Unpack::TooLarge => format!("{rel} unpacks to over 64 MiB"),
        Unpack::Bad(why) => format!("{rel} does not unpack: {why}"),
    })?;
    Ok(out)
}
