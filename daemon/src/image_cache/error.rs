//! The ImageCache's own failures, turned into the wire's [`Error`] in one place.

use protocol::{Error, ErrorKind};

#[derive(Debug)]
pub enum ImageError {
    /// An image or kernel name (`what`) outside the allowed set.
    InvalidName {
        what: &'static str,
        name: String,
    },
    NotFound(String),
    /// The name is taken and `--replace` was not given.
    Exists(String),
    /// Another pull or import (`other`) holds the name; `what` would be tried again.
    InProgress {
        name: String,
        other: &'static str,
        what: &'static str,
    },
    BadReference {
        reference: String,
        why: String,
    },
    /// A layer declares more than `max_layer_bytes`.
    LayerTooLarge {
        digest: String,
        size: u64,
        max: u64,
    },
    /// The layers still to fetch do not fit in the cache's free space.
    NoSpace {
        needed: u64,
        free: u64,
        dir: String,
    },
    /// A disk of `bytes` asked for cannot hold the image's `len`.
    DiskTooSmall {
        name: String,
        bytes: u64,
        len: u64,
    },
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Error {
        match e {
            ImageError::InvalidName { what, name } => {
                Error::new(ErrorKind::InvalidInput, format!("invalid {what} name {name:?}"))
                    .with_hint("use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
            }
            ImageError::NotFound(name) => Error::new(ErrorKind::NotFound, format!("no image named {name:?}"))
                .with_hint("see `banger image ls`"),
            ImageError::Exists(name) => {
                Error::new(ErrorKind::Conflict, format!("an image named {name:?} exists already")).with_hint(
                    format!(
                        "pass --replace to replace it (VMs made from it keep their disks), choose another \
                         --name, or remove it first: banger image rm {name}"
                    ),
                )
            }
            ImageError::InProgress { name, other, what } => {
                let article = if other.starts_with('i') { "an" } else { "a" };
                Error::new(ErrorKind::Conflict, format!("{article} {other} of {name} is in progress"))
                    .with_hint(format!(
                        "wait for it to finish (or stop it), then {what} again; or choose another --name"
                    ))
            }
            ImageError::BadReference { reference, why } => {
                Error::new(ErrorKind::InvalidInput, format!("{reference:?} is not an image reference: {why}"))
                    .with_hint("write it as [registry/]repository[:tag][@sha256:digest], e.g. alpine:3.19")
            }
            ImageError::LayerTooLarge { digest, size, max } => Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "layer {digest} declares {size} bytes, more than the {max} allowed (max_layer_bytes)"
                ),
            )
            .with_hint("if the image is genuine, raise max_layer_bytes in [images] of bangerd.toml"),
            ImageError::NoSpace { needed, free, dir } => Error::new(
                ErrorKind::Unavailable,
                format!("the layers to fetch declare {needed} bytes, but {dir} has {free} bytes free"),
            )
            .with_hint("free some space, or run `banger image cache prune`"),
            ImageError::DiskTooSmall { name, bytes, len } => {
                let mib = |b: u64| b.div_ceil(1 << 20);
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("a {} MiB disk cannot hold image {name} ({} MiB)", mib(bytes), mib(len)),
                )
                .with_hint(format!("pass --disk {}M or more", mib(len)))
            }
        }
    }
}
