//! Talking to a registry with oci-client: resolve a reference to one image manifest for this
//! host's platform (through an index if there is one), and fetch blobs into the verified cache,
//! resuming partial downloads with Range requests. Manifests are parsed here, not by
//! oci-client, so OCI and docker v2 documents are handled alike and their digests checked.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
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
    /// oci-client, only for its token dance (`auth`); requests are ours, so that a manifest is
    /// read with a cap and a blob's bytes are counted and hashed by us.
    client: Client,
    http: reqwest::Client,
    reference: Reference,
    auth: RegistryAuth,
    /// `scheme://registry/v2/repository`.
    base: String,
    bearer: tokio::sync::OnceCell<Option<String>>,
}

/// Plain HTTP for loopback registries and those configured with `--insecure-registry`.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|r| r == registry)
}

/// Why a blob could not be fetched. Only a broken transfer is worth another attempt; content
/// that does not match what the manifest declares will not get better by asking again.
#[derive(Debug)]
pub enum FetchError {
    Transient(String),
    Integrity(String),
    Fatal(String),
}

impl FetchError {
    pub fn message(self) -> String {
        match self {
            FetchError::Transient(m) | FetchError::Integrity(m) | FetchError::Fatal(m) => m,
        }
    }
}

impl Registry {
    pub fn new(reference: Reference, credentials: Option<&Credentials>, insecure: &[String]) -> Self {
        let registry = reference.resolve_registry().to_string();
        let plain_http = plain_http(&registry, insecure);
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
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
        // reqwest drops Authorization when a redirect leaves the registry's host (blob stores).
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        let scheme = if plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{registry}/v2/{}", reference.repository());
        Registry { client: Client::new(config), http, reference, auth, base, bearer: Default::default() }
    }

    /// A GET with this registry's credentials: a bearer token when the registry hands one out,
    /// else basic credentials when the user has some.
    async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        let bearer =
            self.bearer
                .get_or_try_init(|| async {
                    self.client.auth(&self.reference, &self.auth, RegistryOperation::Pull).await.map_err(
                        |e| format!("cannot authenticate to {}: {e}", self.reference.resolve_registry()),
                    )
                })
                .await?;
        let request = self.http.get(url);
        Ok(match (bearer, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        })
    }

    /// A document (manifest or index), read with a cap as it arrives: a registry cannot make
    /// the daemon hold more than [`MAX_DOCUMENT`] bytes of it.
    async fn fetch_document(&self, reference: &Reference) -> Result<Vec<u8>, String> {
        let tag_or_digest = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let accepted =
            INDEX_TYPES.iter().chain(MANIFEST_TYPES.iter()).copied().collect::<Vec<_>>().join(", ");
        let whole = reference.whole();
        let response = self
            .get(&url)
            .await?
            .header(reqwest::header::ACCEPT, accepted)
            .send()
            .await
            .map_err(|e| format!("cannot fetch the manifest of {whole}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("cannot fetch the manifest of {whole}: the registry answered {status}"));
        }
        let too_big = || {
            format!(
                "the manifest of {whole} is larger than {} MiB; that is not a manifest",
                MAX_DOCUMENT >> 20
            )
        };
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("the manifest of {whole} broke off: {e}"))?;
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn document(&self, reference: &Reference) -> Result<(Document, Digest), String> {
        let bytes = self.fetch_document(reference).await?;
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
        Ok((doc, digest))
    }

    /// Resolves the reference to this host's image manifest.
    pub async fn manifest(&self) -> Result<Manifest, String> {
        let (doc, digest) = self.document(&self.reference).await?;
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
                // Checked before it goes into a URL.
                let entry_digest = Digest::parse(&entry.digest)?;
                let by_digest = self.reference.clone_with_digest(entry_digest.to_string());
                let (doc, digest) = self.document(&by_digest).await?;
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

    /// Makes sure the blob is in the cache, downloading (and resuming) as needed. A broken
    /// transfer is resumed; content that is not what the manifest declares is refused at once
    /// and its partial file removed.
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
            let outcome = match self.download(&digest, desc, blobs, events).await {
                Ok(()) => {
                    let (store, d) = (blobs.clone(), digest.clone());
                    match tokio::task::spawn_blocking(move || store.commit(&d)).await {
                        Ok(result) => result,
                        Err(e) => Err(FetchError::Transient(format!("verification task failed: {e}"))),
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    let _ = events.send(PullEvent::Verified { digest: digest.to_string() });
                    return Ok(());
                }
                Err(FetchError::Transient(e)) => last = e,
                Err(e) => {
                    let _ = tokio::fs::remove_file(blobs.partial(&digest)).await;
                    return Err(e.message());
                }
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
    ) -> Result<(), FetchError> {
        use FetchError::{Fatal, Integrity, Transient};
        let partial = blobs.partial(digest);
        let mut have = tokio::fs::metadata(&partial).await.map(|m| m.len()).unwrap_or(0);
        if have > desc.size {
            have = 0;
        }
        if have == desc.size && have > 0 {
            return Ok(());
        }
        let url = format!("{}/blobs/{digest}", self.base);
        let mut request = self.get(&url).await.map_err(Transient)?;
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| Transient(format!("request failed: {e}")))?;
        let status = response.status();
        let resume = match status {
            reqwest::StatusCode::PARTIAL_CONTENT if have > 0 => true,
            s if s.is_success() => false,
            s if s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                return Err(Transient(format!("the registry answered {s}")));
            }
            s => return Err(Fatal(format!("cannot fetch {digest}: the registry answered {s}"))),
        };
        let mut done = if resume { have } else { 0 };
        let more = |n: u64| {
            Integrity(format!(
                "the registry sent {n} bytes or more of {digest}, but the manifest declares {}",
                desc.size
            ))
        };
        if let Some(len) = response.content_length()
            && done + len > desc.size
        {
            return Err(more(done + len));
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(&partial)
            .await
            .map_err(|e| Fatal(write_error(&partial, e)))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut stream = response.bytes_stream();
        let mut reported = done;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Transient(format!("transfer broke at byte {done}: {e}")))?;
            done += chunk.len() as u64;
            if done > desc.size {
                return Err(more(done));
            }
            out.write_all(&chunk).await.map_err(|e| Fatal(write_error(&partial, e)))?;
            if done - reported >= 256 << 10 || done == desc.size {
                reported = done;
                let _ =
                    events.send(PullEvent::Progress { digest: digest.to_string(), done, total: desc.size });
            }
        }
        out.flush().await.map_err(|e| Fatal(write_error(&partial, e)))?;
        out.get_ref().sync_data().await.map_err(|e| Fatal(write_error(&partial, e)))?;
        if done != desc.size {
            return Err(Transient(format!("transfer ended at byte {done} of {}", desc.size)));
        }
        Ok(())
    }

    /// Reads a small cached blob (config) that [`Registry::fetch`] verified.
    pub async fn read_small(blobs: &BlobStore, desc: &Descriptor) -> Result<Vec<u8>, String> {
        check_document_size(desc)?;
        let digest = Digest::parse(&desc.digest)?;
        tokio::fs::read(blobs.path(&digest)).await.map_err(|e| format!("cannot read {digest}: {e}"))
    }
}

/// An image config is a document like a manifest: refused before download when it declares
/// more than [`MAX_DOCUMENT`].
pub fn check_document_size(desc: &Descriptor) -> Result<(), String> {
    if desc.size > MAX_DOCUMENT as u64 {
        return Err(format!(
            "the image config declares {} bytes, more than the {} MiB a config may have",
            desc.size,
            MAX_DOCUMENT >> 20
        ));
    }
    Ok(())
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
