//! Progress of a resolve, as events the CLI turns into a progress bar or
//! JSON lines. Events arrive on the thread that called
//! [`crate::resolve`]; layer events of concurrent downloads interleave.

/// One step of a resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The manifest is known: what the image holds and what is missing.
    Manifest {
        /// `sha256:<hex>` of the (platform) manifest.
        digest: String,
        /// Layers in the image.
        layers: usize,
        /// Bytes of blobs (config and layers) not yet in the cache.
        missing_bytes: u64,
    },
    /// A blob download starts (or restarts after a dropped connection).
    BlobStart {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
        /// Bytes already there from an earlier attempt.
        resumed_at: u64,
    },
    /// More bytes of a blob arrived.
    BlobBytes {
        /// The blob.
        digest: String,
        /// Bytes of it so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// A blob is complete and verified.
    BlobDone {
        /// The blob.
        digest: String,
    },
    /// A layer is being applied to the tree.
    Applying {
        /// The layer.
        digest: String,
        /// 0-based position.
        index: usize,
        /// Layers in the image.
        of: usize,
    },
    /// The ext4 file is being built.
    BuildingExt4,
    /// The image was already in the cache; nothing was fetched or built.
    Cached {
        /// `sha256:<hex>` of the manifest.
        digest: String,
    },
}

/// Receives progress events.
pub trait Progress {
    /// Called for each event.
    fn event(&self, event: &Event);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &Event) {}
}
