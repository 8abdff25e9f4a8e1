//! Container images as sbxrun root images: an `image:` that names a
//! registry image (`python:3.12`), an OCI layout (`oci:DIR:tag`), an OCI
//! archive or a `docker save` archive becomes an ext4 file a step's microVM
//! boots from, plus the image's config (env, workdir, user, entrypoint,
//! cmd). [`resolve`] is the whole API for the runner; [`Store`] lists and
//! removes what is cached, for `sbxrun image ls/rm`.
//!
//! # Design
//!
//! - **Sources → one store.** Every source kind ends the same way: the
//!   manifest, config and layer blobs in a content-addressed store
//!   (`blobs/sha256/<hex>`), each verified against its digest on the way
//!   in. Conversion reads only the store, so it does not care where an
//!   image came from, and two images that share a base layer share its
//!   blob: it is downloaded once.
//! - **tokio is confined to [`pull`].** oci-client is async; nothing else
//!   here or in the runner is. `pull` builds a private current-thread
//!   runtime per call and drops it before returning; concurrent layer
//!   downloads are futures on it. The public API is blocking.
//! - **Layers are untrusted** ([`layers`]): paths are checked, symlinks
//!   are resolved inside the tree, nothing is written outside it, sizes
//!   are capped, and whiteouts follow the OCI spec.
//! - **Reproducible ext4** ([`ext4`]): the same manifest digest gives the
//!   same bytes — fixed filesystem time, UUID and hash seed from the
//!   digest, mtimes from the layers, sorted inode order, and a `debugfs`
//!   pass that pins the one thing `mkfs.ext4 -d` copies from the host
//!   (each inode's ctime).
//! - **Nothing half-written.** Every file is written in the cache's `tmp/`
//!   and renamed into place when complete; an image becomes visible when
//!   its record is written, after its ext4 file. Any error drops the
//!   temporaries, so `tmp/` is empty after a failure.
//!
//! # Cache layout
//!
//! ```text
//! <cache>/blobs/sha256/<hex>          manifests, configs, layers
//! <cache>/images/<hex>/rootfs.ext4    built from manifest sha256:<hex>
//! <cache>/images/<hex>/image.json     names, config, blobs, last use
//! <cache>/refs/<sha256(name)>.json    name → manifest digest
//! <cache>/tmp/                        work in progress
//! <cache>/lock                        held while a resolve changes things
//! ```
//!
//! The cache is capped by [`Options::max_cache_bytes`]: after each resolve
//! the least recently used images, then blobs no image needs, are removed.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod ext4;
pub mod layers;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod store;

mod convert;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{Credentials, Secret};
pub use config::ImageConfig;
pub use error::{ErrorKind, ImageError};
pub use layers::LayerLimits;
pub use progress::{Event, NoProgress, Progress};
pub use reference::{parse_registry_ref, parse_source, ImageSource, RegistryRef};
pub use store::{CachedBlob, CachedImage, ImageRecord, Store};

/// When to ask a registry again for a tag already in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use the cached image for a name resolved before; pull otherwise.
    #[default]
    Missing,
    /// Always ask the registry what the tag points to now (blobs and the
    /// ext4 file are still reused when the digest is known).
    Always,
    /// Never touch the network; an image not in the cache is an error.
    Never,
}

/// How [`resolve`] works.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cache directory (created if missing).
    pub cache_dir: PathBuf,
    /// The cache's cap in bytes; `None` for no cap.
    pub max_cache_bytes: Option<u64>,
    /// Deadline for each registry request and each chunk of a download.
    pub timeout: Duration,
    /// Registries (`host` or `host:port`) that may be spoken to over plain
    /// HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// Extra attempts for a download whose connection drops (resumed).
    pub retries: u32,
    /// When to ask the registry again.
    pub pull: PullPolicy,
    /// Credentials by registry, before the auth files are looked at.
    pub credentials: Vec<(String, Credentials)>,
    /// Caps on what an image's layers may hold.
    pub limits: LayerLimits,
}

impl Options {
    /// Defaults with the cache at `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            cache_dir: cache_dir.into(),
            max_cache_bytes: None,
            timeout: Duration::from_secs(30),
            insecure_registries: Vec::new(),
            concurrency: 4,
            retries: 3,
            pull: PullPolicy::Missing,
            credentials: Vec::new(),
            limits: LayerLimits::default(),
        }
    }
}

/// An image ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image as the user wrote it.
    pub reference: String,
    /// Its canonical name (`docker.io/library/python:3.12`, `oci:DIR:tag`,
    /// or the path).
    pub canonical: String,
    /// `sha256:<hex>` of the manifest; `None` for an ext4 file given as is.
    pub manifest_digest: Option<String>,
    /// The ext4 file to attach.
    pub ext4: PathBuf,
    /// The image's config; `None` for an ext4 file given as is.
    pub config: Option<ImageConfig>,
    /// Whether anything was fetched or built (false: all from the cache).
    pub pulled: bool,
}

/// Turns what a user wrote in `image:` into an ext4 file and config,
/// pulling, importing and converting as needed. Blocking.
///
/// A bare path that exists is a path: an ext4 file is returned as it is; a
/// directory is refused here (the runner builds directories itself, keyed
/// by their metadata rather than a digest).
pub fn resolve(
    source: &str,
    options: &Options,
    progress: &dyn Progress,
) -> Result<ResolvedImage, ImageError> {
    let wrap = |kind: ErrorKind| ImageError {
        image: source.to_owned(),
        kind,
    };
    let parsed = parse_source(source, |p: &Path| p.exists()).map_err(|e| wrap(e.into()))?;
    if let ImageSource::Path(path) = &parsed {
        return resolve_path(source, path).map_err(wrap);
    }
    convert::resolve_source(source, &parsed, options, progress).map_err(wrap)
}

fn resolve_path(source: &str, path: &Path) -> Result<ResolvedImage, ErrorKind> {
    let local = |e| ErrorKind::Local {
        path: path.to_owned(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(local)?;
    if !meta.is_file() || !ext4::is_ext4(path).map_err(local)? {
        return Err(ErrorKind::NotAnImage {
            path: path.to_owned(),
        });
    }
    Ok(ResolvedImage {
        reference: source.to_owned(),
        canonical: path.display().to_string(),
        manifest_digest: None,
        ext4: path.to_owned(),
        config: None,
        pulled: false,
    })
}
