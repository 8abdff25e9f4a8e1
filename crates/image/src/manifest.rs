//! Manifests and indexes, OCI and Docker schema 2 alike (their JSON has
//! the same shape), and the choice of the linux/amd64 entry of an index.

use oci_spec::image::{Arch, ImageIndex, ImageManifest, Os};

use crate::error::{ErrorKind, KindResult};

/// The media types a registry is asked for, most preferred first.
pub const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Configs larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A parsed manifest document.
#[derive(Debug)]
pub enum Document {
    /// A multi-platform index (OCI index or Docker manifest list).
    Index(Box<ImageIndex>),
    /// One image's manifest.
    Manifest(Box<ImageManifest>),
}

/// One blob the image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The size the manifest declares.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// Parses `bytes` (the document named `digest`) as an index or manifest.
pub fn parse(bytes: &[u8], digest: &str) -> KindResult<Document> {
    let malformed = |detail: String| ErrorKind::Malformed {
        what: "manifest",
        digest: digest.to_owned(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let media = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    if value.get("manifests").is_some() || media.contains("index") || media.contains("list") {
        return ImageIndex::from_reader(bytes)
            .map(|i| Document::Index(Box::new(i)))
            .map_err(|e| malformed(e.to_string()));
    }
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(ErrorKind::MediaType {
            what: "manifest",
            media_type: "Docker schema 1 (push the image again with a current tool)".to_owned(),
        });
    }
    ImageManifest::from_reader(bytes)
        .map(|m| Document::Manifest(Box::new(m)))
        .map_err(|e| malformed(e.to_string()))
}

/// The digest of the linux/amd64 manifest in `index`, or an error listing
/// the platforms it has.
pub fn pick_platform(index: &ImageIndex) -> KindResult<BlobRef> {
    let mut available = Vec::new();
    for entry in index.manifests() {
        let Some(p) = entry.platform() else {
            continue;
        };
        if *p.os() == Os::Linux && *p.architecture() == Arch::Amd64 {
            return Ok(BlobRef {
                digest: entry.digest().to_string(),
                size: entry.size(),
                media_type: entry.media_type().to_string(),
            });
        }
        // Attestations and signatures ride along as unknown/unknown.
        let name = format!("{}/{}", p.os(), p.architecture());
        if !name.contains("unknown") && !available.contains(&name) {
            available.push(name);
        }
    }
    Err(ErrorKind::NoPlatform { available })
}

/// The config and layers of a manifest, checked to be sha256 digests.
pub fn blobs(manifest: &ImageManifest, digest: &str) -> KindResult<(BlobRef, Vec<BlobRef>)> {
    let to_ref = |d: &oci_spec::image::Descriptor| -> KindResult<BlobRef> {
        let digest_s = d.digest().to_string();
        crate::store::digest_hex(&digest_s).ok_or_else(|| ErrorKind::Malformed {
            what: "manifest",
            digest: digest.to_owned(),
            detail: format!("blob digest {digest_s:?} is not sha256"),
        })?;
        Ok(BlobRef {
            digest: digest_s,
            size: d.size(),
            media_type: d.media_type().to_string(),
        })
    };
    let config = to_ref(manifest.config())?;
    let layers = manifest
        .layers()
        .iter()
        .map(to_ref)
        .collect::<KindResult<Vec<_>>>()?;
    Ok((config, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn index(platforms: &[(&str, &str)]) -> Vec<u8> {
        let entries: Vec<String> = platforms
            .iter()
            .map(|(os, arch)| {
                format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#)
            })
            .collect();
        format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#, entries.join(",")).into_bytes()
    }

    #[test]
    fn index_resolves_to_linux_amd64() {
        let Document::Index(i) =
            parse(&index(&[("linux", "arm64"), ("linux", "amd64")]), "d").unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(pick_platform(&i).unwrap().digest, A);
    }

    #[test]
    fn index_without_amd64_lists_what_it_has() {
        let Document::Index(i) =
            parse(&index(&[("linux", "arm64"), ("unknown", "unknown")]), "d").unwrap()
        else {
            panic!("not an index")
        };
        let err = pick_platform(&i).unwrap_err().to_string();
        assert_eq!(
            err,
            "no linux/amd64 image in the index; it has only linux/arm64"
        );
    }
}
