//! The store on this host's disk, shared by every `sbxrun` process that
//! uses the same cache directory:
//!
//! ```text
//! steps/
//!   entries/<key>.json    one per cached step; mtime = last use (LRU)
//!   blobs/<ab>/<sha256>   file contents, read-only, shared by all entries
//!   last/<id>.json        the key parts an instance had on its last run
//!   locks/<key>.lock      held while a process runs that key
//!   tmp/                  writes in progress, renamed into place
//!   lock                  shared by readers and writers, exclusive to evict
//!   salt                  random; secret values are hashed with it
//! ```
//!
//! Every write lands in `tmp/` and is renamed into place, so two processes
//! storing the same key at once leave one whole entry.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::digest::{copy_hashing, sha256_hex};
use crate::error::StoreError;
use crate::store::{Blob, Entry, Store, ENTRY_FORMAT};

/// The step cache in a directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    salt: Vec<u8>,
}

/// A process's claim on a key: others wait for it to finish storing, so
/// two runs of one job run each step once. Released on drop.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// What the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    pub entries: u64,
    pub blobs: u64,
    /// Bytes of blobs and entries.
    pub bytes: u64,
}

/// What an eviction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    pub entries: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// A lock file, created if missing; its contents never matter.
fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl LocalStore {
    /// Opens (creating) the store in `root`.
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        for sub in ["entries", "blobs", "last", "locks", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| StoreError::io("create", &d, e))?;
        }
        let store = LocalStore {
            root: root.to_owned(),
            salt: Vec::new(),
        };
        let salt = store.salt()?;
        Ok(LocalStore { salt, ..store })
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn salt(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.root.join("salt");
        match fs::read(&path) {
            Ok(s) if s.len() == 32 => return Ok(s),
            Ok(_) | Err(_) => {}
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| {
            StoreError::io(
                "make a salt for",
                &path,
                std::io::Error::other(e.to_string()),
            )
        })?;
        self.write_atomic(&path, &fresh)?;
        // Whoever renamed last won; everyone uses what is on disk.
        fs::read(&path).map_err(|e| StoreError::io("read", &path, e))
    }

    /// A digest of a secret's value that does not reveal it: salted with
    /// this store's own random salt, so a report's key parts cannot be
    /// checked against guesses elsewhere.
    pub fn secret_digest(&self, value: &[u8]) -> String {
        let mut bytes = self.salt.clone();
        bytes.extend_from_slice(value);
        sha256_hex(&bytes)
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}.{n}", std::process::id()))
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        fs::write(&tmp, bytes).map_err(|e| StoreError::io("write", &tmp, e))?;
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io("rename into", dest, e)
        })
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(format!("{key}.json"))
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[..2]).join(sha256)
    }

    /// Holds the store's lock shared (readers and writers) or exclusive
    /// (eviction) until the file is dropped.
    fn lock(&self, exclusive: bool, wait: bool) -> Result<Option<File>, StoreError> {
        let path = self.root.join("lock");
        let f = open_lock_file(&path)?;
        let got = match (exclusive, wait) {
            (true, true) => f.lock().map(|_| true),
            (false, true) => f.lock_shared().map(|_| true),
            (true, false) => match f.try_lock() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
            (false, false) => match f.try_lock_shared() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
        }
        .map_err(|e| StoreError::io("lock", &path, e))?;
        Ok(got.then_some(f))
    }

    /// Keeps eviction away while a step is looked up and restored, or its
    /// blobs and entry are stored. Held until dropped.
    pub fn reading(&self) -> Result<File, StoreError> {
        self.lock(false, true)
            .map(|f| f.expect("a waiting lock is always taken"))
    }

    /// Claims `key`: waits while another process holds it, polling
    /// `cancelled` every `poll`; `None` once cancelled.
    pub fn claim(
        &self,
        key: &str,
        poll: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<KeyLock>, StoreError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let f = open_lock_file(&path)?;
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(Some(KeyLock { _file: f })),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
            }
            if cancelled() {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    /// The key parts instance `id` had when it last ran here.
    pub fn last_parts(&self, id: &str) -> Option<BTreeMap<String, String>> {
        let path = self
            .root
            .join("last")
            .join(format!("{}.json", sha256_hex(id.as_bytes())));
        let text = fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Remembers instance `id`'s key parts for the next run's explanation.
    pub fn set_last_parts(
        &self,
        id: &str,
        parts: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let path = self
            .root
            .join("last")
            .join(format!("{}.json", sha256_hex(id.as_bytes())));
        let bytes = serde_json::to_vec(parts).map_err(|e| StoreError::Corrupt {
            what: "key parts".into(),
            detail: e.to_string(),
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// Every entry's key, size of its JSON and last use.
    fn entry_files(&self) -> Vec<(String, u64, SystemTime)> {
        let Ok(dir) = fs::read_dir(self.root.join("entries")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                let meta = e.metadata().ok()?;
                Some((
                    name,
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ))
            })
            .collect()
    }

    /// Every blob and its size.
    fn blob_files(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let Ok(dir) = fs::read_dir(self.root.join("blobs")) else {
            return out;
        };
        for shard in dir.filter_map(Result::ok) {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.filter_map(Result::ok) {
                if let (Some(name), Ok(meta)) = (f.file_name().to_str(), f.metadata()) {
                    out.insert(name.to_owned(), meta.len());
                }
            }
        }
        out
    }

    /// What the store holds now.
    pub fn usage(&self) -> StoreUsage {
        let entries = self.entry_files();
        let blobs = self.blob_files();
        StoreUsage {
            entries: entries.len() as u64,
            blobs: blobs.len() as u64,
            bytes: entries.iter().map(|e| e.1).sum::<u64>() + blobs.values().sum::<u64>(),
        }
    }

    /// Removes least recently used entries until the store takes at most
    /// `max_bytes`, and every blob no entry refers to. Skipped (nothing
    /// removed) when `wait` is false and another process is using the
    /// store.
    pub fn evict(&self, max_bytes: u64, wait: bool) -> Result<Eviction, StoreError> {
        let Some(_lock) = self.lock(true, wait)? else {
            return Ok(Eviction::default());
        };
        let mut out = Eviction::default();
        let mut entries = self.entry_files();
        entries.sort_by_key(|e| e.2);
        let blobs = self.blob_files();
        // References per blob, from the entries that parse.
        let mut refs: HashMap<String, u32> = HashMap::new();
        let mut of_entry: Vec<(String, u64, Vec<String>)> = Vec::new();
        for (key, size, _) in entries {
            match self.read_entry(&key) {
                Ok(Some(e)) => {
                    let shas: Vec<String> = e.blobs().map(|b| b.sha256.clone()).collect();
                    for s in &shas {
                        *refs.entry(s.clone()).or_default() += 1;
                    }
                    of_entry.push((key, size, shas));
                }
                // Damaged entries were removed by read_entry.
                _ => out.entries += 1,
            }
        }
        let mut total: u64 = of_entry.iter().map(|e| e.1).sum::<u64>()
            + blobs
                .iter()
                .filter(|(s, _)| refs.contains_key(*s))
                .map(|(_, n)| n)
                .sum::<u64>();
        for (key, size, shas) in &of_entry {
            if total <= max_bytes {
                break;
            }
            let _ = fs::remove_file(self.entry_path(key));
            out.entries += 1;
            out.bytes += size;
            total = total.saturating_sub(*size);
            for s in shas {
                if let Some(n) = refs.get_mut(s) {
                    *n -= 1;
                    if *n == 0 {
                        refs.remove(s);
                        let freed = blobs.get(s).copied().unwrap_or(0);
                        total = total.saturating_sub(freed);
                    }
                }
            }
        }
        for (sha, size) in &blobs {
            if !refs.contains_key(sha) {
                let p = if is_hex_digest(sha) {
                    self.blob_path(sha)
                } else {
                    self.root
                        .join("blobs")
                        .join(sha.get(..2).unwrap_or(""))
                        .join(sha)
                };
                if fs::remove_file(p).is_ok() {
                    out.blobs += 1;
                    out.bytes += size;
                }
            }
        }
        // Writes that never finished (a killed process) and idle key locks.
        for sub in ["tmp", "locks"] {
            if let Ok(dir) = fs::read_dir(self.root.join(sub)) {
                for f in dir.filter_map(Result::ok) {
                    let old = f
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(3600));
                    if old {
                        let _ = fs::remove_file(f.path());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes everything the store holds, explanations of the last runs
    /// included.
    pub fn clear(&self) -> Result<Eviction, StoreError> {
        let evicted = self.evict(0, true)?;
        if let Ok(dir) = fs::read_dir(self.root.join("last")) {
            for f in dir.filter_map(Result::ok) {
                let _ = fs::remove_file(f.path());
            }
        }
        Ok(evicted)
    }

    fn read_entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let path = self.entry_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(StoreError::Corrupt {
                    what: format!("entry {key}"),
                    detail: e.to_string(),
                });
            }
        };
        if entry.format != ENTRY_FORMAT {
            return Ok(None);
        }
        if entry.key != key || entry.blobs().any(|b| !is_hex_digest(&b.sha256)) {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Corrupt {
                what: format!("entry {key}"),
                detail: "its key or a blob name is wrong".into(),
            });
        }
        Ok(Some(entry))
    }
}

impl Store for LocalStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        if !is_hex_digest(key) {
            return Ok(None);
        }
        let entry = self.read_entry(key)?;
        if entry.is_some() {
            // The entry's mtime is its last use, for eviction.
            if let Ok(f) = File::options().write(true).open(self.entry_path(key)) {
                let _ = f.set_modified(SystemTime::now());
            }
        }
        Ok(entry)
    }

    fn put(&self, entry: &Entry) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            what: format!("entry {}", entry.key),
            detail: e.to_string(),
        })?;
        if !is_hex_digest(&entry.key) {
            return Err(StoreError::UnsafePath(entry.key.clone()));
        }
        self.write_atomic(&self.entry_path(&entry.key), &bytes)
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        if !is_hex_digest(key) {
            return Ok(());
        }
        let path = self.entry_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(StoreError::io("remove", &path, e)),
            _ => Ok(()),
        }
    }

    fn put_blob(&self, src: &Path) -> Result<Blob, StoreError> {
        let tmp = self.tmp_path();
        let (sha256, size) = copy_hashing(src, &tmp).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        let dest = self.blob_path(&sha256);
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.len() == size) {
            let _ = fs::remove_file(&tmp);
        } else {
            let result = dest
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|_| fs::set_permissions(&tmp, PermissionsExt::from_mode(0o444)))
                .and_then(|_| fs::rename(&tmp, &dest));
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::io("store", &dest, e));
            }
        }
        Ok(Blob { sha256, size })
    }

    fn get_blob(&self, blob: &Blob, dest: &Path) -> Result<(), StoreError> {
        if !is_hex_digest(&blob.sha256) {
            return Err(StoreError::UnsafePath(blob.sha256.clone()));
        }
        let src = self.blob_path(&blob.sha256);
        let copied = match copy_hashing(&src, dest) {
            Ok(c) => c,
            Err(StoreError::Io { source, .. })
                if source.kind() == ErrorKind::NotFound && !src.exists() =>
            {
                let _ = fs::remove_file(dest);
                return Err(StoreError::Corrupt {
                    what: format!("blob {}", blob.sha256),
                    detail: "it is missing".into(),
                });
            }
            Err(e) => {
                let _ = fs::remove_file(dest);
                return Err(e);
            }
        };
        if copied != (blob.sha256.clone(), blob.size) {
            let _ = fs::remove_file(dest);
            let _ = fs::remove_file(&src);
            return Err(StoreError::Corrupt {
                what: format!("blob {}", blob.sha256),
                detail: format!("its {} bytes hash to {}", copied.1, &copied.0[..16]),
            });
        }
        Ok(())
    }
}

use std::os::unix::fs::PermissionsExt;
