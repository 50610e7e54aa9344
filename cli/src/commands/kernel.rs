//! `banger kernel import|ls|rm`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use protocol::daemon::{Request, Response};
use protocol::vm::KernelInfo;
use protocol::{Error, ErrorKind};

use crate::args::{Global, KernelCommand};
use crate::client;
use crate::escape::escape;
use crate::output::Output;
use crate::progress::human_bytes;

pub async fn run(global: &Global, cmd: KernelCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, 2, "kernels")?;
    match cmd {
        KernelCommand::Import { path, name, modules } => {
            let (fd, packer) = match &modules {
                None => (OwnedFd::from(open(&path)?), None),
                Some(dir) => {
                    let (fd, packer) = pack(&path, dir)?;
                    (fd, Some(packer))
                }
            };
            let request = Request::KernelImport { name, file: path.display().to_string() };
            c.send_with_fd(&request, fd.as_fd()).await.map_err(|e| client::advise(&socket, e))?;
            // Our copy of the pipe's read end closes, so the packer sees the daemon stop reading.
            drop(fd);
            let reply = c.next().await.map_err(|e| client::advise(&socket, e));
            let packed = packer.map(|p| p.join().unwrap_or_else(|_| Err(internal("the packer panicked"))));
            match reply? {
                Some((Response::Kernel(k), _)) if out.json => out.json(&k),
                Some((Response::Kernel(k), _)) => println!("imported kernel {}", summary(&k)),
                // A packing failure explains a truncated stream better than the daemon can.
                Some((Response::Error(e), _)) => return Err(packed.and_then(Result::err).unwrap_or(e)),
                Some((other, _)) => return Err(client::unexpected(&other)),
                None => return Err(client::advise(&socket, protocol::channel::ClientError::Closed)),
            }
        }
        KernelCommand::Ls => match client::call(&mut c, &socket, &Request::KernelList).await? {
            Response::Kernels(list) if out.json => out.json(&list),
            Response::Kernels(list) => {
                println!(
                    "{:<16} {:>10}  {:<24} {:<15} {:>10}  SOURCE",
                    "NAME", "SIZE", "RELEASE", "BOOTS", "INITRD"
                );
                for k in list {
                    println!(
                        "{:<16} {:>10}  {:<24} {:<15} {:>10}  {}",
                        escape(&k.name),
                        human_bytes(k.bytes),
                        escape(k.release.as_deref().unwrap_or("-")),
                        boots(&k),
                        k.initrd_bytes.map_or("-".into(), human_bytes),
                        escape(&k.source)
                    );
                }
            }
            other => return Err(client::unexpected(&other)),
        },
        KernelCommand::Rm { name } => {
            client::call(&mut c, &socket, &Request::KernelRemove { name: name.clone() }).await?;
            out.removed(&name, &format!("kernel {name}"));
        }
    }
    Ok(())
}

/// What a kernel can boot with: `vmlinux` (Firecracker), `bzImage` (QEMU).
fn boots(k: &KernelInfo) -> String {
    let kept: Vec<&str> = [(k.vmlinux, "vmlinux"), (k.bzimage, "bzImage")]
        .into_iter()
        .filter_map(|(kept, what)| kept.then_some(what))
        .collect();
    if kept.is_empty() { "-".into() } else { kept.join(",") }
}

fn summary(k: &KernelInfo) -> String {
    let mut s = format!("{} ({}", escape(&k.name), human_bytes(k.bytes));
    if let Some(r) = &k.release {
        s += &format!(", release {}", escape(r));
    }
    s += &format!(", boots as {}", boots(k));
    if let Some(n) = k.initrd_bytes {
        s += &format!(", initrd {}", human_bytes(n));
    }
    s + ")"
}

fn open(path: &Path) -> Result<std::fs::File, Error> {
    std::fs::File::open(path)
        .map_err(|e| Error::new(ErrorKind::NotFound, format!("cannot open {}: {e}", path.display())))
}

fn internal(what: &str) -> Error {
    Error::new(ErrorKind::Internal, what)
}

/// A bzImage and its modules directory as one tar stream, laid out like a Debian package's
/// data (`boot/vmlinuz-RELEASE`, `lib/modules/RELEASE/…`), written into a pipe by a thread:
/// the daemon reads the other end. Only what the importer reads goes in: the modules and
/// `modules.dep` / `modules.builtin`; links are not followed.
fn pack(bzimage: &Path, dir: &Path) -> Result<(OwnedFd, std::thread::JoinHandle<Result<(), Error>>), Error> {
    let release = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, format!("{} is not a modules directory", dir.display()))
                .with_hint("pass the kernel's own lib/modules/RELEASE directory")
        })?;
    if !dir.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, format!("{} is not a directory", dir.display()))
            .with_hint("pass the kernel's own lib/modules/RELEASE directory"));
    }
    let kernel = open(bzimage)?;
    let (reader, writer) =
        std::io::pipe().map_err(|e| internal(&format!("cannot make a pipe for the kernel: {e}")))?;
    let dir = dir.to_path_buf();
    let packer = std::thread::spawn(move || {
        let mut tar = tar::Builder::new(writer);
        tar.follow_symlinks(false);
        let mut kernel = kernel;
        let failed = |what: &Path, e: std::io::Error| {
            Error::new(ErrorKind::InvalidInput, format!("cannot pack {}: {e}", what.display()))
        };
        let mut files = vec![];
        walk(&dir, &mut files).map_err(|e| failed(&dir, e))?;
        let boot = format!("boot/vmlinuz-{release}");
        tar.append_file(&boot, &mut kernel).map_err(|e| failed(Path::new(&boot), e))?;
        for file in files {
            let Ok(rel) = file.strip_prefix(&dir) else { continue };
            let name = Path::new("lib/modules").join(&release).join(rel);
            tar.append_path_with_name(&file, &name).map_err(|e| failed(&file, e))?;
        }
        tar.finish().map_err(|e| failed(&dir, e))
    });
    Ok((OwnedFd::from(reader), packer))
}

/// The files under `dir` the importer reads, links not followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file()
            && (name == "modules.dep" || name == "modules.builtin" || name.contains(".ko"))
        {
            out.push(entry.path());
        }
    }
    Ok(())
}
