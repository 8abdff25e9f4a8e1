//! From a parsed source to a cached ext4 file: get the blobs into the store
//! (pull or import), then build the image from the store once per manifest
//! digest.

use std::fs::File;
use std::io::{self, BufReader, Read};

use sha2::{Digest, Sha256};

use crate::config::ImageConfig;
use crate::error::{ErrorKind, KindResult};
use crate::layers::Applier;
use crate::manifest::{self, Document, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::progress::{Event, Progress};
use crate::pull::{self, PullSettings};
use crate::reference::ImageSource;
use crate::store::{digest_hex, CachedImage, ImageRecord, Store};
use crate::{auth, ext4, Options, PullPolicy, ResolvedImage};

pub(crate) fn resolve_source(
    written: &str,
    source: &ImageSource,
    options: &Options,
    progress: &dyn Progress,
) -> KindResult<ResolvedImage> {
    let store = Store::open(&options.cache_dir)?;
    // One resolve at a time changes the cache, so eviction never removes
    // what another process is building.
    let _lock = store.lock()?;
    let canonical = source.canonical();
    let mut pulled = false;
    let digest = match source {
        ImageSource::Registry(r) => {
            let known = match (&r.digest, options.pull) {
                (Some(d), _) => store.get_image(d).map(|_| d.clone()),
                (None, PullPolicy::Always) => None,
                (None, _) => store
                    .get_ref(&canonical)
                    .filter(|d| store.get_image(d).is_some()),
            };
            match known {
                Some(d) => d,
                None if options.pull == PullPolicy::Never => {
                    return Err(ErrorKind::NotFound {
                        registry: r.registry.clone(),
                        detail: format!("{canonical} is not in the cache and pulling is off"),
                    })
                }
                None => {
                    let settings = PullSettings {
                        timeout: options.timeout,
                        concurrency: options.concurrency,
                        retries: options.retries,
                        plain_http: pull::allows_plain_http(
                            &r.registry,
                            &options.insecure_registries,
                        ),
                        credentials: auth::lookup(&r.registry, &options.credentials),
                    };
                    let p = pull::pull(&store, r, &settings, progress)?;
                    pulled = p.downloaded > 0;
                    p.manifest_digest
                }
            }
        }
        ImageSource::OciLayout { path, tag } => {
            crate::layout::import_layout(&store, path, tag.as_deref())?
        }
        ImageSource::OciArchive { path, tag } => {
            crate::layout::import_oci_archive(&store, path, tag.as_deref())?
        }
        ImageSource::DockerArchive { path, reference } => {
            crate::layout::import_docker_archive(&store, path, reference.as_ref())?
        }
        ImageSource::Path(_) => unreachable!("paths are resolved by the caller"),
    };
    store.set_ref(&canonical, &digest)?;
    let image = match store.touch_image(&digest, &canonical)? {
        Some(image) => {
            progress.event(&Event::Cached {
                digest: digest.clone(),
            });
            image
        }
        None => {
            pulled = true;
            build(&store, &digest, &canonical, options, progress)?
        }
    };
    if let Some(max) = options.max_cache_bytes {
        store.evict(max, Some(&digest))?;
    }
    Ok(ResolvedImage {
        reference: written.to_owned(),
        canonical,
        manifest_digest: Some(digest),
        ext4: image.ext4,
        config: Some(image.record.config),
        pulled,
    })
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Builds the image of manifest `digest` from blobs in the store.
fn build(
    store: &Store,
    digest: &str,
    name: &str,
    options: &Options,
    progress: &dyn Progress,
) -> KindResult<CachedImage> {
    let bytes = store.read_blob(digest, MAX_MANIFEST_BYTES)?;
    let Document::Manifest(m) = manifest::parse(&bytes, digest)? else {
        return Err(ErrorKind::MediaType {
            what: "manifest",
            media_type: "an index where an image manifest was expected".to_owned(),
        });
    };
    let (config_ref, layers) = manifest::blobs(&m, digest)?;
    let config_bytes = store.read_blob(&config_ref.digest, MAX_CONFIG_BYTES)?;
    let mut config = ImageConfig::from_json(&config_bytes, &config_ref.digest)?;
    if config.platform != "linux/amd64" {
        return Err(ErrorKind::NoPlatform {
            available: vec![config.platform.clone()],
        });
    }
    let tree = store.temp_dir("tree")?;
    let mut applier = Applier::new(&tree.path, options.limits);
    for (index, layer) in layers.iter().enumerate() {
        progress.event(&Event::Applying {
            digest: layer.digest.clone(),
            index,
            of: layers.len(),
        });
        let path = store.blob_path(&layer.digest)?;
        let file = File::open(&path).map_err(|e| ErrorKind::cache("open", &path, e))?;
        let mut reader = Hashing {
            inner: BufReader::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        };
        let applied = applier.apply(&mut reader, &layer.media_type);
        // The digest is checked even when applying failed: a corrupt blob
        // is the better explanation of a broken tar.
        io::copy(&mut reader, &mut io::sink()).map_err(|e| ErrorKind::cache("read", &path, e))?;
        let actual = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
        if actual != layer.digest {
            let _ = std::fs::remove_file(&path);
            return Err(ErrorKind::DigestMismatch {
                what: "layer",
                expected: layer.digest.clone(),
                actual,
            });
        }
        applied.map_err(|source| ErrorKind::Layer {
            digest: layer.digest.clone(),
            source,
        })?;
    }
    let stats = applier.finish().map_err(|source| ErrorKind::Layer {
        digest: layers.last().map_or_else(String::new, |l| l.digest.clone()),
        source,
    })?;
    config.has_sh = stats.has_sh;
    config.user_ids = config.user.as_deref().and_then(|spec| {
        crate::config::resolve_user(
            spec,
            &etc_file(&tree.path, "passwd"),
            &etc_file(&tree.path, "group"),
        )
    });
    progress.event(&Event::BuildingExt4);
    let out = store.temp_file("ext4")?;
    let hex = digest_hex(digest).unwrap_or_default();
    ext4::build(&tree.path, &out.path, hex)?;
    drop(tree);
    let dir = store.image_dir(digest)?;
    out.persist(&dir.join("rootfs.ext4"))?;
    let mut blobs = vec![digest.to_owned(), config_ref.digest.clone()];
    blobs.extend(layers.iter().map(|l| l.digest.clone()));
    let record = ImageRecord {
        manifest_digest: digest.to_owned(),
        names: vec![name.to_owned()],
        config,
        blobs,
        last_used: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    store.put_image_record(&record)?;
    store.get_image(digest).ok_or_else(|| {
        ErrorKind::cache("read back", dir, io::Error::other("image record vanished"))
    })
}

/// `etc/NAME` of the unpacked tree, empty when it is missing or when it or
/// `etc` is a symlink: a layer controls both, and reading through a link
/// could read the host's file instead of the image's.
fn etc_file(root: &std::path::Path, name: &str) -> String {
    let etc = root.join("etc");
    let file = etc.join(name);
    let plain = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink())
    };
    if !plain(&etc) || !plain(&file) {
        return String::new();
    }
    // /etc/passwd of a sane image is a few KiB; cap what a hostile one costs.
    std::fs::File::open(&file)
        .and_then(|f| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 20), &mut text)?;
            Ok(text)
        })
        .unwrap_or_default()
}
