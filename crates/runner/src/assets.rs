//! Where the guest kernel, initramfs and root image come from.
//!
//! `make assets` builds them from source into the cache directory and
//! links the current ones under `<cache>/assets/`. A user may point at
//! their own files with flags or `SBXRUN_KERNEL`, `SBXRUN_INITRAMFS`,
//! `SBXRUN_IMAGE`.

use std::path::{Path, PathBuf};

/// The cache directory: `$SBXRUN_CACHE_DIR`, else `$XDG_CACHE_HOME/sbxrun`,
/// else `~/.cache/sbxrun`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SBXRUN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sbxrun");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("sbxrun")
}

/// One guest asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Kernel,
    Initramfs,
    Image,
}

impl Asset {
    /// All of them, in the order `doctor` reports them.
    pub const ALL: [Asset; 3] = [Asset::Kernel, Asset::Initramfs, Asset::Image];

    fn env_var(self) -> &'static str {
        match self {
            Asset::Kernel => "SBXRUN_KERNEL",
            Asset::Initramfs => "SBXRUN_INITRAMFS",
            Asset::Image => "SBXRUN_IMAGE",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Asset::Kernel => "vmlinux",
            Asset::Initramfs => "initramfs.cpio",
            Asset::Image => "rootfs.ext4",
        }
    }

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Asset::Kernel => "guest kernel",
            Asset::Initramfs => "initramfs (guest-init)",
            Asset::Image => "default root image",
        }
    }

    /// The command that builds it from source.
    pub fn fix(self) -> &'static str {
        match self {
            Asset::Kernel => "make assets   (or: guest/kernel/build.sh)",
            Asset::Initramfs => "make assets   (or: guest/image/build-initramfs.sh)",
            Asset::Image => "make assets   (or: guest/image/build-rootfs.sh)",
        }
    }

    /// Where it is looked for when nothing overrides it.
    pub fn default_path(self) -> PathBuf {
        cache_dir().join("assets").join(self.file_name())
    }

    /// Resolves the asset: an explicit path, then the environment, then the cache.
    pub fn resolve(self, explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os(self.env_var()) {
            return PathBuf::from(p);
        }
        self.default_path()
    }
}

/// Errors finding assets.
#[derive(Debug, thiserror::Error)]
#[error("{label} not found at {path}; build it with: {fix}")]
pub struct MissingAsset {
    pub label: &'static str,
    pub path: String,
    pub fix: &'static str,
}

/// Resolves `asset` and checks that it exists.
pub fn require(asset: Asset, explicit: Option<&Path>) -> Result<PathBuf, MissingAsset> {
    let path = asset.resolve(explicit);
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingAsset {
            label: asset.label(),
            path: path.display().to_string(),
            fix: asset.fix(),
        })
    }
}
