//! The blob cache: `<cache>/oci/blobs/sha256/<hex>`, verified content only. A download goes to
//! `<hex>.partial`, is hashed whole, and is renamed into place only when the digest matches, so
//! a crash or a kill leaves at most a partial file that the next pull resumes or replaces.
//! Purely a re-pull cache: prune may delete all of it.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::registry::FetchError;

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// What a prune freed (or would free).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub bytes: u64,
    pub blobs: u64,
}

impl BlobStore {
    pub fn new(cache_dir: &Path) -> Self {
        BlobStore { dir: cache_dir.join("oci/blobs/sha256") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ensure_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn partial(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.partial", digest.hex()))
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Hashes the partial file whole; renames it into place when it matches, deletes it when
    /// it does not.
    /// A mismatch is an integrity error (the registry sent other content than the manifest
    /// names), never worth a retry.
    pub fn commit(&self, digest: &Digest) -> Result<(), FetchError> {
        let partial = self.partial(digest);
        let file = File::open(&partial)
            .map_err(|e| FetchError::Transient(format!("cannot read {}: {e}", partial.display())))?;
        let actual = Digest::of_reader(std::io::BufReader::new(file))
            .map_err(|e| FetchError::Transient(format!("cannot hash {}: {e}", partial.display())))?;
        if &actual != digest {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Integrity(format!(
                "blob {digest} failed verification: the manifest expects {digest}, but the content \
                 the registry sent hashes to {actual}"
            )));
        }
        std::fs::rename(&partial, self.path(digest))
            .map_err(|e| FetchError::Fatal(format!("cannot store blob {digest}: {e}")))
    }

    /// Deletes every blob and partial download (or only counts them). A missing dir is empty.
    pub fn prune(&self, dry_run: bool) -> std::io::Result<Freed> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Freed::default()),
            Err(e) => return Err(e),
        };
        let mut freed = Freed::default();
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            if !dry_run {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            freed.bytes += meta.len();
            freed.blobs += 1;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_keeps_matching_content_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        store.ensure_dir().unwrap();
        let good = Digest::of(b"layer");
        std::fs::write(store.partial(&good), b"layer").unwrap();
        store.commit(&good).unwrap();
        assert!(store.has(&good));
        assert!(!store.partial(&good).exists());

        let bad = Digest::of(b"expected");
        std::fs::write(store.partial(&bad), b"tampered").unwrap();
        let err = store.commit(&bad).unwrap_err().message();
        assert!(err.contains(&format!("expects {bad}")), "{err}");
        assert!(err.contains(&format!("hashes to {}", Digest::of(b"tampered"))), "{err}");
        assert!(!store.has(&bad) && !store.partial(&bad).exists());
    }

    #[test]
    fn prune_counts_then_deletes_and_a_missing_dir_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(&dir.path().join("nowhere"));
        assert_eq!(store.prune(false).unwrap(), Freed::default());
        let store = BlobStore::new(dir.path());
        store.ensure_dir().unwrap();
        for i in 0..5u8 {
            let d = Digest::of(&[i; 10]);
            std::fs::write(store.partial(&d), [i; 10]).unwrap();
            store.commit(&d).unwrap();
        }
        std::fs::write(store.dir().join("x.partial"), [0; 7]).unwrap();
        assert_eq!(store.prune(true).unwrap(), Freed { bytes: 57, blobs: 6 });
        assert_eq!(store.prune(false).unwrap(), Freed { bytes: 57, blobs: 6 });
        assert_eq!(store.prune(true).unwrap(), Freed::default());
    }
}
