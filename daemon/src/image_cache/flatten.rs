//! From verified layer blobs to `rootfs.ext4`: pick each layer's decompressor (by media type,
//! checked against its magic bytes), apply the layers in order to a staging directory, then
//! build the filesystem with `mkfs.ext4 -d`, sized from the content with headroom.
//! Runs on a blocking thread: it is all disk and CPU.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::cancel::{Cancel, CancellableRead};
use super::extract::{Extractor, Limits, Stats};
use crate::subprocess::dies_with_daemon;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression a layer uses: its media type says, its first bytes must agree.
pub fn compression(media_type: &str, head: &[u8]) -> Result<Compression, String> {
    let by_magic = if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let claimed = if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Compression::Gzip
    } else if media_type.ends_with("+zstd") {
        Compression::Zstd
    } else if media_type.ends_with(".tar") || media_type.ends_with("rootfs.diff.tar") {
        Compression::None
    } else {
        return Err(format!("unsupported layer media type {media_type:?}"));
    };
    // An uncompressed tar starts with a file name, so it cannot be confused with either magic;
    // a claimed compression whose magic is missing is a broken or hostile layer.
    if claimed != Compression::None && claimed != by_magic {
        return Err(format!("layer claims {claimed:?} ({media_type}) but its bytes are not"));
    }
    Ok(by_magic)
}

/// Opens a layer blob as an uncompressed tar stream.
pub fn open_layer(path: &Path, media_type: &str, cancel: &Cancel) -> Result<Box<dyn Read>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let file = CancellableRead::new(file, cancel.clone());
    decompressed(BufReader::with_capacity(1 << 17, file), Some(media_type))
}

/// Wraps `input` in the decompressor it needs: the one `media_type` names (checked against the
/// magic bytes), or, without a media type, the one the magic bytes show.
pub fn decompressed(
    mut input: impl BufRead + 'static,
    media_type: Option<&str>,
) -> Result<Box<dyn Read>, String> {
    let head = input.fill_buf().map_err(|e| format!("cannot read the layer: {e}"))?;
    let head = &head[..head.len().min(4)];
    let kind = compression(media_type.unwrap_or("application/vnd.oci.image.layer.v1.tar"), head)?;
    Ok(match kind {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(|e| e.to_string())?)
        }
    })
}

/// One layer to apply: its blob on disk and its media type.
pub struct Layer {
    pub path: PathBuf,
    pub media_type: String,
}

/// Applies `layers` in order to the empty directory `staging`.
pub fn apply_layers(
    staging: &Path,
    layers: &[Layer],
    limits: Limits,
    cancel: &Cancel,
) -> Result<Stats, String> {
    let mut extractor =
        Extractor::new(staging, limits).map_err(|e| format!("cannot open {}: {e}", staging.display()))?;
    for (i, layer) in layers.iter().enumerate() {
        let reader = open_layer(&layer.path, &layer.media_type, cancel)
            .map_err(|e| format!("layer {}: {e}", i + 1))?;
        extractor.apply_layer(reader, i + 1).map_err(|e| e.to_string())?;
    }
    extractor.finish().map_err(|e| e.to_string())
}

/// Applies one tar stream (gzip, zstd or plain, told apart by magic) to `staging`.
pub fn apply_stream(staging: &Path, input: File, limits: Limits, cancel: &Cancel) -> Result<Stats, String> {
    let mut extractor =
        Extractor::new(staging, limits).map_err(|e| format!("cannot open {}: {e}", staging.display()))?;
    let input = CancellableRead::new(input, cancel.clone());
    let reader = decompressed(BufReader::with_capacity(1 << 17, input), None)?;
    extractor.apply_layer(reader, 1).map_err(|e| e.to_string())?;
    extractor.finish().map_err(|e| e.to_string())
}

/// The size to give a filesystem holding `stats`: content plus a block per entry, 25 % and
/// 64 MiB headroom, rounded up to a MiB.
pub fn default_size(stats: &Stats) -> u64 {
    let needed = stats.content_bytes + stats.entries * 4096;
    let size = needed + needed / 4 + (64 << 20);
    size.div_ceil(1 << 20) << 20
}

/// Finds a program in PATH or the sbin directories (a user's PATH often lacks them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds `out` (created, sparse) as an ext4 filesystem holding `staging`. mkfs.ext4 is killed
/// when this future is dropped (the client went away) and when the daemon dies.
pub async fn build_ext4(staging: &Path, stats: &Stats, size: Option<u64>, out: &Path) -> Result<u64, String> {
    let mkfs = find_program("mkfs.ext4")
        .ok_or("mkfs.ext4 is not installed: install e2fsprogs (`apt-get install e2fsprogs`)")?;
    let size = size.unwrap_or_else(|| default_size(stats));
    let file =
        tokio::fs::File::create(out).await.map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    file.set_len(size).await.map_err(|e| format!("cannot size {}: {e}", out.display()))?;
    drop(file);
    let inodes = stats.entries + stats.entries / 5 + 4096;
    let mut cmd = dies_with_daemon(mkfs);
    cmd.args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-m", "0", "-N", &inodes.to_string(), "-d"])
        .arg(staging)
        .arg(out);
    let output = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("Could not allocate") || stderr.contains("No space left") {
            format!(" (the image needs more than {} MiB: pass a larger --size)", size >> 20)
        } else {
            String::new()
        };
        return Err(format!("mkfs.ext4 failed{hint}: {}", stderr.trim()));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_media_type_and_is_checked_against_magic() {
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let docker_gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        let zst = "application/vnd.oci.image.layer.v1.tar+zstd";
        let tar = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(compression(gz, &GZIP_MAGIC), Ok(Compression::Gzip));
        assert_eq!(compression(docker_gz, &GZIP_MAGIC), Ok(Compression::Gzip));
        assert_eq!(compression(zst, &ZSTD_MAGIC), Ok(Compression::Zstd));
        assert_eq!(compression(tar, b"etc/"), Ok(Compression::None));
        assert!(compression(gz, b"etc/").unwrap_err().contains("claims Gzip"));
        assert!(compression(zst, &GZIP_MAGIC).is_err());
        assert!(compression("application/x-bogus", &GZIP_MAGIC).is_err());
    }

    #[test]
    fn default_size_has_headroom() {
        let s = Stats { entries: 1000, content_bytes: 100 << 20, skipped_devices: 0 };
        let size = default_size(&s);
        assert!(size >= (100 << 20) + 1000 * 4096 + (64 << 20));
        assert_eq!(size % (1 << 20), 0);
    }
}
