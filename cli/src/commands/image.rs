//! `banger image pull|ls|inspect|rm|cache prune`.

use protocol::daemon::{Request, Response};
use protocol::image::{ImageInfo, ImageSource, PullRequest};
use protocol::{Error, ErrorKind};
use serde_json::json;

use crate::args::{Global, ImageCommand};
use crate::client;
use crate::output::Output;
use crate::progress::{Progress, human_bytes};

/// The protocol version that brought image requests.
const IMAGES_SINCE: u32 = 2;

pub async fn run(global: &Global, cmd: ImageCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    if c.version < IMAGES_SINCE {
        return Err(Error::new(
            ErrorKind::VersionMismatch,
            format!("{} has no image support", c.server.software),
        )
        .with_hint("upgrade bangerd to match this banger"));
    }
    match cmd {
        ImageCommand::Pull { reference, name, size } => {
            let registry = crate::auth::registry_of(&reference);
            let auth = crate::auth::credentials_for(&registry)?;
            let request = Request::ImagePull(PullRequest { reference, name, size, auth });
            c.send(&request).await.map_err(|e| client::advise(&socket, e))?;
            let mut progress = Progress::new(out.json);
            let info = loop {
                match c.next().await.map_err(|e| client::advise(&socket, e))? {
                    Some((Response::PullProgress(event), true)) => progress.event(&event),
                    Some((Response::Image(info), false)) => break info,
                    Some((Response::Error(e), _)) => {
                        progress.finish();
                        return Err(e);
                    }
                    Some((other, _)) => return Err(client::unexpected(&other)),
                    None => return Err(client::advise(&socket, protocol::channel::ClientError::Closed)),
                }
            };
            progress.finish();
            if out.json {
                // One line, like the events before it: the output is JSON lines.
                println!("{}", json!({ "image": info }));
            } else {
                println!(
                    "pulled {} ({} rootfs, {} of files) from {}",
                    info.name,
                    human_bytes(info.rootfs_bytes),
                    human_bytes(info.content_bytes),
                    origin(&info)
                );
            }
        }
        ImageCommand::Ls => match client::call(&mut c, &socket, &Request::ImageList).await? {
            Response::Images(list) if out.json => out.json(&list),
            Response::Images(list) => print!("{}", table(&list)),
            other => return Err(client::unexpected(&other)),
        },
        ImageCommand::Inspect { name } => {
            match client::call(&mut c, &socket, &Request::ImageInspect { name }).await? {
                Response::Image(info) => out.json(&info),
                other => return Err(client::unexpected(&other)),
            }
        }
        ImageCommand::Rm { name, force } => {
            client::call(&mut c, &socket, &Request::ImageRemove { name: name.clone(), force }).await?;
            if out.json {
                out.json(&json!({ "removed": name }));
            } else {
                println!("removed {name}");
            }
        }
        ImageCommand::Cache(crate::args::CacheCommand::Prune { dry_run }) => {
            match client::call(&mut c, &socket, &Request::CachePrune { dry_run }).await? {
                Response::Pruned(r) if out.json => out.json(&r),
                Response::Pruned(r) => {
                    let verb = if r.dry_run { "would free" } else { "freed" };
                    println!("{verb} {} across {} blob(s) in {}", human_bytes(r.freed_bytes), r.blobs, r.dir);
                }
                other => return Err(client::unexpected(&other)),
            }
        }
    }
    Ok(())
}

fn origin(info: &ImageInfo) -> String {
    match &info.source {
        ImageSource::Pulled { reference, .. } => reference.clone(),
        ImageSource::Imported { file } => format!("import of {file}"),
    }
}

fn table(images: &[ImageInfo]) -> String {
    let rows: Vec<[String; 4]> = images
        .iter()
        .map(|i| [i.name.clone(), human_bytes(i.rootfs_bytes), human_bytes(i.content_bytes), origin(i)])
        .collect();
    let header = ["NAME".to_string(), "ROOTFS".into(), "CONTENT".into(), "SOURCE".into()];
    let widths: Vec<usize> =
        (0..4).map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|r| {
            format!(
                "{:<w0$}  {:>w1$}  {:>w2$}  {}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect()
}
