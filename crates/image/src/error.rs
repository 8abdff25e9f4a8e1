//! The errors of this crate. Every error the caller sees is an
//! [`ImageError`]: the image as the user wrote it plus what went wrong
//! ([`ErrorKind`]), which names the layer digest or file when one is at
//! fault. Credentials never appear in any of them.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::layers::LayerError;
use crate::reference::ReferenceError;

/// Resolving one image failed.
#[derive(Debug)]
pub struct ImageError {
    /// The image as the user wrote it.
    pub image: String,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image {}: {}", self.image, self.kind)
    }
}

impl std::error::Error for ImageError {
    // The kind's message is already in ours; its own cause comes next.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// What went wrong resolving an image.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A local file or directory named by the source is missing or unreadable.
    #[error("cannot read {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A path source that is neither a directory nor an ext4 file.
    #[error("{path} is not an ext4 file or a directory")]
    NotAnImage { path: PathBuf },
    /// The registry answered 401.
    #[error("{registry} refused access (401 Unauthorized) {}", if *had_credentials {
        "with the credentials found for it; check them (docker login, REGISTRY_AUTH_FILE)"
    } else {
        "and no credentials were found for it; log in with `docker login` or `skopeo login`, or set REGISTRY_AUTH_FILE"
    })]
    Unauthorized {
        registry: String,
        had_credentials: bool,
    },
    /// The registry does not have the manifest.
    #[error("not found in {registry}: {detail}")]
    NotFound { registry: String, detail: String },
    /// The registry did not answer in time.
    #[error("{registry} did not answer within {}s while {what}", after.as_secs())]
    Timeout {
        registry: String,
        what: String,
        after: Duration,
    },
    /// Any other failure talking to the registry.
    #[error("pulling from {registry} failed while {what}: {detail}")]
    Registry {
        registry: String,
        what: String,
        detail: String,
    },
    /// Content does not hash to the digest that names it.
    #[error("{what} {expected} does not match its digest (got {actual}); the copy was discarded")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// An index without a linux/amd64 manifest.
    #[error("no linux/amd64 image in the index; it has only {}", if available.is_empty() { "entries without a platform".to_owned() } else { available.join(", ") })]
    NoPlatform { available: Vec<String> },
    /// A manifest, config or layer of a kind this crate cannot use.
    #[error("unsupported {what} media type {media_type:?}")]
    MediaType {
        what: &'static str,
        media_type: String,
    },
    /// JSON that is not a manifest, index or config.
    #[error("malformed {what} {digest}: {detail}")]
    Malformed {
        what: &'static str,
        digest: String,
        detail: String,
    },
    /// An OCI layout or an archive that is not usable.
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    /// Applying a layer failed; the digest says which.
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: LayerError,
    },
    /// Building the ext4 file failed.
    #[error(transparent)]
    Ext4(#[from] crate::ext4::Ext4Error),
    /// The cache cannot be read or written.
    #[error("cache: cannot {op} {path}")]
    Cache {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ErrorKind {
    /// An I/O failure on a cache path.
    pub(crate) fn cache(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ErrorKind::Cache {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Results inside the crate before the image name is attached.
pub(crate) type KindResult<T> = Result<T, ErrorKind>;
