//! The root images sbxrun built from directories, as the cache holds them:
//! `images/dirs/<key>/rootfs.ext4` with a `source.json` naming the tree it
//! was built from and a `last-used` file whose mtime is the last run that
//! used it. The key is a digest of the tree's entries, so an edited tree
//! builds a new image and the old one is left behind: `cache clean
//! --stale` finds those by walking each source again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cache::{usage_of, Usage};

/// Where directory images live under the cache.
pub fn dir_images_root(cache: &Path) -> PathBuf {
    cache.join("images").join("dirs")
}

const SOURCE_FILE: &str = "source.json";
const LAST_USED_FILE: &str = "last-used";
/// A `source.json` larger than this is not ours.
const MAX_SOURCE_BYTES: u64 = 64 * 1024;

/// What `source.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The directory, absolute, as it was when built.
    pub source: PathBuf,
    /// The tree's key (the directory's name under `images/dirs`).
    pub key: String,
    pub built_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Records that `dir` (an image's cache directory) was built from `root`.
/// Best effort: an image without a record still works, it is just listed
/// without a source.
pub fn record_build(dir: &Path, root: &Path, key: &str) {
    let source = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let record = SourceRecord {
        source,
        key: key.to_owned(),
        built_unix: now_unix(),
    };
    if let Ok(json) = serde_json::to_vec_pretty(&record) {
        let _ = crate::report::atomic_write(&dir.join(SOURCE_FILE), &json);
    }
    mark_used(dir);
}

/// Notes that a run uses the image in `dir` now (one small write).
pub fn mark_used(dir: &Path) {
    let path = dir.join(LAST_USED_FILE);
    let _ = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// A directory image in the cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirImage {
    pub key: String,
    pub dir: PathBuf,
    /// From `source.json`; `None` for an image built before records were
    /// kept, or whose record is unreadable.
    pub source: Option<PathBuf>,
    pub built_unix: Option<u64>,
    pub last_used_unix: Option<u64>,
    pub usage: Usage,
}

/// Whether an image still matches its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Freshness {
    /// Walking the source now gives this image's key.
    Current,
    /// The source tree changed since: a run would build another image.
    SourceChanged,
    /// The source directory is gone.
    SourceGone,
    /// No record of the source (kept: nothing says it is stale).
    Unknown,
    /// The source cannot be walked now (kept); the reason.
    Unreadable(String),
}

impl Freshness {
    /// Whether `cache clean --stale` removes the image.
    pub fn is_stale(&self) -> bool {
        matches!(self, Freshness::SourceChanged | Freshness::SourceGone)
    }
}

/// The directory images in `cache`, by key.
pub fn list(cache: &Path) -> Vec<DirImage> {
    let Ok(entries) = fs::read_dir(dir_images_root(cache)) else {
        return Vec::new();
    };
    let mut images: Vec<DirImage> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let dir = e.path();
            let key = e.file_name().to_string_lossy().into_owned();
            let record = read_record(&dir).filter(|r| r.key == key);
            let last_used_unix = fs::metadata(dir.join(LAST_USED_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            DirImage {
                usage: usage_of(&dir),
                source: record.as_ref().map(|r| r.source.clone()),
                built_unix: record.map(|r| r.built_unix),
                last_used_unix,
                key,
                dir,
            }
        })
        .collect();
    images.sort_by(|a, b| a.key.cmp(&b.key));
    images
}

fn read_record(dir: &Path) -> Option<SourceRecord> {
    let path = dir.join(SOURCE_FILE);
    if fs::metadata(&path).ok()?.len() > MAX_SOURCE_BYTES {
        return None;
    }
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Whether `image` still matches its source, walking the source (a stat
/// of every entry; no file is read).
pub fn freshness(image: &DirImage) -> Freshness {
    let Some(source) = &image.source else {
        return Freshness::Unknown;
    };
    if !source.is_dir() {
        return Freshness::SourceGone;
    }
    match super::image::tree_key(source) {
        Ok(key) if key == image.key => Freshness::Current,
        Ok(_) => Freshness::SourceChanged,
        Err(e) => Freshness::Unreadable(crate::errors::chain(&e)),
    }
}

/// Removes `image` from the cache.
pub fn remove(image: &DirImage) -> std::io::Result<()> {
    fs::remove_dir_all(&image.dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::resolve_image;

    fn has_mkfs() -> bool {
        sbxrun_image::ext4::find_tool("mkfs.ext4").is_ok()
    }

    #[test]
    fn a_built_image_is_listed_with_its_source_and_goes_stale_when_the_tree_changes() {
        assert!(
            has_mkfs(),
            "mkfs.ext4 is needed (make assets installs e2fsprogs)"
        );
        let cache = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        fs::write(tree.path().join("hello"), b"hi\n").unwrap();
        resolve_image(tree.path(), cache.path()).unwrap();
        let images = list(cache.path());
        assert_eq!(images.len(), 1, "{images:?}");
        let first = &images[0];
        assert_eq!(
            first.source.as_deref(),
            Some(fs::canonicalize(tree.path()).unwrap().as_path())
        );
        assert!(first.last_used_unix.is_some() && first.built_unix.is_some());
        assert!(first.usage.disk_bytes > 0);
        assert_eq!(freshness(first), Freshness::Current);

        // Editing the tree builds a second image; the first is now stale.
        fs::write(tree.path().join("hello"), b"changed, and longer\n").unwrap();
        resolve_image(tree.path(), cache.path()).unwrap();
        let images = list(cache.path());
        assert_eq!(images.len(), 2);
        let states: Vec<Freshness> = images.iter().map(freshness).collect();
        assert_eq!(
            states
                .iter()
                .filter(|s| **s == Freshness::SourceChanged)
                .count(),
            1,
            "{states:?}"
        );
        assert_eq!(
            states.iter().filter(|s| **s == Freshness::Current).count(),
            1
        );

        // A removed source leaves both stale.
        let gone = tree.path().to_owned();
        drop(tree);
        assert!(!gone.exists());
        assert!(list(cache.path())
            .iter()
            .all(|i| freshness(i) == Freshness::SourceGone));
    }

    #[test]
    fn an_image_without_a_record_is_never_called_stale() {
        let cache = tempfile::tempdir().unwrap();
        let dir = dir_images_root(cache.path()).join("0123");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("rootfs.ext4"), b"x").unwrap();
        fs::write(dir.join(SOURCE_FILE), b"not json").unwrap();
        let images = list(cache.path());
        assert_eq!(images[0].source, None);
        assert_eq!(freshness(&images[0]), Freshness::Unknown);
        assert!(!freshness(&images[0]).is_stale());
    }
}
