//! `banger image pull|ls|inspect|rm|cache prune`.

use std::os::fd::{AsFd, OwnedFd};

use protocol::daemon::{Request, Response};
use protocol::image::{ImageInfo, ImageSource, PullRequest};
use protocol::{Error, ErrorKind};
use serde_json::json;

use crate::args::{Global, ImageCommand};
use crate::client;
use crate::escape::escape;
use crate::output::Output;
use crate::progress::{Progress, human_bytes};

/// The protocol version that brought image requests.
const IMAGES_SINCE: u32 = 2;
/// The protocol version that made replacing an image something to ask for (`--replace`).
const REPLACE_SINCE: u32 = 4;

pub async fn run(global: &Global, cmd: ImageCommand, out: &Output) -> Result<(), Error> {
    let socket = global.socket();
    let mut c = client::connect(&socket).await?;
    client::require(&c, IMAGES_SINCE, "images")?;
    match cmd {
        ImageCommand::Pull { reference, name, size, replace } => {
            let info = pull(&mut c, &socket, PullArgs { reference, name, size, replace }, out).await?;
            report(&info, "pulled", out);
        }
        ImageCommand::Import { file, name, size, replace } => {
            let (input, shown): (OwnedFd, String) = if file.as_os_str() == "-" {
                let stdin = std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::internal(e.to_string()))?;
                (stdin, "stdin".into())
            } else {
                let f = std::fs::File::open(&file).map_err(|e| {
                    Error::new(ErrorKind::NotFound, format!("cannot open {}: {e}", file.display()))
                })?;
                (f.into(), file.display().to_string())
            };
            let request = if c.version >= REPLACE_SINCE {
                Request::ImageImportReplacing { name, size, file: shown, replace }
            } else {
                Request::ImageImport { name, size, file: shown }
            };
            c.send_with_fd(&request, input.as_fd()).await.map_err(|e| client::advise(&socket, e))?;
            let info = follow(&mut c, &socket, out).await?;
            report(&info, "imported", out);
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
            out.removed(&name, &name);
        }
        ImageCommand::Cache(crate::args::CacheCommand::Prune { dry_run }) => {
            match client::call(&mut c, &socket, &Request::CachePrune { dry_run }).await? {
                Response::Pruned(r) if out.json => out.json(&r),
                Response::Pruned(r) => {
                    let verb = if r.dry_run { "would free" } else { "freed" };
                    let (freed, dir) = (human_bytes(r.freed_bytes), escape(&r.dir));
                    println!("{verb} {freed} across {} blob(s) in {dir}", r.blobs);
                }
                other => return Err(client::unexpected(&other)),
            }
        }
    }
    Ok(())
}

pub struct PullArgs {
    pub reference: String,
    pub name: Option<String>,
    pub size: Option<u64>,
    pub replace: bool,
}

/// Pulls an image with credentials from the user's config, showing progress; `vm run` pulls
/// through here too.
pub async fn pull(
    c: &mut client::DaemonClient,
    socket: &std::path::Path,
    args: PullArgs,
    out: &Output,
) -> Result<ImageInfo, Error> {
    let PullArgs { reference, name, size, replace } = args;
    let registry = crate::auth::registry_of(&reference);
    let auth = crate::auth::credentials_for(&registry)?;
    let pull = PullRequest { reference, name, size, auth };
    // An older daemon replaces without asking; it is told only what it understands.
    let request = if c.version >= REPLACE_SINCE {
        Request::ImagePullReplacing { pull, replace }
    } else {
        Request::ImagePull(pull)
    };
    c.send(&request).await.map_err(|e| client::advise(socket, e))?;
    follow(c, socket, out).await
}

/// Shows a pull's or an import's progress and returns the image it made.
async fn follow(
    c: &mut client::DaemonClient,
    socket: &std::path::Path,
    out: &Output,
) -> Result<ImageInfo, Error> {
    let mut progress = Progress::new(out.json);
    let result = loop {
        match c.next().await.map_err(|e| client::advise(socket, e)) {
            Ok(Some((Response::PullProgress(event), true))) => progress.event(&event),
            Ok(Some((Response::Image(info), false))) => break Ok(info),
            Ok(Some((Response::Error(e), _))) => break Err(e),
            Ok(Some((other, _))) => break Err(client::unexpected(&other)),
            Ok(None) => break Err(client::advise(socket, protocol::channel::ClientError::Closed)),
            Err(e) => break Err(e),
        }
    };
    progress.finish();
    result
}

fn report(info: &ImageInfo, verb: &str, out: &Output) {
    if out.json {
        // One line, like the events before it: the output is JSON lines.
        println!("{}", json!({ "image": info }));
    } else {
        let (rootfs, files) = (human_bytes(info.rootfs_bytes), human_bytes(info.content_bytes));
        let (name, origin) = (escape(&info.name), origin(info));
        println!("{verb} {name} ({rootfs} rootfs, {files} of files) from {origin}");
    }
}

/// Where an image came from, escaped: a reference or a file name from outside.
fn origin(info: &ImageInfo) -> String {
    match &info.source {
        ImageSource::Pulled { reference, .. } => escape(reference).into_owned(),
        ImageSource::Imported { file } => format!("import of {}", escape(file)),
    }
}

fn table(images: &[ImageInfo]) -> String {
    let rows: Vec<[String; 4]> = images
        .iter()
        .map(|i| {
            let name = escape(&i.name).into_owned();
            [name, human_bytes(i.rootfs_bytes), human_bytes(i.content_bytes), origin(i)]
        })
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
