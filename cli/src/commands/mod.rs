//! One file per command group, each a short function: parse, call, print.

pub mod completion;
pub mod daemon;
pub mod image;
pub mod kernel;
pub mod version;
pub mod vm;
