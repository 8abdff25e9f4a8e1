//! Local image sources read into the same store a registry pull fills:
//! an OCI image layout directory (`oci:`), a tar of one (`oci-archive:`)
//! and what `docker save` writes (`docker-archive:`).
//!
//! Every blob is copied in and checked against the digest that names it,
//! exactly as a download is. Archives are read in one pass, in whatever
//! order their entries come. A `docker save` archive names layers by file
//! name, not digest, so a manifest is made for it from the files' sha256
//! (same archive → same manifest → same digest → same cache entry).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, KindResult};
use crate::manifest::{self, Document, MAX_MANIFEST_BYTES};
use crate::reference::RegistryRef;
use crate::store::{digest_hex, Store};

/// The annotation skopeo, umoci and buildkit put the tag in.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn layout_err(path: &Path, reason: impl Into<String>) -> ErrorKind {
    ErrorKind::Layout {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn open(path: &Path) -> KindResult<File> {
    File::open(path).map_err(|source| ErrorKind::Local {
        path: path.to_owned(),
        source,
    })
}

/// Where blobs come from while resolving an index.
trait Blobs {
    /// Makes sure `digest` is in the store (copying it in, verified).
    fn fetch(&mut self, store: &Store, digest: &str, max: u64) -> KindResult<()>;
}

/// Blobs of a layout directory.
struct LayoutDir<'a>(&'a Path);

impl Blobs for LayoutDir<'_> {
    fn fetch(&mut self, store: &Store, digest: &str, max: u64) -> KindResult<()> {
        let hex = digest_hex(digest)
            .ok_or_else(|| layout_err(self.0, format!("blob digest {digest:?} is not sha256")))?;
        let path = self.0.join("blobs/sha256").join(hex);
        store.import(BufReader::new(open(&path)?), Some(digest), max)?;
        Ok(())
    }
}

/// Blobs already copied into the store (from an archive).
struct InStore<'a>(&'a Path);

impl Blobs for InStore<'_> {
    fn fetch(&mut self, store: &Store, digest: &str, _: u64) -> KindResult<()> {
        if store.has_blob(digest) {
            Ok(())
        } else {
            Err(layout_err(
                self.0,
                format!("the archive has no blob {digest}"),
            ))
        }
    }
}

/// Picks the index.json entry for `tag` (or the only one), follows nested
/// indexes to linux/amd64, copies the manifest, config and layers into the
/// store and returns the manifest digest.
fn from_index(
    store: &Store,
    path: &Path,
    index_json: &[u8],
    tag: Option<&str>,
    blobs: &mut dyn Blobs,
) -> KindResult<String> {
    let Document::Index(index) = manifest::parse(index_json, "index.json")? else {
        return Err(layout_err(path, "index.json is not an image index"));
    };
    let tag_of = |d: &oci_spec::image::Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let entry = match tag {
        Some(t) => index
            .manifests()
            .iter()
            .find(|d| tag_of(d).as_deref() == Some(t)),
        None if index.manifests().len() == 1 => index.manifests().first(),
        None => None,
    };
    let Some(entry) = entry else {
        let tags: Vec<String> = index.manifests().iter().filter_map(tag_of).collect();
        return Err(layout_err(
            path,
            match tag {
                Some(t) => format!("no image tagged {t:?} (tags: {})", tags.join(", ")),
                None => format!(
                    "holds {} images; name one with :TAG (tags: {})",
                    index.manifests().len(),
                    tags.join(", ")
                ),
            },
        ));
    };
    let mut digest = entry.digest().to_string();
    // Indexes may nest (an index per tag, pointing to per-platform ones).
    for _ in 0..4 {
        blobs.fetch(store, &digest, MAX_MANIFEST_BYTES)?;
        let bytes = store.read_blob(&digest, MAX_MANIFEST_BYTES)?;
        match manifest::parse(&bytes, &digest)? {
            Document::Index(i) => digest = manifest::pick_platform(&i)?.digest,
            Document::Manifest(m) => {
                let (config, layers) = manifest::blobs(&m, &digest)?;
                for b in std::iter::once(config).chain(layers) {
                    blobs.fetch(store, &b.digest, b.size)?;
                }
                return Ok(digest);
            }
        }
    }
    Err(layout_err(path, "indexes nested too deep"))
}

/// `oci:PATH[:tag]`.
pub fn import_layout(store: &Store, path: &Path, tag: Option<&str>) -> KindResult<String> {
    let mut index = Vec::new();
    open(&path.join("index.json"))?
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut index)
        .map_err(|source| ErrorKind::Local {
            path: path.join("index.json"),
            source,
        })?;
    from_index(store, path, &index, tag, &mut LayoutDir(path))
}

/// An archive entry's path, `./` and `/` stripped; `None` if it climbs.
fn entry_name(raw: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads an archive once: every blob under `blobs/sha256/` (OCI) or every
/// file (docker) is copied into the store; returns name → digest and the
/// symlinks (name → target name) docker uses for repeated layers.
fn scan_archive(
    store: &Store,
    path: &Path,
    all_files: bool,
) -> KindResult<(HashMap<String, String>, HashMap<String, String>)> {
    let bad = |e: std::io::Error| layout_err(path, format!("not a readable tar archive: {e}"));
    let mut archive = tar::Archive::new(BufReader::new(open(path)?));
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let Some(name) = entry_name(&raw) else {
            return Err(layout_err(
                path,
                format!("entry {:?} climbs out with '..'", raw.display()),
            ));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let expected = name
                    .strip_prefix("blobs/sha256/")
                    .map(|h| format!("sha256:{h}"));
                if let Some(d) = &expected {
                    digest_hex(d).ok_or_else(|| {
                        layout_err(
                            path,
                            format!("blob {name:?} is not named by a sha256 digest"),
                        )
                    })?;
                } else if !all_files && name != "index.json" {
                    continue;
                }
                let size = entry.header().size().unwrap_or(0);
                let (digest, _) = store.import(entry, expected.as_deref(), size.max(1))?;
                files.insert(name, digest);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                let base = Path::new(&name)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(target);
                let mut parts: Vec<&str> = Vec::new();
                for c in base.components() {
                    match c {
                        Component::Normal(s) => parts.push(s.to_str().unwrap_or("")),
                        Component::ParentDir => {
                            parts.pop();
                        }
                        _ => {}
                    }
                }
                links.insert(name, parts.join("/"));
            }
            _ => {}
        }
    }
    Ok((files, links))
}

/// `oci-archive:FILE[:tag]`.
pub fn import_oci_archive(store: &Store, path: &Path, tag: Option<&str>) -> KindResult<String> {
    let (files, _) = scan_archive(store, path, false)?;
    let index = files
        .get("index.json")
        .ok_or_else(|| layout_err(path, "no index.json: not an OCI archive"))?;
    let index = store.read_blob(index, MAX_MANIFEST_BYTES)?;
    from_index(store, path, &index, tag, &mut InStore(path))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MadeManifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// `docker-archive:FILE[:ref]`.
pub fn import_docker_archive(
    store: &Store,
    path: &Path,
    wanted: Option<&RegistryRef>,
) -> KindResult<String> {
    let (files, links) = scan_archive(store, path, true)?;
    let lookup = |name: &str| -> KindResult<String> {
        let mut n = name.to_owned();
        for _ in 0..8 {
            if let Some(d) = files.get(&n) {
                return Ok(d.clone());
            }
            match links.get(&n) {
                Some(t) => n = t.clone(),
                None => break,
            }
        }
        Err(layout_err(
            path,
            format!("manifest.json names {name:?}, which the archive lacks"),
        ))
    };
    let manifest_json = store.read_blob(&lookup("manifest.json")?, MAX_MANIFEST_BYTES)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| layout_err(path, format!("manifest.json: {e}")))?;
    let entry = match wanted {
        Some(r) => entries.iter().find(|e| {
            e.repo_tags.iter().flatten().any(|t| {
                crate::reference::parse_registry_ref(t)
                    .is_ok_and(|t| t.canonical() == r.canonical())
            })
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = entry else {
        let tags: Vec<&String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().flatten())
            .collect();
        return Err(layout_err(path, format!("no single image to take (tags: {tags:?}); name one as docker-archive:FILE:NAME:TAG")));
    };
    let blob = |name: &str| -> KindResult<Descriptor> {
        let digest = lookup(name)?;
        let size = std::fs::metadata(store.blob_path(&digest)?).map_or(0, |m| m.len());
        Ok(Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar",
            digest,
            size,
        })
    };
    let mut config = blob(&entry.config)?;
    config.media_type = "application/vnd.oci.image.config.v1+json";
    let made = MadeManifest {
        schema_version: 2,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        config,
        layers: entry
            .layers
            .iter()
            .map(|l| blob(l))
            .collect::<KindResult<_>>()?,
    };
    let bytes = serde_json::to_vec(&made).map_err(|e| layout_err(path, e.to_string()))?;
    store.put_blob(&bytes)
}
