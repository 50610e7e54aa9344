//! Test images written by the tests themselves: layers as tars with exactly the entries a test
//! needs (whiteouts, devices, hardlinks, owners, xattrs, hostile names), compressed as asked,
//! wrapped in an OCI or docker v2 manifest (or a multi-arch index), pushed to a real registry
//! with oci-client and written as an OCI layout for `umoci unpack`.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer tar with verbatim names (the tar crate refuses hostile ones on its own path).
pub struct LayerTar(tar::Builder<Vec<u8>>);

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }
}

pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub data: &'a [u8],
    pub link: Option<&'a str>,
    pub device: (u32, u32),
    pub xattrs: &'a [(&'a str, &'a [u8])],
}

impl<'a> Entry<'a> {
    pub fn new(name: &'a str, kind: tar::EntryType) -> Self {
        Entry { name, kind, mode: 0o644, uid: 0, gid: 0, data: b"", link: None, device: (0, 0), xattrs: &[] }
    }
}

impl LayerTar {
    pub fn entry(mut self, e: Entry) -> Self {
        if !e.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> =
                e.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
            self.0.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).expect("pax");
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if e.kind.is_character_special() || e.kind.is_block_special() {
            h.set_device_major(e.device.0).expect("major");
            h.set_device_minor(e.device.1).expect("minor");
        }
        let raw = h.as_old_mut();
        raw.name = [0; 100];
        raw.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        if let Some(l) = e.link {
            raw.linkname = [0; 100];
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.0.append(&h, e.data).expect("append");
        self
    }
    pub fn dir(self, name: &str) -> Self {
        self.entry(Entry { mode: 0o755, ..Entry::new(name, tar::EntryType::Directory) })
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(Entry { data, ..Entry::new(name, tar::EntryType::Regular) })
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(Entry { mode: 0o777, link: Some(target), ..Entry::new(name, tar::EntryType::Symlink) })
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(Entry { link: Some(target), ..Entry::new(name, tar::EntryType::Link) })
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().expect("finish tar")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    use std::io::Write;
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// One built image: its blobs and manifest, ready to push or write.
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
    /// (digest, bytes); the config first.
    pub blobs: Vec<(String, Vec<u8>)>,
}

pub fn image(
    layers: &[Vec<u8>],
    compression: Compression,
    format: Format,
    arch: &str,
    cmd: &[&str],
) -> Image {
    let config = json!({ "Cmd": cmd, "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/", "User": "0" });
    image_configured(layers, compression, format, arch, config)
}

/// An image whose config's `config` object (Entrypoint, Cmd, Env, WorkingDir, User) is `config`.
pub fn image_configured(
    layers: &[Vec<u8>],
    compression: Compression,
    format: Format,
    arch: &str,
    config: Value,
) -> Image {
    let layer_type = match (format, compression) {
        (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Format::Docker, Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (Format::Docker, _) => "application/vnd.docker.image.rootfs.diff.tar",
    };
    let (manifest_type, config_type) = match format {
        Format::Oci => {
            ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json")
        }
        Format::Docker => (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        ),
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = serde_json::to_vec(&json!({
        "created": "2026-11-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config json");
    let mut blobs = vec![(sha256(&config), config.clone())];
    let mut descriptors: Vec<Value> = vec![];
    for l in layers {
        let blob = compress(l, compression);
        descriptors.push(json!({ "mediaType": layer_type, "digest": sha256(&blob), "size": blob.len() }));
        blobs.push((sha256(&blob), blob));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": sha256(&config), "size": config.len() },
        "layers": descriptors,
    }))
    .expect("manifest json");
    Image { manifest, manifest_type, blobs }
}

fn client() -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
}

/// Pushes `image` as `registry/repo:tag` (or only by digest when `tag` is None).
pub async fn push(registry: &str, repo: &str, tag: Option<&str>, image: &Image) -> String {
    push_as(registry, repo, tag, image, RegistryAuth::Anonymous).await
}

/// Pushes with a user and password (a registry that requires them).
pub async fn push_with_auth(
    registry: &str,
    repo: &str,
    tag: &str,
    image: &Image,
    (user, password): (&str, &str),
) {
    push_as(registry, repo, Some(tag), image, RegistryAuth::Basic(user.into(), password.into())).await;
}

async fn push_as(registry: &str, repo: &str, tag: Option<&str>, image: &Image, auth: RegistryAuth) -> String {
    let c = client();
    let digest = sha256(&image.manifest);
    let by_digest: Reference = format!("{registry}/{repo}@{digest}").parse().expect("reference");
    c.store_auth_if_needed(registry, &auth).await;
    for (d, bytes) in &image.blobs {
        c.push_blob(&by_digest, bytes.clone(), d).await.expect("push blob");
    }
    let target: Reference = match tag {
        Some(t) => format!("{registry}/{repo}:{t}").parse().expect("reference"),
        None => by_digest,
    };
    let ct = http::HeaderValue::from_static(image.manifest_type);
    c.push_manifest_raw(&target, image.manifest.clone(), ct).await.expect("push manifest");
    digest
}

/// Pushes one image per architecture and an OCI index over them as `repo:tag`.
pub async fn push_index(registry: &str, repo: &str, tag: &str, images: &[(&str, &Image)]) {
    let mut manifests = vec![];
    for (arch, image) in images {
        let digest = push(registry, repo, None, image).await;
        manifests.push(json!({
            "mediaType": image.manifest_type,
            "digest": digest,
            "size": image.manifest.len(),
            "platform": { "os": "linux", "architecture": arch },
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("index json");
    let target: Reference = format!("{registry}/{repo}:{tag}").parse().expect("reference");
    let ct = http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json");
    client().push_manifest_raw(&target, index, ct).await.expect("push index");
}

/// Writes `image` as an OCI image layout at `dir` with ref name `tag` (for umoci).
pub fn write_layout(dir: &Path, tag: &str, image: &Image) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let manifest_digest = sha256(&image.manifest);
    for (d, bytes) in image.blobs.iter().chain([(manifest_digest.clone(), image.manifest.clone())].iter()) {
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("blob");
    }
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.manifest_type,
            "digest": manifest_digest,
            "size": image.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index.json");
}
