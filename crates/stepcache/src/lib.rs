//! The step cache: a step whose inputs did not change is not run again.
//!
//! A step's key is computed, never written by the user: [`KeyBuilder`]
//! hashes named parts (the guest, the VM shape, the command, the inputs'
//! contents, …) and keeps each part's digest, so a miss can say which part
//! changed. What a step produced is kept as an [`Entry`]: its output tree
//! and log as content-addressed blobs, deduplicated across steps and runs,
//! and the runner's own record of the result.
//!
//! Everything goes through the [`Store`] trait (entries by key, blobs by
//! digest), so another backend (an HTTP or S3 cache shared by many hosts)
//! plugs in beside [`LocalStore`]. A blob is checked against its digest on
//! the way out: a damaged store gives a miss, never a wrong artifact.

#![forbid(unsafe_code)]

mod digest;
mod error;
mod key;
mod local;
mod memo;
mod store;
mod tree;

pub use digest::{copy_hashing, sha256_file, sha256_hex};
pub use error::StoreError;
pub use key::{changed_parts, CacheKey, KeyBuilder, KEY_FORMAT};
pub use local::{Eviction, KeyLock, LocalStore, StoreUsage};
pub use memo::DigestMemo;
pub use store::{Blob, Entry, Store, ENTRY_FORMAT};
pub use tree::{capture_tree, restore_tree, Tree, TreeEntry};
