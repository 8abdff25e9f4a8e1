//! The content-addressed cache under one directory:
//!
//! ```text
//! blobs/sha256/<hex>          manifests, configs, layers, by their own digest
//! images/<hex>/rootfs.ext4    the ext4 built from manifest sha256:<hex>
//! images/<hex>/image.json     its record: names, config, blobs, last use
//! refs/<sha256 of name>.json  name as written → manifest digest
//! tmp/                        files being written; empty when nothing runs
//! lock                        flock'd by whoever changes the cache
//! ```
//!
//! Everything enters through a temporary file in `tmp/` that is fsynced and
//! renamed into place, so a reader never sees half a blob or half an image,
//! and a failure (or a kill) leaves nothing but `tmp/` debris, which the next
//! [`Store::open`] removes when the process that made it is gone.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ImageConfig;
use crate::error::{ErrorKind, KindResult};

/// Names of temporary entries: pid first, so [`Store::open`] can tell
/// whose they are.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What the cache knows about one converted image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the manifest the image was built from.
    pub manifest_digest: String,
    /// Canonical names that resolved to it (`docker.io/library/python:3.12`).
    pub names: Vec<String>,
    /// The config summary.
    pub config: ImageConfig,
    /// Every blob the image needs: manifest, config and layers.
    pub blobs: Vec<String>,
    /// Seconds since the epoch of the last resolve that used it.
    pub last_used: u64,
}

/// One cached image as listed by [`Store::list_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// The record.
    pub record: ImageRecord,
    /// The ext4 file.
    pub ext4: PathBuf,
    /// Bytes the ext4 file takes on disk (it is sparse).
    pub disk_bytes: u64,
}

/// One cached blob as listed by [`Store::list_blobs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size.
    pub bytes: u64,
}

/// A name as written → the manifest digest it resolved to.
#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    name: String,
    manifest_digest: String,
}

/// A file in `tmp/`, removed when dropped unless [`TempFile::persist`]ed.
#[derive(Debug)]
pub struct TempFile {
    /// Where it is.
    pub path: PathBuf,
    /// Open for writing.
    pub file: File,
    done: bool,
}

impl TempFile {
    /// fsyncs and renames the file to `to` (on the same filesystem).
    pub fn persist(mut self, to: &Path) -> KindResult<()> {
        self.file
            .sync_all()
            .map_err(|e| ErrorKind::cache("sync", &self.path, e))?;
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| ErrorKind::cache("create", parent, e))?;
        }
        fs::rename(&self.path, to).map_err(|e| ErrorKind::cache("rename into", to, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A directory in `tmp/`, removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir {
    /// Where it is.
    pub path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether `hex` is 64 lowercase hex digits (a name we may join to a path).
fn is_hex64(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex of a `sha256:<hex>` digest, or `None` for anything else.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_hex64(h))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bad_digest(digest: &str) -> ErrorKind {
    ErrorKind::Malformed {
        what: "digest",
        digest: digest.to_owned(),
        detail: "not sha256:<64 lowercase hex digits>".to_owned(),
    }
}

impl Store {
    /// Opens (creating) the cache at `root` and removes temporary entries
    /// left by processes that no longer run.
    pub fn open(root: &Path) -> KindResult<Store> {
        for sub in ["blobs/sha256", "images", "refs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| ErrorKind::cache("create", &dir, e))?;
        }
        let store = Store {
            root: root.to_owned(),
        };
        store.clean_stale_temps();
        Ok(store)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The temporary area; empty whenever no resolve is running.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn clean_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
            if !alive {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
    }

    /// Takes the cache's lock until the returned file is dropped, so two
    /// processes never evict what the other is building.
    pub fn lock(&self) -> KindResult<File> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ErrorKind::cache("open", &path, e))?;
        file.lock()
            .map_err(|e| ErrorKind::cache("lock", &path, e))?;
        Ok(file)
    }

    fn temp_name(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.tmp_dir()
            .join(format!("{}.{n}.{nanos:x}.{what}", std::process::id()))
    }

    /// A new empty file in `tmp/`.
    pub fn temp_file(&self, what: &str) -> KindResult<TempFile> {
        let path = self.temp_name(what);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ErrorKind::cache("create", &path, e))?;
        Ok(TempFile {
            path,
            file,
            done: false,
        })
    }

    /// A new empty directory in `tmp/`, private to this process.
    pub fn temp_dir(&self, what: &str) -> KindResult<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.temp_name(what);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| ErrorKind::cache("create", &path, e))?;
        Ok(TempDir { path })
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> KindResult<PathBuf> {
        let hex = digest_hex(digest).ok_or_else(|| bad_digest(digest))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Whether the blob is in the cache.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Reads a whole blob of at most `max` bytes, checking its digest; a
    /// blob that does not match is removed so the next pull fetches it anew.
    pub fn read_blob(&self, digest: &str, max: u64) -> KindResult<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| ErrorKind::cache("open", &path, e))?;
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| ErrorKind::cache("read", &path, e))?;
        if bytes.len() as u64 > max {
            return Err(ErrorKind::Malformed {
                what: "blob",
                digest: digest.to_owned(),
                detail: format!("larger than {max} bytes"),
            });
        }
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let _ = fs::remove_file(&path);
            return Err(ErrorKind::DigestMismatch {
                what: "cached blob",
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> KindResult<String> {
        let digest = sha256_digest(bytes);
        if !self.has_blob(&digest) {
            let mut tmp = self.temp_file("blob")?;
            tmp.file
                .write_all(bytes)
                .map_err(|e| ErrorKind::cache("write", &tmp.path, e))?;
            tmp.persist(&self.blob_path(&digest)?)?;
        }
        Ok(digest)
    }

    /// Copies `reader` into the store, at most `max` bytes, hashing as it
    /// goes; when `expected` is given the content must match it. Returns
    /// the digest and size.
    pub fn import<R: Read>(
        &self,
        mut reader: R,
        expected: Option<&str>,
        max: u64,
    ) -> KindResult<(String, u64)> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                // Already here (verified when it came in): no need to read
                // it; archive readers skip an entry's unread data themselves.
                return Ok((
                    d.to_owned(),
                    fs::metadata(self.blob_path(d)?).map_or(0, |m| m.len()),
                ));
            }
        }
        let mut tmp = self.temp_file("import")?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| ErrorKind::cache("read into", &tmp.path, e))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > max {
                return Err(ErrorKind::Malformed {
                    what: "blob",
                    digest: expected.unwrap_or("(unnamed)").to_owned(),
                    detail: format!("larger than {max} bytes"),
                });
            }
            hasher.update(&buf[..n]);
            tmp.file
                .write_all(&buf[..n])
                .map_err(|e| ErrorKind::cache("write", &tmp.path, e))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = expected {
            if actual != expected {
                return Err(ErrorKind::DigestMismatch {
                    what: "blob",
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        tmp.persist(&self.blob_path(&actual)?)?;
        Ok((actual, size))
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        let key = hex::encode(Sha256::digest(name.as_bytes()));
        self.root.join("refs").join(format!("{key}.json"))
    }

    /// The manifest digest `name` resolved to last time, if any.
    pub fn get_ref(&self, name: &str) -> Option<String> {
        let bytes = fs::read(self.ref_path(name)).ok()?;
        let rec: RefRecord = serde_json::from_slice(&bytes).ok()?;
        (rec.name == name && digest_hex(&rec.manifest_digest).is_some())
            .then_some(rec.manifest_digest)
    }

    /// Records that `name` resolved to `digest`.
    pub fn set_ref(&self, name: &str, digest: &str) -> KindResult<()> {
        let rec = RefRecord {
            name: name.to_owned(),
            manifest_digest: digest.to_owned(),
        };
        self.write_json(&self.ref_path(name), &rec)
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> KindResult<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| ErrorKind::cache("encode", path, io::Error::other(e)))?;
        let mut tmp = self.temp_file("json")?;
        tmp.file
            .write_all(&bytes)
            .map_err(|e| ErrorKind::cache("write", &tmp.path, e))?;
        tmp.persist(path)
    }

    /// The directory of the image built from `manifest_digest`.
    pub fn image_dir(&self, manifest_digest: &str) -> KindResult<PathBuf> {
        let hex = digest_hex(manifest_digest).ok_or_else(|| bad_digest(manifest_digest))?;
        Ok(self.root.join("images").join(hex))
    }

    /// The image built from `manifest_digest`, when it is complete.
    pub fn get_image(&self, manifest_digest: &str) -> Option<CachedImage> {
        let dir = self.image_dir(manifest_digest).ok()?;
        self.read_image(&dir)
    }

    fn read_image(&self, dir: &Path) -> Option<CachedImage> {
        let record: ImageRecord =
            serde_json::from_slice(&fs::read(dir.join("image.json")).ok()?).ok()?;
        let ext4 = dir.join("rootfs.ext4");
        let meta = fs::metadata(&ext4).ok()?;
        Some(CachedImage {
            record,
            ext4,
            disk_bytes: meta.blocks() * 512,
        })
    }

    /// Writes an image's record (the ext4 file must already be in place:
    /// the record is what makes the image visible).
    pub fn put_image_record(&self, record: &ImageRecord) -> KindResult<()> {
        let dir = self.image_dir(&record.manifest_digest)?;
        self.write_json(&dir.join("image.json"), record)
    }

    /// Marks an image used now and adds `name` to its names.
    pub fn touch_image(
        &self,
        manifest_digest: &str,
        name: &str,
    ) -> KindResult<Option<CachedImage>> {
        let Some(mut image) = self.get_image(manifest_digest) else {
            return Ok(None);
        };
        image.record.last_used = now_secs();
        if !image.record.names.iter().any(|n| n == name) {
            image.record.names.push(name.to_owned());
        }
        self.put_image_record(&image.record)?;
        Ok(Some(image))
    }

    /// Every complete image, most recently used first.
    pub fn list_images(&self) -> Vec<CachedImage> {
        let mut out: Vec<CachedImage> = fs::read_dir(self.root.join("images"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.read_image(&e.path()))
            .collect();
        out.sort_by(|a, b| {
            b.record
                .last_used
                .cmp(&a.record.last_used)
                .then(a.record.manifest_digest.cmp(&b.record.manifest_digest))
        });
        out
    }

    /// Every blob with its size, sorted by digest.
    pub fn list_blobs(&self) -> Vec<CachedBlob> {
        let mut out: Vec<CachedBlob> = fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let bytes = e.metadata().ok()?.len();
                is_hex64(&name).then(|| CachedBlob {
                    digest: format!("sha256:{name}"),
                    bytes,
                })
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Bytes the cache takes: blobs plus the images' allocated blocks.
    pub fn usage(&self) -> u64 {
        let blobs: u64 = self.list_blobs().iter().map(|b| b.bytes).sum();
        let images: u64 = self.list_images().iter().map(|i| i.disk_bytes).sum();
        blobs + images
    }

    /// Removes the images a name or digest selects (a canonical name, a
    /// manifest digest, or a unique prefix of its hex), then the blobs no
    /// remaining image needs. Returns the removed records.
    pub fn remove_image(&self, selector: &str) -> KindResult<Vec<ImageRecord>> {
        let selected: Vec<CachedImage> = self
            .list_images()
            .into_iter()
            .filter(|i| {
                let hex = i.record.manifest_digest.trim_start_matches("sha256:");
                i.record.manifest_digest == selector
                    || i.record.names.iter().any(|n| n == selector)
                    || (selector.len() >= 12
                        && hex.starts_with(selector.trim_start_matches("sha256:")))
            })
            .collect();
        let mut removed = Vec::new();
        for image in selected {
            self.drop_image(&image.record)?;
            removed.push(image.record);
        }
        self.remove_unreferenced_blobs()?;
        Ok(removed)
    }

    fn drop_image(&self, record: &ImageRecord) -> KindResult<()> {
        let dir = self.image_dir(&record.manifest_digest)?;
        // The record goes first: an image without one is invisible, so a
        // crash halfway leaves nothing that looks usable.
        let _ = fs::remove_file(dir.join("image.json"));
        fs::remove_dir_all(&dir).map_err(|e| ErrorKind::cache("remove", &dir, e))?;
        // Names that pointed here now point at nothing.
        for entry in fs::read_dir(self.root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rec: Option<RefRecord> = fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if rec.is_some_and(|r| r.manifest_digest == record.manifest_digest) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Removes blobs that no complete image lists. Only call under
    /// [`Store::lock`]: a pull in progress has blobs no record names yet.
    pub fn remove_unreferenced_blobs(&self) -> KindResult<u64> {
        let keep: HashSet<String> = self
            .list_images()
            .into_iter()
            .flat_map(|i| i.record.blobs)
            .collect();
        let mut freed = 0;
        for blob in self.list_blobs() {
            if !keep.contains(&blob.digest) {
                let path = self.blob_path(&blob.digest)?;
                fs::remove_file(&path).map_err(|e| ErrorKind::cache("remove", &path, e))?;
                freed += blob.bytes;
            }
        }
        Ok(freed)
    }

    /// Evicts least recently used images (never `keep`) and then unneeded
    /// blobs until the cache takes at most `max_bytes`.
    pub fn evict(&self, max_bytes: u64, keep: Option<&str>) -> KindResult<Vec<ImageRecord>> {
        let mut evicted = Vec::new();
        self.remove_unreferenced_blobs()?;
        let mut images = self.list_images();
        while self.usage() > max_bytes {
            // Oldest last in the list.
            let Some(pos) = images
                .iter()
                .rposition(|i| Some(i.record.manifest_digest.as_str()) != keep)
            else {
                break;
            };
            let image = images.remove(pos);
            self.drop_image(&image.record)?;
            self.remove_unreferenced_blobs()?;
            evicted.push(image.record);
        }
        Ok(evicted)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
