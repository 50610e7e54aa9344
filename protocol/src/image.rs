//! Image messages carried by [`crate::daemon::Request`] and [`crate::daemon::Response`].

use serde::{Deserialize, Serialize};

/// What `banger image pull` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// e.g. `alpine:3.19`, `registry.local:5000/team/app@sha256:…`.
    pub reference: String,
    /// The image's local name; derived from the reference when absent.
    pub name: Option<String>,
    /// The rootfs size in bytes; derived from the content when absent.
    pub size: Option<u64>,
    /// Credentials the CLI resolved from its user's docker config, if any.
    pub auth: Option<Credentials>,
}

/// Basic registry credentials (a token from a credential helper travels as the password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <redacted> }}", self.username)
    }
}

/// One step of a pull, streamed to the CLI as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullEvent {
    /// The manifest is known: what will be fetched.
    Resolved { manifest_digest: String, layers: Vec<LayerProgress> },
    /// Bytes of one blob are on disk (`done` of `total`).
    Progress { digest: String, done: u64, total: u64 },
    /// A blob was verified and moved into the cache.
    Verified { digest: String },
    /// A transfer failed and is being resumed.
    Retrying { digest: String, attempt: u32, error: String },
    /// The pull waits for a cache prune to finish.
    WaitingForPrune,
    /// A later stage started: `flattening`, `building ext4`.
    Stage { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    pub digest: String,
    pub size: u64,
    /// Already in the blob cache; nothing to fetch.
    pub cached: bool,
}

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSource {
    Pulled { reference: String, manifest_digest: String, config_digest: String },
    Imported { file: String },
}

/// An image as stored: `images/<name>/image.json` holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub source: ImageSource,
    pub layers: Vec<LayerProgress>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// The image config's `created`, as written there (RFC 3339), if any.
    pub created: Option<String>,
    /// Unix seconds when it was pulled or imported.
    pub added_at: u64,
    /// Bytes of file content in the flattened tree.
    pub content_bytes: u64,
    /// Size of `rootfs.ext4`.
    pub rootfs_bytes: u64,
}

/// What `banger image cache prune` did or would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub freed_bytes: u64,
    pub blobs: u64,
    pub dir: String,
}
