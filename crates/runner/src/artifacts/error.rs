//! What can go wrong packing inputs or unpacking outputs.

/// Errors of the artifact store. Messages name the offending entry so a
/// step whose output disk is rejected says why.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the output disk holds no readable archive")]
    Archive(#[source] std::io::Error),
    #[error("entry `{0}` has an absolute path")]
    Absolute(String),
    #[error("entry `{0}` contains `..`")]
    ParentDir(String),
    #[error("entry `{0}` has an empty or non-UTF-8 path")]
    BadPath(String),
    #[error("entry `{0}` is a device node or FIFO")]
    Device(String),
    #[error("entry `{0}` is a hard link")]
    HardLink(String),
    #[error("entry `{0}` is of an unsupported type ({1})")]
    Unsupported(String, String),
    #[error("symlink `{path}` points outside the step's outputs (to `{target}`)")]
    SymlinkEscapes { path: String, target: String },
    #[error("entry `{0}` lies inside a symlink")]
    ThroughSymlink(String),
    #[error("entry `{0}` conflicts with an earlier entry of another type")]
    Conflict(String),
    #[error("entry `{0}` is not among the step's declared outputs")]
    Undeclared(String),
    #[error("the outputs exceed the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the outputs exceed the limit of {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("the inputs ({bytes} bytes so far) do not fit the {limit}-byte input disk")]
    InputTooLarge { bytes: u64, limit: u64 },
}

impl ArtifactError {
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        ArtifactError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}
