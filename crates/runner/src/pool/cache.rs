//! What the cache directory holds and how to empty it: the snapshots with
//! their state (usable, stale, damaged, being built), the built guest
//! assets and the per-run scratch, each with its apparent size and the disk
//! space it really takes.
//!
//! Another runner may be using the cache at the same time, so entries may
//! appear or vanish between listing and removal (a vanished entry is not an
//! error), and a `.tmp-*` build or scratch directory whose process is alive
//! is never removed. Nothing here follows a symlink: a link is measured and
//! removed as itself, so a cleanup can never reach outside the cache.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::snapshot::{self, snapshots_dir, SnapshotError};
use sbxrun_proto::snapshot_file::FORMAT_MAJOR;

/// The cache subdirectories holding built guest assets (`make assets`
/// writes them; `assets/` holds the links to the current ones).
pub const ASSET_DIRS: [&str; 4] = ["kernel", "initramfs", "images", "assets"];

/// The cache subdirectory holding per-run scratch (step disks).
pub const SCRATCH_DIR: &str = "run";

/// Errors reading or cleaning the cache; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes an entry takes: its logical length and what it really occupies on
/// disk. Snapshot memory files are sparse, so the two differ a lot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub apparent_bytes: u64,
    pub disk_bytes: u64,
}

impl Usage {
    /// The sum of `self` and `other`.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            apparent_bytes: self.apparent_bytes.saturating_add(other.apparent_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }

    /// The sum over `items`.
    pub fn total<'a>(items: impl IntoIterator<Item = &'a Usage>) -> Usage {
        items
            .into_iter()
            .fold(Usage::default(), |acc, u| acc.plus(*u))
    }
}

/// What a directory under `<cache>/snapshots/` is good for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotState {
    /// Passes every check a runner makes before restoring from it.
    Usable,
    /// Written by an sbxrun of another format major; never used again.
    Stale { format: String },
    /// Cannot be restored from; a runner would rebuild it.
    Damaged { reason: String },
    /// A `.tmp-*` build whose process is alive: another runner is building it.
    Building { pid: u32 },
    /// A `.tmp-*` build whose process is gone (or that names none).
    Abandoned { pid: Option<u32> },
    /// A file it was booted from (kernel, initramfs or root image) is
    /// gone, so no run can ask for it again.
    Orphaned { missing: String },
}

impl SnapshotState {
    /// Whether `cache clean --stale` removes it.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            SnapshotState::Stale { .. }
                | SnapshotState::Damaged { .. }
                | SnapshotState::Abandoned { .. }
                | SnapshotState::Orphaned { .. }
        )
    }

    /// One line for humans: `ok`, `stale (format 2.0)`, `damaged (why)`,
    /// `building (pid N)`, `abandoned`.
    pub fn describe(&self) -> String {
        match self {
            SnapshotState::Usable => "ok".into(),
            SnapshotState::Stale { format } => format!("stale (format {format})"),
            SnapshotState::Damaged { reason } => format!("damaged ({reason})"),
            SnapshotState::Building { pid } => format!("building (pid {pid})"),
            SnapshotState::Abandoned { .. } => "abandoned".into(),
            SnapshotState::Orphaned { missing } => format!("orphaned ({missing} is gone)"),
        }
    }
}

/// One entry of `<cache>/snapshots/`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotEntry {
    /// The directory name: the key, or `.tmp-<key>-<pid>` for a build.
    pub name: String,
    /// The snapshot key (for a build, the key it is building).
    pub key: String,
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub state: SnapshotState,
    /// Fields of `meta.json`, when it could be read.
    pub format: Option<String>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u64>,
    /// When it was made: `created_unix` from `meta.json`, else the
    /// directory's modification time.
    pub created_unix: Option<u64>,
    pub usage: Usage,
}

/// A top-level directory of guest assets, e.g. `<cache>/kernel`.
#[derive(Debug, Clone, Serialize)]
pub struct AssetEntry {
    pub name: String,
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub usage: Usage,
}

/// One run's scratch directory under `<cache>/run/`.
#[derive(Debug, Clone, Serialize)]
pub struct ScratchEntry {
    pub name: String,
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// The sbxrun process that made it, read from the name.
    pub pid: Option<u32>,
    /// That process is still alive, so the directory is in use.
    pub in_use: bool,
    pub usage: Usage,
}

/// Everything sbxrun keeps in a cache directory.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    #[serde(serialize_with = "lossy_path")]
    pub cache: PathBuf,
    /// Sorted by name, so output is stable.
    pub snapshots: Vec<SnapshotEntry>,
    pub assets: Vec<AssetEntry>,
    pub scratch: Vec<ScratchEntry>,
}

/// Paths are written as text even when they are not UTF-8 (a stray file in
/// the cache may have any name), rather than failing the whole listing.
fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Whether process `pid` exists. Checked through `/proc` like the scratch
/// cleanup of a starting runner; a recycled pid errs on the side of keeping.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads the cache without changing it. A missing cache or subdirectory is
/// empty, not an error; an unreadable one is an error naming it.
pub fn scan(cache: &Path) -> Result<Inventory, CacheError> {
    let mut snapshots = Vec::new();
    for (name, path) in list_dir(&snapshots_dir(cache))? {
        if let Some(entry) = classify(cache, &name, &path) {
            snapshots.push(entry);
        }
    }
    let mut assets = Vec::new();
    for name in ASSET_DIRS {
        let path = cache.join(name);
        // symlink_metadata: `assets/` or a tree may itself be a link, which
        // is measured and removed as a link.
        if path.symlink_metadata().is_ok() {
            let mut usage = usage_of(&path);
            if name == "images" {
                // Images built from users' directories are listed on their
                // own (`dir_images`), not as guest assets.
                let built = usage_of(&super::dir_images::dir_images_root(cache));
                usage.apparent_bytes = usage.apparent_bytes.saturating_sub(built.apparent_bytes);
                usage.disk_bytes = usage.disk_bytes.saturating_sub(built.disk_bytes);
            }
            assets.push(AssetEntry {
                name: name.to_string(),
                usage,
                path,
            });
        }
    }
    let mut scratch = Vec::new();
    for (name, path) in list_dir(&cache.join(SCRATCH_DIR))? {
        let pid = scratch_pid(&name);
        scratch.push(ScratchEntry {
            in_use: pid.is_some_and(pid_alive),
            usage: usage_of(&path),
            name,
            path,
            pid,
        });
    }
    Ok(Inventory {
        cache: cache.to_path_buf(),
        snapshots,
        assets,
        scratch,
    })
}

/// The entries of `dir`, sorted by name; none when it does not exist.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, CacheError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(read_err(dir))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// The pid in a scratch directory name: `vm-<pid>-<n>` (pool VMs) or
/// `exec-<pid>` (cold-booted `sbxrun exec`).
fn scratch_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("vm-")
        .or_else(|| name.strip_prefix("exec-"))?;
    rest.split('-').next()?.parse().ok()
}

/// `.tmp-<key>-<pid>` → (key, pid). The key is hex, so the last `-` splits.
fn parse_tmp_name(name: &str) -> Option<(String, Option<u32>)> {
    let rest = name.strip_prefix(".tmp-")?;
    Some(match rest.rsplit_once('-') {
        Some((key, pid)) => match pid.parse() {
            Ok(pid) => (key.to_string(), Some(pid)),
            Err(_) => (rest.to_string(), None),
        },
        None => (rest.to_string(), None),
    })
}

fn mtime_unix(meta: &fs::Metadata) -> Option<u64> {
    u64::try_from(meta.mtime()).ok()
}

/// Classifies one entry of the snapshots directory; `None` when it vanished
/// while we looked (another runner renamed or removed it).
fn classify(cache: &Path, name: &str, path: &Path) -> Option<SnapshotEntry> {
    let lmeta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(bare_entry(
                name,
                path,
                None,
                SnapshotState::Damaged {
                    reason: format!("cannot stat: {e}"),
                },
            ))
        }
    };
    let usage = usage_of(path);
    let mut entry = bare_entry(name, path, Some(&lmeta), SnapshotState::Usable);
    entry.usage = usage;
    if let Some((key, pid)) = parse_tmp_name(name) {
        entry.key = key;
        entry.state = match pid {
            Some(pid) if pid_alive(pid) => SnapshotState::Building { pid },
            _ => SnapshotState::Abandoned { pid },
        };
        return Some(entry);
    }
    if lmeta.file_type().is_symlink() {
        // Never followed: a link could point anywhere. The runner would
        // follow it, so calling it damaged makes `clean --stale` drop the link.
        entry.state = SnapshotState::Damaged {
            reason: "a symlink, not a snapshot directory".into(),
        };
        return Some(entry);
    }
    if !lmeta.is_dir() {
        entry.state = SnapshotState::Damaged {
            reason: "not a directory".into(),
        };
        return Some(entry);
    }
    entry.state = match read_loose_meta(path, &mut entry) {
        Err(reason) => SnapshotState::Damaged { reason },
        Ok(Some(stale)) => stale,
        Ok(None) => match snapshot::load(cache, name) {
            Ok(Some(_)) => SnapshotState::Usable,
            // meta.json went away after we read it: removed concurrently.
            Ok(None) => return None,
            Err(SnapshotError::Damaged(_, reason)) => SnapshotState::Damaged { reason },
            Err(e) => SnapshotState::Damaged {
                reason: crate::errors::chain(&e),
            },
        },
    };
    Some(entry)
}

fn bare_entry(
    name: &str,
    path: &Path,
    meta: Option<&fs::Metadata>,
    state: SnapshotState,
) -> SnapshotEntry {
    SnapshotEntry {
        name: name.to_string(),
        key: name.to_string(),
        path: path.to_path_buf(),
        state,
        format: None,
        memory_mib: None,
        vcpus: None,
        created_unix: meta.and_then(mtime_unix),
        usage: Usage::default(),
    }
}

/// A real `meta.json` is a few hundred bytes; anything far larger is not
/// one, and is not worth reading into memory to find that out.
const MAX_META_BYTES: u64 = 1 << 20;

/// Reads at most `cap` bytes of `path`; `None` when it holds more.
fn read_capped(path: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

/// Reads `meta.json` field by field, so that one written by an older sbxrun
/// (whose fields may differ) is still recognised as stale rather than as
/// garbage, and fills the entry's display fields. `Ok(Some)` is a verdict
/// of stale; `Ok(None)` means the full check is still to be made.
fn read_loose_meta(dir: &Path, entry: &mut SnapshotEntry) -> Result<Option<SnapshotState>, String> {
    let meta_path = dir.join("meta.json");
    let text = match read_capped(&meta_path, MAX_META_BYTES) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(format!("meta.json is over {MAX_META_BYTES} bytes")),
        Err(e) if e.kind() == ErrorKind::NotFound => return Err("no meta.json".into()),
        Err(e) => return Err(format!("meta.json: {e}")),
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("meta.json: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "meta.json: not a JSON object".to_string())?;
    entry.memory_mib = obj.get("memory_mib").and_then(|v| v.as_u64());
    entry.vcpus = obj.get("vcpus").and_then(|v| v.as_u64());
    if let Some(t) = obj.get("created_unix").and_then(|v| v.as_u64()) {
        entry.created_unix = Some(t);
    }
    let format = obj
        .get("format")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "meta.json: no format".to_string())?;
    entry.format = Some(format.to_string());
    let major = format
        .split('.')
        .next()
        .and_then(|m| m.parse::<u16>().ok())
        .ok_or_else(|| format!("meta.json: format `{format}` is not MAJOR.MINOR"))?;
    if major != FORMAT_MAJOR {
        return Ok(Some(SnapshotState::Stale {
            format: format.to_string(),
        }));
    }
    // A snapshot is keyed by the files it booted; once one is gone (an
    // image rebuilt from an edited tree, a kernel rebuilt) nothing asks
    // for the snapshot again.
    for field in ["kernel", "initramfs", "image"] {
        if let Some(path) = obj.get(field).and_then(|v| v.as_str()) {
            if !Path::new(path).exists() {
                return Ok(Some(SnapshotState::Orphaned {
                    missing: format!("{field} {path}"),
                }));
            }
        }
    }
    Ok(None)
}

/// Apparent and real size of `path` and everything under it, without
/// following symlinks and counting a hard-linked file once. Unreadable
/// parts are skipped: a listing shows what it can see.
pub fn usage_of(path: &Path) -> Usage {
    let mut seen = HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = p.symlink_metadata() else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total = total.plus(Usage {
            apparent_bytes: meta.len(),
            // st_blocks is in 512-byte units whatever the filesystem block size.
            disk_bytes: meta.blocks().saturating_mul(512),
        });
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Which parts of the cache `cache clean` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanScope {
    /// Every snapshot (they are rebuilt on demand) and abandoned builds.
    Snapshots,
    /// Only stale and damaged snapshots and abandoned builds.
    Stale,
    /// Snapshots, built guest assets and scratch.
    All,
}

/// Something `cache clean` removes.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// What it is, for the report: `snapshot 6832265392cc (ok)`.
    pub what: String,
    pub usage: Usage,
}

/// Something `cache clean` leaves in place although its scope covers it.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub why: String,
}

/// What `cache clean` will do, decided from an inventory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanPlan {
    pub remove: Vec<Removal>,
    pub keep: Vec<Kept>,
}

/// The short form of a key used in listings.
pub fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// Decides what to remove. Builds in progress and scratch of live runs are
/// always kept: their owner is writing into them.
pub fn plan_clean(inv: &Inventory, scope: CleanScope) -> CleanPlan {
    let mut plan = CleanPlan::default();
    for s in &inv.snapshots {
        let what = match &s.state {
            SnapshotState::Building { pid } => {
                plan.keep.push(Kept {
                    path: s.path.clone(),
                    why: format!("being built by pid {pid}"),
                });
                continue;
            }
            SnapshotState::Abandoned { .. } => {
                format!("abandoned build of {}", short_key(&s.key))
            }
            state if scope != CleanScope::Stale || state.is_stale() => {
                format!("snapshot {}, {}", short_key(&s.key), state.describe())
            }
            _ => continue,
        };
        plan.remove.push(Removal {
            path: s.path.clone(),
            what,
            usage: s.usage,
        });
    }
    if scope == CleanScope::All {
        for s in &inv.scratch {
            if s.in_use {
                plan.keep.push(Kept {
                    path: s.path.clone(),
                    why: format!("in use by pid {}", s.pid.unwrap_or_default()),
                });
                continue;
            }
            plan.remove.push(Removal {
                path: s.path.clone(),
                what: format!("scratch {}", s.name),
                usage: s.usage,
            });
        }
        for a in &inv.assets {
            plan.remove.push(Removal {
                path: a.path.clone(),
                what: format!("guest assets {}/", a.name),
                usage: a.usage,
            });
        }
    }
    plan
}

/// Removes `path`: a directory with everything under it, anything else
/// (a symlink included) as itself. `Ok(false)` when it was already gone,
/// which is what a concurrent runner removing it too looks like.
pub fn remove_entry(path: &Path) -> Result<bool, CacheError> {
    let remove_err = |source| CacheError::Remove {
        path: path.display().to_string(),
        source,
    };
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(remove_err(e)),
    };
    // std's remove_dir_all does not follow symlinks below `path` (it works
    // through directory fds with O_NOFOLLOW), and we only call it on a real
    // directory, so nothing outside the cache is touched.
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(remove_err(e)),
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
