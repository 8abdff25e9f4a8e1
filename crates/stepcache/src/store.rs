//! What the cache keeps of a step, and the trait every backend implements.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::tree::Tree;

/// Bumped when [`Entry`] changes incompatibly; older entries are misses.
pub const ENTRY_FORMAT: u32 = 1;

/// A content-addressed file in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Blob {
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
    pub size: u64,
}

/// One cached step result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    /// The key it is stored under.
    pub key: String,
    /// The digests of the key's parts.
    pub parts: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch when it was stored.
    pub created_unix_ms: u64,
    /// The step's outputs.
    pub outputs: Tree,
    /// The step's output log, as the run wrote it.
    pub log: Option<Blob>,
    /// The runner's record of the result (verdict, exit code, usage,
    /// timings, …); the cache does not look inside.
    pub record: serde_json::Value,
}

impl Entry {
    /// Every blob the entry refers to.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.outputs.blobs().chain(self.log.iter())
    }
}

/// A place to keep entries (by key) and blobs (by digest). A remote cache
/// (HTTP, S3) implements the same five calls: `GET/PUT /ac/<key>` for
/// entries and `GET/PUT /cas/<sha256>` for blobs is all it takes.
///
/// Writes must be atomic: a reader sees a whole entry or blob or none,
/// even with two writers of the same key at once.
pub trait Store: Send + Sync {
    /// The entry under `key`, if there is one. A damaged entry is
    /// removed and reported as [`StoreError::Corrupt`].
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Stores `entry` under its key; its blobs must be stored first.
    fn put(&self, entry: &Entry) -> Result<(), StoreError>;
    /// Forgets the entry under `key` (no error if there is none).
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Stores the contents of the file at `src`; returns its blob.
    fn put_blob(&self, src: &Path) -> Result<Blob, StoreError>;
    /// Writes `blob`'s contents to the new file `dest`, checking them
    /// against the digest; a mismatch removes `dest` (and the damaged
    /// blob) and is [`StoreError::Corrupt`].
    fn get_blob(&self, blob: &Blob, dest: &Path) -> Result<(), StoreError>;
}
