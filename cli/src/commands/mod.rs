//! One file per command group, each a short function: parse, call, print.

pub mod completion;
pub mod cp;
pub mod daemon;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod kernel;
pub mod port;
pub mod run;
pub mod ssh;
pub mod system;
pub mod version;
pub mod vm;
pub mod workspace;
