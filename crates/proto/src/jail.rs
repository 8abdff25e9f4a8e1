//! What the runner tells a VMM about its jail (part of the VM config frame).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a VMM process is jailed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailConfig {
    /// Off only for debugging (`--no-jail`); the runner warns loudly.
    pub enabled: bool,
    /// The `cgroup.procs` files of the per-VM cgroup the runner created
    /// (one per v1 hierarchy, one on v2); empty when the host has none for us.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            cgroup_procs: Vec::new(),
        }
    }
}
