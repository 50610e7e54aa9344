//! What a VM is on disk: `vms/<name>/vm.json` holds its [`Record`], written atomically on every
//! state change, beside `disk.ext4` and `console.log`.

use std::path::{Path, PathBuf};

use protocol::Error;
use protocol::vm::VmInfo;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::vmm::Running;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub info: VmInfo,
    /// The VMM while one runs: how a restarted daemon finds it again.
    pub running: Option<Running>,
}

/// A VM's directory and the files in it.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(vms_dir: &Path, name: &str) -> Self {
        Paths { dir: vms_dir.join(name) }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.ext4")
    }
    /// The VM's initrd (its kernel's modules and the agent as `/init`); absent when its kernel
    /// has no modules (it boots `init=/.banger/agent` from the disk).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

impl Record {
    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec_pretty(self).map_err(|e| Error::internal(e.to_string()))
    }

    pub fn save(&self, paths: &Paths) -> Result<(), Error> {
        write_atomic(&paths.record(), &self.to_json()?)
            .map_err(|e| Error::internal(format!("cannot save VM state: {e}")))
    }

    pub fn load(paths: &Paths) -> Result<Record, Error> {
        let bytes = std::fs::read(paths.record())
            .map_err(|e| Error::internal(format!("cannot read {}: {e}", paths.record().display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("{} is corrupt: {e}", paths.record().display())))
    }
}
