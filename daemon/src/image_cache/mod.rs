//! ImageCache: owns the blob cache and the image store.
#![allow(dead_code)] // wired into the actor tree in the next step
pub mod blobs;
pub mod digest;
pub mod extract;
pub mod flatten;
pub mod images;
