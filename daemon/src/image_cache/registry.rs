//! Talking to a registry with oci-client: resolve a reference to one image manifest for this
//! host's platform (through an index if there is one), and fetch blobs into the verified cache,
//! resuming partial downloads with Range requests. Manifests are parsed here, not by
//! oci-client, so OCI and docker v2 documents are handled alike and their digests checked.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use protocol::image::{Credentials, PullEvent};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::blobs::BlobStore;
use super::digest::Digest;
use super::locks::KeyLocks;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Manifests and configs are small; anything bigger is not one.
const MAX_DOCUMENT: usize = 4 << 20;
const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// The image manifest chosen for this host.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config banger keeps.
#[derive(Debug, Default, Deserialize)]
pub struct ImageConfig {
    pub created: Option<String>,
    pub config: Option<RunConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// The OCI architecture (and variant) of this host.
pub fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

/// Whether `registry` (host[:port]) is on this machine: plain HTTP is allowed there by default.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

/// Plain HTTP for loopback registries and those configured with `--insecure-registry`.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|r| r == registry)
}

impl Registry {
    pub fn new(reference: Reference, credentials: Option<&Credentials>, insecure: &[String]) -> Self {
        let registry = reference.resolve_registry().to_string();
        let plain_http = plain_http(&registry, insecure);
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Registry { client: Client::new(config), reference, auth }
    }

    async fn document(&self, reference: &Reference) -> Result<(Document, Digest, Vec<u8>), String> {
        let accepted: Vec<&str> = INDEX_TYPES.iter().chain(MANIFEST_TYPES.iter()).copied().collect();
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &accepted)
            .await
            .map_err(|e| format!("cannot fetch the manifest of {}: {e}", reference.whole()))?;
        if bytes.len() > MAX_DOCUMENT {
            return Err(format!(
                "the manifest of {} is {} bytes; that is not a manifest",
                reference.whole(),
                bytes.len()
            ));
        }
        let digest = Digest::of(&bytes);
        if let Some(pinned) = reference.digest()
            && Digest::parse(pinned)? != digest
        {
            return Err(format!(
                "the registry sent a manifest hashing to {digest}, not the requested {pinned}"
            ));
        }
        let doc: Document = serde_json::from_slice(&bytes).map_err(|e| format!("malformed manifest: {e}"))?;
        if doc.schema_version == Some(1) {
            return Err(
                "docker schema 1 manifests are not supported; push the image with a current tool".into()
            );
        }
        Ok((doc, digest, bytes.to_vec()))
    }

    /// Resolves the reference to this host's image manifest.
    pub async fn manifest(&self) -> Result<Manifest, String> {
        let (doc, digest, _) = self.document(&self.reference).await?;
        let (doc, digest) = match doc.manifests {
            Some(entries) => {
                let (arch, variant) = host_platform();
                let chosen = entries.iter().find(|e| {
                    e.platform.as_ref().is_some_and(|p| {
                        p.os == "linux"
                            && p.architecture == arch
                            && (p.variant.is_none() || variant.is_none() || p.variant.as_deref() == variant)
                    })
                });
                let Some(entry) = chosen else {
                    let offered: Vec<String> = entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref())
                        .map(|p| {
                            format!(
                                "{}/{}{}",
                                p.os,
                                p.architecture,
                                p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
                            )
                        })
                        .collect();
                    return Err(format!(
                        "{} has no image for linux/{arch}; it offers {}",
                        self.reference.whole(),
                        offered.join(", ")
                    ));
                };
                let by_digest = self.reference.clone_with_digest(entry.digest.clone());
                let (doc, digest, _) = self.document(&by_digest).await?;
                if doc.manifests.is_some() {
                    return Err("an index points at another index; banger follows one level".into());
                }
                (doc, digest)
            }
            None => (doc, digest),
        };
        if let Some(t) = &doc.media_type
            && !MANIFEST_TYPES.contains(&t.as_str())
        {
            return Err(format!("unsupported manifest media type {t:?}"));
        }
        match (doc.config, doc.layers) {
            (Some(config), Some(layers)) => Ok(Manifest { digest, config, layers }),
            _ => Err("the manifest has no config or no layers".into()),
        }
    }

    /// Makes sure the blob is in the cache, downloading (and resuming) as needed.
    pub async fn fetch(
        &self,
        desc: &Descriptor,
        blobs: &BlobStore,
        locks: &KeyLocks,
        events: &mpsc::UnboundedSender<PullEvent>,
    ) -> Result<(), String> {
        let digest = Digest::parse(&desc.digest)?;
        // One download per blob at a time, across all pulls.
        let _held = locks.lock(format!("blob:{digest}")).await;
        if blobs.has(&digest) {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                let _ = events.send(PullEvent::Retrying {
                    digest: digest.to_string(),
                    attempt,
                    error: last.clone(),
                });
                tokio::time::sleep(Duration::from_millis(200 << (attempt - 2))).await;
            }
            if let Err(e) = self.download(&digest, desc, blobs, events).await {
                last = e;
                continue;
            }
            let (store, d) = (blobs.clone(), digest.clone());
            match tokio::task::spawn_blocking(move || store.commit(&d)).await {
                Ok(Ok(())) => {
                    let _ = events.send(PullEvent::Verified { digest: digest.to_string() });
                    return Ok(());
                }
                Ok(Err(e)) => last = e,
                Err(e) => last = format!("verification task failed: {e}"),
            }
        }
        Err(format!("cannot fetch {digest} after {ATTEMPTS} attempts: {last}"))
    }

    async fn download(
        &self,
        digest: &Digest,
        desc: &Descriptor,
        blobs: &BlobStore,
        events: &mpsc::UnboundedSender<PullEvent>,
    ) -> Result<(), String> {
        let partial = blobs.partial(digest);
        let mut have = tokio::fs::metadata(&partial).await.map(|m| m.len()).unwrap_or(0);
        if have > desc.size {
            have = 0;
        }
        if have == desc.size && have > 0 {
            return Ok(());
        }
        let oci = OciDescriptor {
            digest: desc.digest.clone(),
            size: desc.size as i64,
            media_type: desc.media_type.clone(),
            ..Default::default()
        };
        let response = self
            .client
            .pull_blob_stream_partial(&self.reference, &oci, have, None)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let (stream, resume) = match response {
            BlobResponse::Partial(s) if have > 0 => (s, true),
            BlobResponse::Partial(s) | BlobResponse::Full(s) => (s, false),
        };
        let mut done = if resume { have } else { 0 };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(&partial)
            .await
            .map_err(|e| write_error(&partial, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut stream = stream.stream;
        let mut reported = done;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("transfer broke at byte {done}: {e}"))?;
            done += chunk.len() as u64;
            if done > desc.size {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(format!(
                    "the registry sent more than the {} bytes the manifest declares",
                    desc.size
                ));
            }
            out.write_all(&chunk).await.map_err(|e| write_error(&partial, e))?;
            if done - reported >= 256 << 10 || done == desc.size {
                reported = done;
                let _ =
                    events.send(PullEvent::Progress { digest: digest.to_string(), done, total: desc.size });
            }
        }
        out.flush().await.map_err(|e| write_error(&partial, e))?;
        out.get_ref().sync_data().await.map_err(|e| write_error(&partial, e))?;
        if done != desc.size {
            return Err(format!("transfer ended at byte {done} of {}", desc.size));
        }
        Ok(())
    }

    /// Reads a small cached blob (config) that [`Registry::fetch`] verified.
    pub async fn read_small(blobs: &BlobStore, desc: &Descriptor) -> Result<Vec<u8>, String> {
        if desc.size as usize > MAX_DOCUMENT {
            return Err(format!("the image config is {} bytes; refusing", desc.size));
        }
        let digest = Digest::parse(&desc.digest)?;
        tokio::fs::read(blobs.path(&digest)).await.map_err(|e| format!("cannot read {digest}: {e}"))
    }
}

fn write_error(path: &std::path::Path, e: std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        format!(
            "no space left on the device holding {}; free some, or run `banger image cache prune`",
            path.display()
        )
    } else {
        format!("cannot write {}: {e}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in ["localhost:5000", "127.0.0.1:5000", "127.8.0.1", "[::1]:5000", "localhost"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "registry.local:5000", "[2001:db8::1]:5000"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn plain_http_only_where_allowed() {
        let insecure = vec!["registry.local:5000".to_string()];
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("registry.local:5000", &insecure));
        assert!(!plain_http("registry.local:5001", &insecure), "the port is part of the name");
        assert!(!plain_http("docker.io", &insecure));
    }
}
