//! The pool: restores fresh VMs of one shape from its snapshot, and keeps
//! a few restored, pinged VMs ready ahead of demand. A VM serves exactly
//! one lease and is destroyed with it; nothing is reused between steps.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::launch::{StepDisks, VmShape};
use super::session;
use super::snapshot::{self, Snapshot, SnapshotError};
use super::vm::{VmHandle, VmHandleError};

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("snapshot")]
    Snapshot(#[from] SnapshotError),
    #[error("cannot prepare the VM's disks in {path}")]
    Disks {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restore a VM")]
    Restore(#[source] VmHandleError),
}

/// How to run a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Cache root (snapshots live under it).
    pub cache: PathBuf,
    /// Per-VM scratch directories (artifact disks) go here.
    pub scratch: PathBuf,
    pub shape: VmShape,
    /// Restored VMs to keep ready.
    pub warm: usize,
    /// Where guest consoles are logged, one file per VM; `None` discards.
    pub console_dir: Option<PathBuf>,
}

/// Counters, for reports and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub restored: u64,
    pub handed_out: u64,
    /// Warm VMs found dead while waiting and replaced.
    pub died_waiting: u64,
    /// Snapshots rebuilt because the cached one was damaged.
    pub rebuilt: u64,
    /// Opening the pool booted the guest to create the shape's snapshot
    /// (first use, or a damaged one replaced).
    pub snapshot_built: bool,
}

/// A restored VM leased for one step. Dropping it destroys the VM and its disks.
pub struct LeasedVm {
    pub vm: VmHandle,
    pub disks: StepDisks,
    pub dir: PathBuf,
    /// From VMM spawn to guest-init's pong.
    pub restore_time: Duration,
    pub console_log: Option<PathBuf>,
}

impl Drop for LeasedVm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Inner {
    config: PoolConfig,
    snapshot: Snapshot,
    ready: Mutex<VecDeque<LeasedVm>>,
    wake: Condvar,
    target: AtomicUsize,
    stop: AtomicBool,
    next_id: AtomicU64,
    restored: AtomicU64,
    handed_out: AtomicU64,
    died_waiting: AtomicU64,
    rebuilt: u64,
    snapshot_built: bool,
}

/// A pool of VMs of one shape.
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Finds (or builds, once) the shape's snapshot and starts keeping
    /// `config.warm` VMs ready.
    pub fn open(config: PoolConfig) -> Result<Self, PoolError> {
        let (snapshot, rebuilt, built) = ensure_snapshot(&config)?;
        let inner = Arc::new(Inner {
            target: AtomicUsize::new(config.warm),
            config,
            snapshot,
            ready: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            handed_out: AtomicU64::new(0),
            died_waiting: AtomicU64::new(0),
            rebuilt: u64::from(rebuilt),
            snapshot_built: built,
        });
        if inner.config.warm > 0 {
            let filler = inner.clone();
            std::thread::Builder::new()
                .name("pool-fill".into())
                .spawn(move || fill_loop(&filler))
                .map_err(|source| PoolError::Disks {
                    path: "pool thread".into(),
                    source,
                })?;
        }
        Ok(Pool { inner })
    }

    /// The snapshot VMs are restored from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.inner.snapshot
    }

    /// Asks the pool to keep `n` VMs ready (e.g. the DAG's width).
    pub fn set_warm_target(&self, n: usize) {
        self.inner.target.store(n, Ordering::Release);
        self.inner.wake.notify_all();
    }

    /// A fresh VM: a warm one if one is ready and alive, else restored now.
    pub fn acquire(&self) -> Result<LeasedVm, PoolError> {
        loop {
            let warm = self.inner.ready.lock().ok().and_then(|mut q| q.pop_front());
            self.inner.wake.notify_all();
            match warm {
                Some(mut lease) => {
                    if lease.vm.is_alive() {
                        self.inner.handed_out.fetch_add(1, Ordering::Relaxed);
                        return Ok(lease);
                    }
                    self.inner.died_waiting.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let lease = restore_one(&self.inner)?;
                    self.inner.handed_out.fetch_add(1, Ordering::Relaxed);
                    return Ok(lease);
                }
            }
        }
    }

    /// A VM restored now whose console goes to `console_log` (warm VMs
    /// already have their console files, so this bypasses them).
    pub fn acquire_logged(&self, console_log: PathBuf) -> Result<LeasedVm, PoolError> {
        let lease = restore_with_console(&self.inner, Some(console_log))?;
        self.inner.handed_out.fetch_add(1, Ordering::Relaxed);
        Ok(lease)
    }

    /// Counters so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            restored: self.inner.restored.load(Ordering::Relaxed),
            handed_out: self.inner.handed_out.load(Ordering::Relaxed),
            died_waiting: self.inner.died_waiting.load(Ordering::Relaxed),
            rebuilt: self.inner.rebuilt,
            snapshot_built: self.inner.snapshot_built,
        }
    }

    /// How many warm VMs are ready now.
    pub fn ready_count(&self) -> usize {
        self.inner.ready.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Process ids of the warm VMs (for tests that kill one).
    pub fn ready_pids(&self) -> Vec<u32> {
        self.inner
            .ready
            .lock()
            .map(|q| q.iter().map(|l| l.vm.pid()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake.notify_all();
        if let Ok(mut q) = self.inner.ready.lock() {
            q.clear();
        }
    }
}

/// The shape's snapshot: (it, whether a damaged one was replaced, whether
/// it was created now).
fn ensure_snapshot(config: &PoolConfig) -> Result<(Snapshot, bool, bool), PoolError> {
    let key = snapshot::shape_key(&config.shape)?;
    let console = config
        .console_dir
        .as_ref()
        .map(|d| d.join(format!("snapshot-{key}.console")));
    match snapshot::load(&config.cache, &key) {
        Ok(Some(s)) => Ok((s, false, false)),
        Ok(None) => Ok((
            snapshot::create(&config.cache, &key, &config.shape, console)?,
            false,
            true,
        )),
        Err(SnapshotError::Damaged(dir, why)) => {
            tracing::warn!("snapshot {dir} is damaged ({why}); rebuilding it");
            eprintln!("sbxrun: snapshot {dir} is damaged ({why}); rebuilding it");
            let _ = std::fs::remove_dir_all(&dir);
            Ok((
                snapshot::create(&config.cache, &key, &config.shape, console)?,
                true,
                true,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn restore_one(inner: &Inner) -> Result<LeasedVm, PoolError> {
    restore_with_console(inner, None)
}

fn restore_with_console(
    inner: &Inner,
    console_log: Option<PathBuf>,
) -> Result<LeasedVm, PoolError> {
    let started = Instant::now();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let dir = inner
        .config
        .scratch
        .join(format!("vm-{}-{id}", std::process::id()));
    let disks =
        StepDisks::create_in(&dir, inner.config.shape.artifact_disk_bytes).map_err(|source| {
            PoolError::Disks {
                path: dir.display().to_string(),
                source,
            }
        })?;
    let console_log = console_log.or_else(|| {
        inner
            .config
            .console_dir
            .as_ref()
            .map(|d| d.join(format!("vm-{}-{id}.console", std::process::id())))
    });
    let mut config = inner.config.shape.vm_config(&disks, console_log.clone());
    config.restore = Some(inner.snapshot.files());
    let lease_dir = dir.clone();
    let cleanup = |e| {
        let _ = std::fs::remove_dir_all(&lease_dir);
        PoolError::Restore(e)
    };
    let timeout = Duration::from_secs(10);
    let mut vm = VmHandle::spawn(&config, timeout).map_err(cleanup)?;
    session::ping(&mut vm, id, timeout).map_err(cleanup)?;
    inner.restored.fetch_add(1, Ordering::Relaxed);
    Ok(LeasedVm {
        vm,
        disks,
        dir,
        restore_time: started.elapsed(),
        console_log,
    })
}

/// Available host memory in MiB, from /proc/meminfo.
fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Whether one more warm VM fits: a restored VM shares its snapshot's pages
/// until it writes them, but a step may dirty all of its RAM, so count the
/// full size and keep a reserve for the host.
fn can_afford_another(shape: &VmShape) -> bool {
    const HOST_RESERVE_MIB: u64 = 1024;
    match mem_available_mib() {
        Some(avail) => avail > u64::from(shape.memory_mib) + HOST_RESERVE_MIB,
        None => true,
    }
}

fn fill_loop(inner: &Inner) {
    let mut failures = 0u32;
    while !inner.stop.load(Ordering::Acquire) {
        let ready = inner.ready.lock().map(|q| q.len()).unwrap_or(0);
        if ready < inner.target.load(Ordering::Acquire) && can_afford_another(&inner.config.shape) {
            match restore_one(inner) {
                Ok(lease) => {
                    failures = 0;
                    if let Ok(mut q) = inner.ready.lock() {
                        q.push_back(lease);
                    }
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("warm VM restore failed: {}", crate::errors::chain(&e));
                }
            }
        }
        // Back off after failures so a broken snapshot does not spin.
        let wait = Duration::from_millis(if failures > 0 {
            200 * u64::from(failures.min(10))
        } else {
            50
        });
        if let Ok(q) = inner.ready.lock() {
            let _ = inner.wake.wait_timeout(q, wait);
        }
        // Replace warm VMs that died while waiting.
        if let Ok(mut q) = inner.ready.lock() {
            let before = q.len();
            q.retain_mut(|l| l.vm.is_alive());
            let dead = (before - q.len()) as u64;
            inner.died_waiting.fetch_add(dead, Ordering::Relaxed);
        }
    }
}

/// Removes leftover per-VM directories of dead processes in `scratch`.
pub fn clean_scratch(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix("vm-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
