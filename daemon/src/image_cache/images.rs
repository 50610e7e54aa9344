//! The image store: `images/<name>/` holds `rootfs.ext4` and `image.json`. An image is built in
//! `images/.tmp-*` and swapped in by rename, so a reader never sees half an image and a crash
//! leaves only a temp dir that the next start removes. An `image.json` that cannot be read is
//! kept aside and made again from what is left (the rootfs), so the image stays listed, usable
//! and its name taken; what happened is kept for `daemon status`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::image::{ImageInfo, ImageSource};
use protocol::{Error, ErrorKind};
use slog::{Logger, warn};

use super::error::ImageError;
use crate::fsutil::{move_aside, sync_dir, write_atomic};

pub const ROOTFS: &str = "rootfs.ext4";
const META: &str = "image.json";

/// An open file to clone a VM's disk from, and the disk's size.
pub struct BaseDiskFor {
    pub base: File,
    pub disk_bytes: u64,
}

pub struct ImageStore {
    dir: PathBuf,
    next_tmp: AtomicU64,
    /// What was made of unreadable metadata, one line each.
    recovered: Mutex<Vec<String>>,
    log: Logger,
}

/// A temp dir in the store, removed on drop unless installed. The removal runs on a blocking
/// thread when dropped inside the runtime (a cancelled pull drops it in the actor's context).
pub struct Staging {
    pub path: PathBuf,
}

impl Staging {
    /// Removes it now, on this (blocking) thread: a failed pull's staging is gone before the
    /// client hears of the failure.
    pub fn remove_now(mut self) {
        let _ = std::fs::remove_dir_all(std::mem::take(&mut self.path));
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        if path.as_os_str().is_empty() {
            return;
        }
        let remove = move || {
            let _ = std::fs::remove_dir_all(&path);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Image names: what `vm create --image` and directory names can both carry safely.
pub fn validate_name(name: &str) -> Result<(), Error> {
    validate_object_name("image", name)
}

/// The names of images and kernels (`what`): 1-63 of a-z, 0-9, '.', '_', '-'.
pub fn validate_object_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(ImageError::InvalidName { what, name: name.into() }.into()) }
}

impl ImageStore {
    pub fn new(state_dir: &Path, log: Logger) -> Self {
        ImageStore {
            dir: state_dir.join("images"),
            next_tmp: AtomicU64::new(0),
            recovered: Mutex::default(),
            log,
        }
    }

    /// What was made of unreadable `image.json` files since the daemon started.
    pub fn recovered(&self) -> Vec<String> {
        self.recovered.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// An unreadable `image.json` (`why`) whose rootfs is there: kept aside, and a new one written
    /// from the rootfs (source and run settings are lost; the image boots as before).
    fn recover(&self, name: &str, why: String) -> Result<ImageInfo, Error> {
        let dir = self.dir.join(name);
        let rootfs = std::fs::metadata(dir.join(ROOTFS)).map_err(|e| {
            Error::internal(format!("image {name}: {why}, and its rootfs is unreadable too: {e}"))
        })?;
        let kept = match dir.join(META).exists() {
            true => move_aside(&dir.join(META))
                .map(|aside| format!("kept as {}, ", aside.display()))
                .map_err(|e| Error::internal(format!("image {name}: {why}; cannot move it aside: {e}")))?,
            false => String::new(),
        };
        let note = format!("image {name}: {why}; {kept}its metadata made again from its rootfs");
        warn!(self.log, "{}", note);
        let added_at = rootfs.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let info = ImageInfo {
            name: name.to_string(),
            source: ImageSource::Imported { file: format!("unknown (image.json was unreadable: {why})") },
            layers: vec![],
            entrypoint: vec![],
            cmd: vec![],
            env: vec![],
            workdir: String::new(),
            user: String::new(),
            created: None,
            added_at: added_at.map_or(0, |d| d.as_secs()),
            content_bytes: 0,
            rootfs_bytes: rootfs.len(),
        };
        let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&dir.join(META), &json).map_err(|e| Error::internal(format!("{note}, but: {e}")))?;
        if let Ok(mut r) = self.recovered.lock() {
            r.push(note);
        }
        Ok(info)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes temp dirs a crash left behind. Called once, before any pull starts.
    pub fn clean_leftovers(&self) -> std::io::Result<usize> {
        std::fs::create_dir_all(&self.dir)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                std::fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn staging(&self, name: &str) -> std::io::Result<Staging> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".tmp-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Staging { path })
    }

    /// Writes `info` beside the rootfs in `staging`, then makes it the image `info.name`,
    /// replacing an older one atomically. The caller holds the name's lock.
    pub fn install(&self, staging: &Staging, info: &ImageInfo) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(info).map_err(|e| e.to_string())?;
        std::fs::write(staging.path.join(META), json)
            .map_err(|e| format!("cannot write image metadata: {e}"))?;
        sync_dir(&staging.path);
        let target = self.dir.join(&info.name);
        let old = self.dir.join(format!(
            ".tmp-old-{}-{}",
            info.name,
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let had_old = match std::fs::rename(&target, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("cannot replace image {}: {e}", info.name)),
        };
        if let Err(e) = std::fs::rename(&staging.path, &target) {
            if had_old {
                let _ = std::fs::rename(&old, &target);
            }
            return Err(format!("cannot install image {}: {e}", info.name));
        }
        sync_dir(&self.dir);
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<ImageInfo, Error> {
        validate_name(name)?;
        let path = self.dir.join(name).join(META);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.dir.join(name).join(ROOTFS).exists() {
                    return self.recover(name, "image.json is missing".into());
                }
                return Err(ImageError::NotFound(name.into()).into());
            }
            Err(e) => return Err(Error::internal(format!("cannot read {}: {e}", path.display()))),
        };
        serde_json::from_slice(&bytes).or_else(|e| self.recover(name, format!("image.json is corrupt: {e}")))
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::internal(format!("cannot list {}: {e}", self.dir.display()))),
        };
        let mut images: Vec<ImageInfo> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| match self.get(&n) {
                Ok(info) => Some(info),
                // A directory that holds no image.
                Err(e) if e.kind == ErrorKind::NotFound => None,
                // Nothing usable is left of it: said in the log and `daemon status`, not hidden.
                Err(e) => {
                    warn!(self.log, "an image cannot be read"; "image" => &n, "error" => &e.message);
                    if let Ok(mut r) = self.recovered.lock() {
                        r.push(format!("image {n} cannot be read: {}", e.message));
                    }
                    None
                }
            })
            .collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.get(name)?;
        let doomed =
            self.dir.join(format!(".tmp-rm-{name}-{}", self.next_tmp.fetch_add(1, Ordering::Relaxed)));
        std::fs::rename(self.dir.join(name), &doomed)
            .and_then(|()| std::fs::remove_dir_all(&doomed))
            .map_err(|e| Error::internal(format!("cannot remove image {name}: {e}")))
    }

    /// The base of a VM disk: `bytes` long if asked for, else the larger of `default_bytes`
    /// and the image. It is the image's rootfs when that is the size, else a copy grown once
    /// and kept beside it (`rootfs-<bytes>.ext4`), so each further VM of that image and size is
    /// only a clone. Grown copies go with the image (replaced or removed). The caller holds the
    /// name's lock.
    pub fn base_disk(
        &self,
        name: &str,
        bytes: Option<u64>,
        default_bytes: u64,
    ) -> Result<BaseDiskFor, Error> {
        self.get(name)?;
        let dir = self.dir.join(name);
        let open = |path: &Path| {
            File::open(path).map_err(|e| Error::internal(format!("cannot open {}: {e}", path.display())))
        };
        let rootfs = open(&dir.join(ROOTFS))?;
        let len = rootfs.metadata().map_err(|e| Error::internal(e.to_string()))?.len();
        let bytes = bytes.unwrap_or(default_bytes.max(len));
        if bytes < len {
            return Err(ImageError::DiskTooSmall { name: name.into(), bytes, len }.into());
        }
        let disk = |base| Ok(BaseDiskFor { base, disk_bytes: bytes });
        if bytes == len {
            return disk(rootfs);
        }
        let grown = dir.join(format!("rootfs-{bytes}.ext4"));
        if grown.exists() {
            return disk(open(&grown)?);
        }
        // Made under a temp name, so a crash never leaves a half-grown copy under the real one.
        let tmp = dir.join(format!(".rootfs-{bytes}.tmp"));
        let made = crate::disk::clone_file(&rootfs, &tmp)
            .and_then(|()| crate::disk::grow(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &grown).map_err(|e| e.to_string()));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::internal(format!("cannot make a {bytes}-byte disk of image {name}: {e}")));
        }
        sync_dir(&dir);
        disk(open(&grown)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_metadata_is_kept_aside_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path(), Logger::root(slog::Discard, slog::o!()));
        for (name, meta) in [("bad", Some(&b"{ garbage"[..])), ("bare", None), ("gone", Some(&b"{"[..]))] {
            std::fs::create_dir_all(dir.path().join("images").join(name)).unwrap();
            if let Some(meta) = meta {
                std::fs::write(dir.path().join("images").join(name).join(META), meta).unwrap();
            }
            if name != "gone" {
                std::fs::write(dir.path().join("images").join(name).join(ROOTFS), vec![0u8; 4096]).unwrap();
            }
        }
        let listed: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(listed, ["bad", "bare"], "each one with a rootfs stays listed");
        let bad = store.get("bad").unwrap();
        assert_eq!(bad.rootfs_bytes, 4096);
        assert!(
            matches!(&bad.source, ImageSource::Imported { file } if file.contains("image.json was unreadable"))
        );
        let aside: Vec<_> = std::fs::read_dir(dir.path().join("images/bad"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("image.json.corrupt-"))
            .collect();
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"{ garbage", "the bad file is kept");
        let notes = store.recovered();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes.iter().any(|n| n.starts_with("image gone cannot be read")), "{notes:?}");
    }

    #[test]
    fn names_are_validated() {
        for good in ["alpine", "alpine-3.19", "a", "x_y.z"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Alpine", "-x", ".hidden", "a/b", "..", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
