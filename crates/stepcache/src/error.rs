use std::path::{Path, PathBuf};

/// What can go wrong with the step cache. None of it fails a step: the
/// runner logs it and runs the step as if nothing were cached.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What the store holds is not what it claims (a blob whose bytes do
    /// not hash to its name, an entry that does not parse). The damaged
    /// item is removed, so the next run stores it again.
    #[error("cache {what} is damaged: {detail}")]
    Corrupt { what: String, detail: String },
    /// An entry names a path that would land outside the directory it is
    /// restored into.
    #[error("cache entry has an unsafe path `{0}`")]
    UnsafePath(String),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the store's content was wrong (as opposed to the host
    /// failing to read or write it).
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. } | StoreError::UnsafePath(_))
    }
}
