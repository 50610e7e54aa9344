//! One pull, start to finish: resolve, fetch layers in parallel into the blob cache, flatten,
//! build ext4, install. Runs as a future spawned by the ImageCache actor; disk and CPU work goes
//! to blocking threads.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use protocol::image::{ImageInfo, ImageSource, LayerProgress, PullEvent, PullRequest};
use protocol::{Error, ErrorKind};
use tokio::sync::mpsc;

use super::blobs::BlobStore;
use super::cancel::Cancel;
use super::digest::Digest;
use super::error::ImageError;
use super::extract::Limits;
use super::flatten::{self, Layer};
use super::images::{self, ImageStore, Staging};
use super::locks::KeyLocks;
use super::registry::{Descriptor, ImageConfig, Registry, check_document_size};
use crate::peers::Peers;
use crate::vm_manager::MayReplaceImage;

/// Layers fetched at once.
const PARALLEL_FETCHES: usize = 3;

/// What every pull shares with the actor that started it.
#[derive(Clone)]
pub struct PullCtx {
    pub blobs: BlobStore,
    pub images: Arc<ImageStore>,
    pub locks: KeyLocks,
    pub insecure: Arc<Vec<String>>,
    pub limits: Limits,
    /// The most one blob may declare (`max_layer_bytes`).
    pub max_layer_bytes: u64,
    /// To ask the VmManager whether an image may be replaced.
    pub peers: Peers,
}

/// The local name an image gets when the user gives none: the repository's last segment, and
/// the tag unless it is `latest` (`alpine:3.19` → `alpine-3.19`).
pub fn default_name(reference: &Reference) -> String {
    let repo = reference.repository().rsplit('/').next().unwrap_or("image");
    let suffix = match (reference.tag(), reference.digest()) {
        (Some("latest"), _) | (None, None) => String::new(),
        (Some(tag), _) => format!("-{tag}"),
        (None, Some(d)) => format!("-{}", d.trim_start_matches("sha256:").get(..12).unwrap_or(d)),
    };
    let raw = format!("{repo}{suffix}").to_ascii_lowercase();
    let cleaned: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    cleaned.trim_start_matches(['.', '_', '-']).chars().take(63).collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fail(message: String) -> Error {
    let kind = if message.contains("no space left") { ErrorKind::Unavailable } else { ErrorKind::Internal };
    Error::new(kind, message)
}

fn parse_reference(reference: &str) -> Result<Reference, Error> {
    reference.parse().map_err(|e: oci_client::ParseError| {
        Error::from(ImageError::BadReference { reference: reference.into(), why: e.to_string() })
    })
}

/// The local name a pull installs: `--name`, else one made from the reference.
pub fn target_name(req: &PullRequest) -> Result<String, Error> {
    let name = match &req.name {
        Some(name) => name.clone(),
        None => default_name(&parse_reference(&req.reference)?),
    };
    images::validate_name(&name)?;
    Ok(name)
}

/// A taken name is replaced only when asked (`--replace`), and, like `image rm`, not while
/// VMs were made from the image (the VmManager says).
async fn check_replace(name: &str, replace: bool, ctx: &PullCtx) -> Result<(), Error> {
    let (store, n) = (ctx.images.clone(), name.to_string());
    let exists = crate::fsutil::blocking(move || match store.get(&n) {
        Ok(_) => Ok(true),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    })
    .await?;
    if !exists {
        return Ok(());
    }
    if !replace {
        return Err(ImageError::Exists(name.into()).into());
    }
    ctx.peers.vms().ask(MayReplaceImage(name.to_string())).await
}

/// What the manifest declares, checked before the first byte: each blob against
/// `max_layer_bytes` (the config against the document cap), and what is left to fetch against
/// the free space of the cache.
/// Runs on a blocking thread (a stat per blob and a statvfs).
fn check_declared(
    config: &Descriptor,
    layers: &[Descriptor],
    blobs: &BlobStore,
    max_layer_bytes: u64,
) -> Result<(), Error> {
    check_document_size(config).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let mut needed: u64 = 0;
    for layer in layers {
        if layer.size > max_layer_bytes {
            let (digest, size, max) = (layer.digest.clone(), layer.size, max_layer_bytes);
            return Err(ImageError::LayerTooLarge { digest, size, max }.into());
        }
    }
    for blob in layers.iter().chain([config]) {
        let digest = Digest::parse(&blob.digest).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        if blobs.has(&digest) {
            continue;
        }
        let partial = std::fs::metadata(blobs.partial(&digest)).map(|m| m.len()).unwrap_or(0);
        needed = needed.saturating_add(blob.size.saturating_sub(partial));
    }
    let dir = blobs.dir();
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|st| st.blocks_available().saturating_mul(st.fragment_size()))
        .map_err(|e| fail(format!("cannot see the free space of {}: {e}", dir.display())))?;
    if needed > free {
        return Err(ImageError::NoSpace { needed, free, dir: dir.display().to_string() }.into());
    }
    Ok(())
}

pub async fn pull(
    req: PullRequest,
    replace: bool,
    ctx: PullCtx,
    events: mpsc::UnboundedSender<PullEvent>,
) -> Result<ImageInfo, Error> {
    let reference = parse_reference(&req.reference)?;
    let name = target_name(&req)?;
    check_replace(&name, replace, &ctx).await?;
    ctx.blobs.ensure_dir().map_err(|e| fail(format!("cannot create {}: {e}", ctx.blobs.dir().display())))?;

    let registry = Registry::new(reference.clone(), req.auth.as_ref(), &ctx.insecure);
    let manifest = registry.manifest().await.map_err(|e| {
        let lower = e.to_ascii_lowercase();
        let hint = if ["401", "authoriz", "denied"].iter().any(|w| lower.contains(w)) {
            "log in first (docker login), or check the reference"
        } else {
            "check the reference and that the registry is reachable"
        };
        Error::new(ErrorKind::Unavailable, e).with_hint(hint)
    })?;
    let (config, layers, blobs, max) =
        (manifest.config.clone(), manifest.layers.clone(), ctx.blobs.clone(), ctx.max_layer_bytes);
    crate::fsutil::blocking(move || check_declared(&config, &layers, &blobs, max)).await?;
    let layers: Vec<LayerProgress> = manifest
        .layers
        .iter()
        .map(|l| LayerProgress {
            digest: l.digest.clone(),
            size: l.size,
            cached: Digest::parse(&l.digest).is_ok_and(|d| ctx.blobs.has(&d)),
        })
        .collect();
    let _ = events
        .send(PullEvent::Resolved { manifest_digest: manifest.digest.to_string(), layers: layers.clone() });

    registry.fetch(&manifest.config, &ctx.blobs, &ctx.locks, &events).await.map_err(fail)?;
    let config_bytes = Registry::read_small(&ctx.blobs, &manifest.config).await.map_err(fail)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("the image config is malformed: {e}")))?;

    futures_util::stream::iter(manifest.layers.iter())
        .map(|l| registry.fetch(l, &ctx.blobs, &ctx.locks, &events))
        .buffer_unordered(PARALLEL_FETCHES)
        .try_collect::<Vec<()>>()
        .await
        .map_err(fail)?;

    let run = config.config.unwrap_or_default();
    let info = ImageInfo {
        name: name.clone(),
        source: ImageSource::Pulled {
            reference: reference.whole(),
            manifest_digest: manifest.digest.to_string(),
            config_digest: manifest.config.digest.clone(),
        },
        layers,
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        workdir: run.working_dir.unwrap_or_default(),
        user: run.user.unwrap_or_default(),
        created: config.created,
        added_at: now(),
        content_bytes: 0,
        rootfs_bytes: 0,
    };
    let sources: Vec<Layer> = manifest
        .layers
        .iter()
        .map(|l| {
            Digest::parse(&l.digest)
                .map(|d| Layer { path: ctx.blobs.path(&d), media_type: l.media_type.clone() })
        })
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let limits = ctx.limits;
    let fill = move |tree: &Path, cancel: &Cancel| flatten::apply_layers(tree, &sources, limits, cancel);
    build(info, fill, req.size, &ctx, &events).await
}

/// Makes an image from a flat rootfs tar (plain, gzip or zstd) read from `input`.
pub async fn import(
    name: String,
    file: String,
    size: Option<u64>,
    replace: bool,
    input: std::fs::File,
    ctx: PullCtx,
    events: mpsc::UnboundedSender<PullEvent>,
) -> Result<ImageInfo, Error> {
    images::validate_name(&name)?;
    check_replace(&name, replace, &ctx).await?;
    let info = ImageInfo {
        name,
        source: ImageSource::Imported { file },
        layers: vec![],
        entrypoint: vec![],
        cmd: vec![],
        env: vec![],
        workdir: String::new(),
        user: String::new(),
        created: None,
        added_at: now(),
        content_bytes: 0,
        rootfs_bytes: 0,
    };
    let limits = ctx.limits;
    let fill = move |tree: &Path, cancel: &Cancel| flatten::apply_stream(tree, input, limits, cancel);
    build(info, fill, size, &ctx, &events).await
}

/// Fills a staging tree with `fill`, builds ext4 from it, and installs the image `info.name`.
/// Dropping this future (the client went away) stops it: mkfs is killed, `fill` stops at its
/// next read, and the staging dir goes once neither uses it.
async fn build(
    info: ImageInfo,
    fill: impl FnOnce(&Path, &Cancel) -> Result<super::extract::Stats, String> + Send + 'static,
    size: Option<u64>,
    ctx: &PullCtx,
    events: &mpsc::UnboundedSender<PullEvent>,
) -> Result<ImageInfo, Error> {
    let staging = Arc::new(
        ctx.images.staging(&info.name).map_err(|e| fail(format!("cannot create a staging dir: {e}")))?,
    );
    let built = build_in(&staging, info, fill, size, ctx, events).await;
    // The blocking work has let go of it by now (it is awaited to the end).
    if built.is_err()
        && let Ok(staging) = Arc::try_unwrap(staging)
    {
        let _ = tokio::task::spawn_blocking(move || staging.remove_now()).await;
    }
    built
}

async fn build_in(
    staging: &Arc<Staging>,
    mut info: ImageInfo,
    fill: impl FnOnce(&Path, &Cancel) -> Result<super::extract::Stats, String> + Send + 'static,
    size: Option<u64>,
    ctx: &PullCtx,
    events: &mpsc::UnboundedSender<PullEvent>,
) -> Result<ImageInfo, Error> {
    let (cancel, _cancel_on_drop) = Cancel::new();
    let tree = staging.path.join("tree");
    std::fs::create_dir(&tree).map_err(|e| fail(format!("cannot create {}: {e}", tree.display())))?;
    let _ = events.send(PullEvent::Stage { name: "flattening".into() });
    let (t, held) = (tree.clone(), staging.clone());
    let stats = blocking(move || {
        let _held = held;
        fill(&t, &cancel)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("cannot flatten the image: {e}")))?;
    let _ = events.send(PullEvent::Stage { name: "building ext4".into() });
    let rootfs = staging.path.join(images::ROOTFS);
    let rootfs_bytes = flatten::build_ext4(&tree, &stats, size, &rootfs).await.map_err(fail)?;
    let t = tree.clone();
    blocking(move || std::fs::remove_dir_all(&t).map_err(|e| e.to_string())).await.map_err(fail)?;
    info.content_bytes = stats.content_bytes;
    info.rootfs_bytes = rootfs_bytes;
    let _held = ctx.locks.lock(format!("image:{}", info.name)).await;
    let (store, i) = (ctx.images.clone(), info.clone());
    let staging = staging.clone();
    blocking(move || store.install(&staging, &i)).await.map_err(fail)?;
    Ok(info)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("worker failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_come_from_repository_and_tag() {
        let name = |r: &str| default_name(&r.parse().unwrap());
        assert_eq!(name("alpine"), "alpine");
        assert_eq!(name("alpine:3.19"), "alpine-3.19");
        assert_eq!(name("127.0.0.1:5000/team/app:V1"), "app-v1");
        let digest = format!("busybox@sha256:{}", "ab".repeat(32));
        assert_eq!(name(&digest), "busybox-abababababab");
    }
}
