//! The image store: `images/<name>/` holds `rootfs.ext4` and `image.json`. An image is built in
//! `images/.tmp-*` and swapped in by rename, so a reader never sees half an image and a crash
//! leaves only a temp dir that the next start removes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::image::ImageInfo;
use protocol::{Error, ErrorKind};

use crate::fsutil::sync_dir;

pub const ROOTFS: &str = "rootfs.ext4";
const META: &str = "image.json";

/// An open file to clone a VM's disk from, and the disk's size.
pub struct BaseDiskFor {
    pub base: File,
    pub disk_bytes: u64,
}

#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    next_tmp: AtomicU64,
}

/// A temp dir in the store, removed on drop unless installed.
pub struct Staging {
    pub path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Image names: what `vm create --image` and directory names can both carry safely.
pub fn validate_name(name: &str) -> Result<(), Error> {
    validate_object_name("image", name)
}

/// The names of images and kernels (`what`): 1-63 of a-z, 0-9, '.', '_', '-'.
pub fn validate_object_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidInput, format!("invalid {what} name {name:?}"))
            .with_hint("use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"))
    }
}

impl ImageStore {
    pub fn new(state_dir: &Path) -> Self {
        ImageStore { dir: state_dir.join("images"), next_tmp: AtomicU64::new(0) }
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
    pub fn install(&self, staging: Staging, info: &ImageInfo) -> Result<(), String> {
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
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, format!("no image named {name:?}"))
                    .with_hint("see `banger image ls`")
            } else {
                Error::internal(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("{} is corrupt: {e}", path.display())))
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
            .filter_map(|n| self.get(&n).ok())
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
            let mib = |b: u64| b.div_ceil(1 << 20);
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a {} MiB disk cannot hold image {name} ({} MiB)", mib(bytes), mib(len)),
            )
            .with_hint(format!("pass --disk {}M or more", mib(len))));
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
    fn names_are_validated() {
        for good in ["alpine", "alpine-3.19", "a", "x_y.z"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Alpine", "-x", ".hidden", "a/b", "..", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
