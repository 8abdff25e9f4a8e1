//! One snapshot pool per VM shape a job uses, opened on first use (the
//! first open of a new shape cold-boots once and caches the snapshot), and
//! the root images the shapes boot, resolved once per run: a directory is
//! walked (and maybe built) once, a container image pulled and converted
//! once, and every step of a run sees the same image even if a tag moves
//! or a tree changes while the job runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sbxrun_image::{Event, ImageConfig};

use crate::host::KvmFlavour;
use crate::manifest::{ImageRef, Settings};
use crate::pool::launch::{VmShape, DEFAULT_ARTIFACT_DISK_BYTES};
use crate::pool::warm::PoolError;
use crate::pool::warm::{Pool, PoolConfig};
use crate::pool::{resolve_image_reporting, snapshot, ImageError};
pub use crate::report::json_log::Phase;

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
    /// How container images are pulled and where they are cached.
    pub images: sbxrun_image::Options,
    /// Told what getting images and snapshots ready is doing, for the
    /// console.
    pub progress: PrepProgress,
}

/// What getting a step's VM ready is doing: the slow work of a first use
/// (pulling and converting an image, building one from a directory,
/// booting a shape's snapshot), cached for every later step and run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prep<'a> {
    /// A registry image's pull or conversion.
    Pull(&'a Event),
    /// A directory image's ext4 file is being built (`Started`) or was
    /// built (`Done`/`Failed`, with the time it took).
    ImageBuild {
        phase: Phase,
        took: Option<Duration>,
    },
    /// A VM shape has no snapshot: one VM boots cold and is snapshotted.
    Snapshot {
        memory_mib: u32,
        vcpus: u8,
        phase: Phase,
        took: Option<Duration>,
    },
}

/// Receives the progress of each image and snapshot a run prepares: the
/// image as the manifest wrote it, and the event.
#[derive(Clone)]
pub struct PrepProgress(pub Arc<PrepProgressFn>);

/// The callback behind [`PrepProgress`].
pub type PrepProgressFn = dyn Fn(&str, &Prep<'_>) + Send + Sync;

impl PrepProgress {
    /// Progress nobody watches.
    pub fn none() -> Self {
        PrepProgress(Arc::new(|_, _| {}))
    }

    /// What `sbxrun_image::resolve` reports to, for one image.
    pub fn of<'a>(&'a self, image: &'a str) -> impl sbxrun_image::Progress + 'a {
        ProgressTo { image, sink: self }
    }

    fn tell(&self, image: &str, prep: Prep<'_>) {
        (self.0)(image, &prep);
    }

    /// Resolves a directory or ext4 image (`resolve_image`), telling this
    /// progress when a directory's image has to be built and how long that
    /// took.
    pub fn build_dir_image(&self, path: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
        let name = path.display().to_string();
        let started = std::cell::Cell::new(None);
        let result = resolve_image_reporting(path, cache, &|| {
            started.set(Some(Instant::now()));
            let prep = Prep::ImageBuild {
                phase: Phase::Started,
                took: None,
            };
            self.tell(&name, prep);
        });
        if let Some(t) = started.get() {
            let phase = ended(result.is_ok());
            let took = Some(t.elapsed());
            self.tell(&name, Prep::ImageBuild { phase, took });
        }
        result
    }

    /// Opens the pool of `config`, telling this progress when its shape
    /// has no snapshot yet: a cold boot of tens of seconds.
    pub fn open_pool(&self, image: &str, config: PoolConfig) -> Result<Pool, PoolError> {
        let (memory_mib, vcpus) = (config.shape.memory_mib, config.shape.vcpus);
        let tell = |phase, took| {
            let prep = Prep::Snapshot {
                memory_mib,
                vcpus,
                phase,
                took,
            };
            self.tell(image, prep);
        };
        let cold = !snapshot::is_present(&config.cache, &config.shape);
        if cold {
            tell(Phase::Started, None);
        }
        let started = Instant::now();
        let pool = Pool::open(config);
        if cold {
            tell(ended(pool.is_ok()), Some(started.elapsed()));
        }
        pool
    }
}

fn ended(ok: bool) -> Phase {
    if ok {
        Phase::Done
    } else {
        Phase::Failed
    }
}

impl std::fmt::Debug for PrepProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrepProgress")
    }
}

/// The root image a step boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepImage {
    /// The ext4 file the VM attaches.
    pub ext4: PathBuf,
    /// The image as the manifest wrote it (made absolute for local
    /// sources), or `default`.
    pub reference: String,
    /// `sha256:<hex>` of a container image's manifest.
    pub digest: Option<String>,
    /// A container image's config (env, workdir, user, entrypoint, cmd).
    pub config: Option<ImageConfig>,
    /// Whether this run pulled, imported or built it.
    pub pulled: bool,
}

type Slot = Arc<OnceLock<Result<Arc<Pool>, String>>>;
type ImageSlot = Arc<OnceLock<Result<Arc<StepImage>, String>>>;

/// Pools by shape.
pub struct Pools {
    base: PoolBase,
    map: Mutex<HashMap<(PathBuf, u32, u8), Slot>>,
    /// Images as the manifest names them → what to boot.
    images: Mutex<HashMap<ImageRef, ImageSlot>>,
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

    /// What every shape shares.
    pub fn base(&self) -> &PoolBase {
        &self.base
    }

    /// The shape a step's settings ask for.
    pub fn shape(&self, settings: &Settings) -> Result<VmShape, String> {
        let image = self.image(&settings.image)?;
        Ok(VmShape {
            kernel: self.base.kernel.clone(),
            initramfs: self.base.initramfs.clone(),
            image: image.ext4.clone(),
            memory_mib: u32::try_from(settings.memory.0 >> 20).unwrap_or(u32::MAX),
            vcpus: u8::try_from(settings.vcpus).unwrap_or(u8::MAX),
            flavour: self.base.flavour,
            artifact_disk_bytes: DEFAULT_ARTIFACT_DISK_BYTES,
            jail: true,
        })
    }

    /// The root image `image` names, resolved on first use. Concurrent
    /// callers for one image wait for a single resolution; a failure is
    /// remembered, so the steps of one image fail alike and fast.
    pub fn image(&self, image: &ImageRef) -> Result<Arc<StepImage>, String> {
        let slot = {
            let mut images = self
                .images
                .lock()
                .map_err(|_| "image map poisoned".to_owned())?;
            images.entry(image.clone()).or_default().clone()
        };
        slot.get_or_init(|| self.resolve(image).map(Arc::new))
            .clone()
    }

    fn resolve(&self, image: &ImageRef) -> Result<StepImage, String> {
        match image {
            ImageRef::Name(n) if n == "default" => Ok(StepImage {
                ext4: self.base.default_image.clone(),
                reference: n.clone(),
                digest: None,
                config: None,
                pulled: false,
            }),
            ImageRef::Name(n) => Err(format!("unknown image `{n}`")),
            ImageRef::Path(path) => Ok(StepImage {
                ext4: self
                    .base
                    .progress
                    .build_dir_image(path, &self.base.cache)
                    .map_err(|e| crate::errors::chain(&e))?,
                reference: path.display().to_string(),
                digest: None,
                config: None,
                pulled: false,
            }),
            ImageRef::Container(source) => {
                let progress = self.base.progress.of(source);
                let resolved = sbxrun_image::resolve(source, &self.base.images, &progress)
                    .map_err(|e| crate::errors::chain(&e))?;
                Ok(StepImage {
                    ext4: resolved.ext4,
                    reference: resolved.reference,
                    digest: resolved.manifest_digest,
                    config: resolved.config,
                    pulled: resolved.pulled,
                })
            }
        }
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
            let config = PoolConfig {
                cache: self.base.cache.clone(),
                scratch: self.base.scratch.clone(),
                shape,
                warm: self.base.warm,
                console_dir: Some(self.base.console_dir.clone()),
            };
            self.base
                .progress
                .open_pool(&settings.image.to_string(), config)
                .map(Arc::new)
                .map_err(|e| format!("cannot prepare the VM pool: {}", crate::errors::chain(&e)))
        })
        .clone()
    }

    /// VMs the pools restored, or booted to make a snapshot, so far (warm
    /// VMs never leased included).
    pub fn vms_started(&self) -> u64 {
        let Ok(map) = self.map.lock() else {
            return 0;
        };
        map.values()
            .filter_map(|slot| slot.get()?.as_ref().ok().map(|p| p.stats()))
            .map(|s| s.restored + u64::from(s.snapshot_built))
            .sum()
    }

    /// Drops every pool (their warm VMs are destroyed).
    pub fn close(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
    }
}

/// Adapts [`PrepProgress`] to one image's resolve.
struct ProgressTo<'a> {
    image: &'a str,
    sink: &'a PrepProgress,
}

impl sbxrun_image::Progress for ProgressTo<'_> {
    fn event(&self, event: &Event) {
        self.sink.tell(self.image, Prep::Pull(event));
    }
}
