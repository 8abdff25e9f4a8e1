//! Remembered file digests: a file whose identity (device, inode, size,
//! mtime, ctime) is unchanged since it was hashed is not read again. This
//! is what makes a key over a gigabyte of unchanged inputs cheap.
//!
//! A file changed within the same clock tick as it was hashed would keep
//! its mtime; like git's "racily clean" rule, a digest is trusted only for
//! files last modified well before they were hashed.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::sha256_file;
use crate::error::StoreError;

/// How long before hashing a file must have been last modified for its
/// digest to be trusted later: above any file system's timestamp
/// granularity.
const RACY_NS: i64 = 2_000_000_000;

/// Most remembered files; the ones not used by this process go first.
const MAX_RECORDS: usize = 500_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    sha256: String,
    hashed_ns: i64,
    #[serde(skip)]
    used: bool,
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// File digests by path, optionally kept in a file between runs.
#[derive(Debug, Default)]
pub struct DigestMemo {
    file: Option<PathBuf>,
    records: Mutex<HashMap<String, Record>>,
}

impl DigestMemo {
    /// A memo for this process only.
    pub fn in_memory() -> Self {
        DigestMemo::default()
    }

    /// The memo kept in `file` (an unreadable or damaged file is an empty
    /// memo: it only ever saves work).
    pub fn load(file: &Path) -> Self {
        let records = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DigestMemo {
            file: Some(file.to_owned()),
            records: Mutex::new(records),
        }
    }

    /// The hex SHA-256 and length of the regular file at `path`, whose
    /// metadata (not following links) is `meta`.
    pub fn digest(&self, path: &Path, meta: &Metadata) -> Result<(String, u64), StoreError> {
        let id = path.to_string_lossy().into_owned();
        let mtime_ns = ns(meta.mtime(), meta.mtime_nsec());
        let ctime_ns = ns(meta.ctime(), meta.ctime_nsec());
        let same = |r: &Record| {
            r.dev == meta.dev()
                && r.ino == meta.ino()
                && r.size == meta.size()
                && r.mtime_ns == mtime_ns
                && r.ctime_ns == ctime_ns
                && mtime_ns.max(ctime_ns) < r.hashed_ns - RACY_NS
        };
        if let Ok(mut records) = self.records.lock() {
            if let Some(r) = records.get_mut(&id).filter(|r| same(r)) {
                r.used = true;
                return Ok((r.sha256.clone(), r.size));
            }
        }
        let hashed_ns = now_ns();
        let (sha256, size) = sha256_file(path)?;
        if size == meta.size() {
            if let Ok(mut records) = self.records.lock() {
                records.insert(
                    id,
                    Record {
                        dev: meta.dev(),
                        ino: meta.ino(),
                        size,
                        mtime_ns,
                        ctime_ns,
                        sha256: sha256.clone(),
                        hashed_ns,
                        used: true,
                    },
                );
            }
        }
        Ok((sha256, size))
    }

    /// Writes the memo back to its file (atomically; a no-op in memory).
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let Ok(mut records) = self.records.lock() else {
            return Ok(());
        };
        if records.len() > MAX_RECORDS {
            let mut unused: Vec<String> = records
                .iter()
                .filter(|(_, r)| !r.used)
                .map(|(k, _)| k.clone())
                .collect();
            unused.sort();
            let excess = records.len() - MAX_RECORDS;
            for k in unused.into_iter().take(excess) {
                records.remove(&k);
            }
        }
        let bytes = serde_json::to_vec(&*records).map_err(|e| StoreError::Corrupt {
            what: "digest memo".into(),
            detail: e.to_string(),
        })?;
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| StoreError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, file).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io("rename into", file, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_unchanged_file_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let memo_file = dir.path().join("memo");
        let memo = DigestMemo::load(&memo_file);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let first = memo.digest(&p, &meta).unwrap();
        memo.save().unwrap();

        // The memo answers without reading: a forged digest in the record
        // comes back for the old, unchanged file.
        let memo = DigestMemo::load(&memo_file);
        let key = p.to_string_lossy().into_owned();
        assert_eq!(memo.records.lock().unwrap()[&key].sha256, first.0);
        {
            let mut records = memo.records.lock().unwrap();
            let r = records.get_mut(&key).unwrap();
            r.sha256 = "forged".into();
            // Writing the file set its ctime to now: as if it had been
            // hashed well after that.
            r.hashed_ns += 10 * RACY_NS;
        }
        assert_eq!(memo.digest(&p, &meta).unwrap().0, "forged");

        // A real change moves mtime/ctime: hashed again.
        std::fs::write(&p, b"two").unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let second = memo.digest(&p, &meta).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, sha256_file(&p).unwrap());
    }

    #[test]
    fn a_file_modified_just_before_it_was_hashed_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let memo = DigestMemo::in_memory();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        memo.digest(&p, &meta).unwrap();
        let key = p.to_string_lossy().into_owned();
        // Forge the record: same identity, different digest. A racily
        // clean record must not be trusted, so the real digest comes back.
        memo.records.lock().unwrap().get_mut(&key).unwrap().sha256 = "forged".into();
        assert_eq!(memo.digest(&p, &meta).unwrap(), sha256_file(&p).unwrap());
    }
}
