//! What a user may write in `image:`, parsed and normalised. Pure: the only
//! question asked of the outside world is whether a bare path exists, and
//! that is a closure the caller passes in, so every case is unit-testable.
//!
//! The grammar follows Docker's reference library and skopeo's transports:
//!
//! - `[registry[:port]/]repo[:tag][@sha256:<hex>]`, optionally prefixed by
//!   skopeo's `docker://`. The first path component is a registry only when
//!   it has a `.` or a `:` or is `localhost`; otherwise the registry is
//!   `docker.io`, where a one-component repository lives under `library/`
//!   (`python:3.12` is `docker.io/library/python:3.12`).
//! - `oci:PATH[:tag]`, `oci-archive:FILE[:tag]`, `docker-archive:FILE[:ref]`.
//!   Like skopeo, the path ends at the first `:` after the prefix, so a path
//!   with a colon in it cannot be named this way (a bare path can).
//! - Anything starting with `/`, `./`, `../` or `~/`, or that exists on disk,
//!   is a path to a directory or an ext4 file, as before this crate.

use std::fmt;
use std::path::{Path, PathBuf};

/// The registry Docker assumes when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag assumed when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image in a registry, pulled over the distribution API.
    Registry(RegistryRef),
    /// An OCI image layout directory (`oci:PATH[:tag]`).
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A tar of an OCI image layout (`oci-archive:FILE[:tag]`).
    OciArchive { path: PathBuf, tag: Option<String> },
    /// What `docker save` writes (`docker-archive:FILE[:ref]`); `reference`
    /// picks one image of an archive holding several.
    DockerArchive {
        path: PathBuf,
        reference: Option<RegistryRef>,
    },
    /// A directory or an ext4 file, used as before images existed.
    Path(PathBuf),
}

/// A normalised registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// Host with optional port, lowercase (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/python`).
    pub repository: String,
    /// The tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pins the manifest.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The canonical form: `docker.io/library/python:3.12`,
    /// `host:5000/repo@sha256:…` (tag and digest both when both were given).
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl ImageSource {
    /// A stable name for the source: the canonical reference, or the
    /// transport with its path and tag.
    pub fn canonical(&self) -> String {
        fn with_tag(prefix: &str, path: &Path, tag: &Option<String>) -> String {
            match tag {
                Some(t) => format!("{prefix}:{}:{t}", path.display()),
                None => format!("{prefix}:{}", path.display()),
            }
        }
        match self {
            ImageSource::Registry(r) => r.canonical(),
            ImageSource::OciLayout { path, tag } => with_tag("oci", path, tag),
            ImageSource::OciArchive { path, tag } => with_tag("oci-archive", path, tag),
            ImageSource::DockerArchive { path, reference } => match reference {
                Some(r) => format!("docker-archive:{}:{}", path.display(), r.canonical()),
                None => format!("docker-archive:{}", path.display()),
            },
            ImageSource::Path(p) => p.display().to_string(),
        }
    }
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("empty image reference")]
    Empty,
    /// A transport prefix with nothing after it.
    #[error("image reference {input:?} names no path after {transport}:")]
    MissingPath { input: String, transport: String },
    /// A malformed part, said precisely.
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

fn invalid(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Parses what a user wrote in `image:`. `exists` says whether a bare
/// string names something on disk (then it stays a path).
pub fn parse_source(
    input: &str,
    exists: impl Fn(&Path) -> bool,
) -> Result<ImageSource, ReferenceError> {
    let input_trimmed = input.trim();
    if input_trimmed.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let s = input_trimmed;
    if let Some(rest) = s.strip_prefix("docker://") {
        return parse_registry_ref(rest).map(ImageSource::Registry);
    }
    for transport in ["oci-archive", "oci", "docker-archive"] {
        let Some(rest) = s.strip_prefix(transport).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let (path, tail) = match rest.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(ReferenceError::MissingPath {
                input: input.to_owned(),
                transport: transport.to_owned(),
            });
        }
        let path = PathBuf::from(path);
        return match transport {
            "docker-archive" => {
                let reference = match tail {
                    Some(t) => Some(parse_registry_ref(t)?),
                    None => None,
                };
                Ok(ImageSource::DockerArchive { path, reference })
            }
            _ => {
                let tag = match tail {
                    Some(t) => {
                        check_tag(s, t)?;
                        Some(t.to_owned())
                    }
                    None => None,
                };
                Ok(if transport == "oci" {
                    ImageSource::OciLayout { path, tag }
                } else {
                    ImageSource::OciArchive { path, tag }
                })
            }
        };
    }
    let looks_like_path = s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with("~/")
        || s == "."
        || s == "..";
    if looks_like_path || exists(Path::new(s)) {
        return Ok(ImageSource::Path(PathBuf::from(s)));
    }
    parse_registry_ref(s).map(ImageSource::Registry)
}

/// Parses and normalises `[registry[:port]/]repo[:tag][@sha256:…]`.
pub fn parse_registry_ref(input: &str) -> Result<RegistryRef, ReferenceError> {
    if input.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((n, d)) => {
            check_digest(input, d)?;
            (n, Some(d.to_owned()))
        }
        None => (input, None),
    };
    // The tag is after the last `:` that follows the last `/`; a `:` before
    // a `/` is a registry port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            let tag = &name_tag[at + 1..];
            check_tag(input, tag)?;
            (&name_tag[..at], Some(tag.to_owned()))
        }
        None => (name_tag, None),
    };
    if name.is_empty() {
        return Err(invalid(input, "no repository name"));
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_registry(input, first)?;
            (first.to_ascii_lowercase(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    let registry = match registry.as_str() {
        // Docker's own aliases for Docker Hub.
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => registry,
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    check_repository(input, &repository)?;
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        (tag, _) => tag,
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Path components: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(input: &str, repo: &str) -> Result<(), ReferenceError> {
    if repo.len() > 255 {
        return Err(invalid(input, "repository name longer than 255 characters"));
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err(invalid(input, "empty path component in repository name"));
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                input,
                format!("repository name {repo:?} must be lowercase"),
            ));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(invalid(
                input,
                format!(
                    "repository component {component:?} must start and end with a letter or digit"
                ),
            ));
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            let run = bytes[i..].iter().take_while(|&&c| !alnum(c)).count();
            let sep = &component[i..i + run];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(invalid(
                    input,
                    format!("repository component {component:?} has an invalid separator {sep:?}"),
                ));
            }
            i += run;
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(input: &str, tag: &str) -> Result<(), ReferenceError> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(invalid(
            input,
            format!("tag {tag:?} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -"),
        ));
    }
    Ok(())
}

/// Only sha256 digests: the store addresses blobs by them.
pub(crate) fn check_digest(input: &str, digest: &str) -> Result<(), ReferenceError> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(invalid(
            input,
            format!("digest {digest:?} is not sha256:<64 hex digits>"),
        ));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            input,
            format!("digest {digest:?} is not sha256:<64 lowercase hex digits>"),
        ));
    }
    Ok(())
}

/// `host[:port]`, host a DNS name or IPv4 address (IPv6 is not supported).
fn check_registry(input: &str, registry: &str) -> Result<(), ReferenceError> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid(
                input,
                format!("registry port {port:?} is not a number 0-65535"),
            ));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(invalid(
            input,
            format!("registry host {host:?} is not a valid host name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
