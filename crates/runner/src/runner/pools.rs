//! One snapshot pool per VM shape a job uses, opened on first use (the
//! first open of a new shape cold-boots once and caches the snapshot).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::host::KvmFlavour;
use crate::manifest::{ImageRef, Settings};
use crate::pool::launch::{VmShape, DEFAULT_ARTIFACT_DISK_BYTES};
use crate::pool::resolve_image;
use crate::pool::warm::{Pool, PoolConfig};

/// What every shape shares.
#[derive(Debug, Clone)]
pub struct PoolBase {
    pub cache: PathBuf,
    pub scratch: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub default_image: PathBuf,
    pub flavour: KvmFlavour,
    /// Where VM consoles are written while steps run.
    pub console_dir: PathBuf,
    /// Warm VMs per pool.
    pub warm: usize,
}

type Slot = Arc<OnceLock<Result<Arc<Pool>, String>>>;
type ImageSlot = Arc<OnceLock<Result<PathBuf, String>>>;

/// Pools by shape.
pub struct Pools {
    base: PoolBase,
    map: Mutex<HashMap<(PathBuf, u32, u8), Slot>>,
    /// Image paths as the manifest names them → the ext4 file to boot.
    /// Resolved once per run: a directory is walked and hashed (and maybe
    /// built) once, not per step, and every step of a run sees one image
    /// even if the tree changes while the job runs.
    images: Mutex<HashMap<PathBuf, ImageSlot>>,
}

impl Pools {
    /// No pool opened yet.
    pub fn new(base: PoolBase) -> Self {
        Pools {
            base,
            map: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
        }
    }

    /// The shape a step's settings ask for.
    pub fn shape(&self, settings: &Settings) -> Result<VmShape, String> {
        let image = match &settings.image {
            ImageRef::Name(n) if n == "default" => self.base.default_image.clone(),
            ImageRef::Name(n) => return Err(format!("unknown image `{n}`")),
            ImageRef::Path(p) => self.image(p)?,
        };
        Ok(VmShape {
            kernel: self.base.kernel.clone(),
            initramfs: self.base.initramfs.clone(),
            image,
            memory_mib: u32::try_from(settings.memory.0 >> 20).unwrap_or(u32::MAX),
            vcpus: u8::try_from(settings.vcpus).unwrap_or(u8::MAX),
            flavour: self.base.flavour,
            artifact_disk_bytes: DEFAULT_ARTIFACT_DISK_BYTES,
            jail: true,
        })
    }

    /// The ext4 file for a user's image path (an ext4 file or a directory).
    /// Concurrent callers for one path wait for a single resolution.
    fn image(&self, path: &Path) -> Result<PathBuf, String> {
        let slot = {
            let mut images = self
                .images
                .lock()
                .map_err(|_| "image map poisoned".to_owned())?;
            images.entry(path.to_owned()).or_default().clone()
        };
        slot.get_or_init(|| {
            resolve_image(path, &self.base.cache).map_err(|e| crate::errors::chain(&e))
        })
        .clone()
    }

    /// The pool for `settings`, opening it on first use. Concurrent callers
    /// of one new shape wait for a single open.
    pub fn get(&self, settings: &Settings) -> Result<Arc<Pool>, String> {
        let shape = self.shape(settings)?;
        let key = (shape.image.clone(), shape.memory_mib, shape.vcpus);
        let slot = {
            let mut map = self
                .map
                .lock()
                .map_err(|_| "pool map poisoned".to_owned())?;
            map.entry(key).or_default().clone()
        };
        slot.get_or_init(|| {
            Pool::open(PoolConfig {
                cache: self.base.cache.clone(),
                scratch: self.base.scratch.clone(),
                shape,
                warm: self.base.warm,
                console_dir: Some(self.base.console_dir.clone()),
            })
            .map(Arc::new)
            .map_err(|e| format!("cannot prepare the VM pool: {}", crate::errors::chain(&e)))
        })
        .clone()
    }

    /// Drops every pool (their warm VMs are destroyed).
    pub fn close(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
    }
}
