//! `banger kernel import|ls|rm`.

use std::os::fd::AsFd;

use protocol::daemon::{Request, Response};
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
        KernelCommand::Import { path, name } => {
            let file = std::fs::File::open(&path).map_err(|e| {
                Error::new(ErrorKind::NotFound, format!("cannot open {}: {e}", path.display()))
            })?;
            let request = Request::KernelImport { name, file: path.display().to_string() };
            c.send_with_fd(&request, file.as_fd()).await.map_err(|e| client::advise(&socket, e))?;
            match c.next().await.map_err(|e| client::advise(&socket, e))? {
                Some((Response::Kernel(k), _)) if out.json => out.json(&k),
                Some((Response::Kernel(k), _)) => {
                    println!("imported kernel {} ({})", escape(&k.name), human_bytes(k.bytes))
                }
                Some((Response::Error(e), _)) => return Err(e),
                Some((other, _)) => return Err(client::unexpected(&other)),
                None => return Err(client::advise(&socket, protocol::channel::ClientError::Closed)),
            }
        }
        KernelCommand::Ls => match client::call(&mut c, &socket, &Request::KernelList).await? {
            Response::Kernels(list) if out.json => out.json(&list),
            Response::Kernels(list) => {
                println!("{:<24} {:>10}  SOURCE", "NAME", "SIZE");
                for k in list {
                    println!("{:<24} {:>10}  {}", escape(&k.name), human_bytes(k.bytes), escape(&k.source));
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
