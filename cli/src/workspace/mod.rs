//! Git checkouts copied into VMs: listing with git, snapshots of the work tree as git trees,
//! and the tar stream that carries them (`commands/workspace.rs` drives these).

pub mod git;
pub mod pack;
