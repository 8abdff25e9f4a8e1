//! Pulling from a registry over the OCI distribution API with oci-client.
//!
//! oci-client is async; the rest of sbxrun is not. So tokio lives only
//! here: [`pull`] is a plain blocking function that builds a private
//! current-thread runtime, runs the pull on it and drops it. Concurrent
//! layer downloads are futures on that one thread (the work is waiting on
//! sockets; hashing and writing a chunk is quick), so no task needs to be
//! `Send` and the caller's progress callback is called from its own thread.
//!
//! Every blob goes to a temporary file in the store, is hashed as it
//! arrives and renamed into `blobs/` only when its digest matches. A
//! connection that drops mid-blob is resumed with a `Range` request from
//! the bytes already written, a few times; a failure removes the partial
//! file. Every request and every chunk has a deadline, so a registry that
//! accepts the connection and then says nothing gives a timeout error.

use std::io::Write;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::error::{ErrorKind, KindResult};
use crate::manifest::{self, BlobRef, Document, ACCEPTED, MAX_MANIFEST_BYTES};
use crate::progress::{Event, Progress};
use crate::reference::RegistryRef;
use crate::store::{sha256_digest, Store};

/// How to talk to a registry.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Deadline for each request and for each chunk of a download.
    pub timeout: Duration,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// Extra attempts for a blob whose connection drops.
    pub retries: u32,
    /// Whether to use plain HTTP (only for loopback or listed registries).
    pub plain_http: bool,
    /// Credentials for this registry, if any were found.
    pub credentials: Option<Credentials>,
}

/// What a pull produced.
#[derive(Debug)]
pub struct Pulled {
    /// `sha256:<hex>` of the linux/amd64 image manifest.
    pub manifest_digest: String,
    /// Bytes downloaded (manifests, config, layers).
    pub downloaded: u64,
}

/// Whether plain HTTP may be used for `registry`: loopback hosts always,
/// others only when listed.
pub fn allows_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || insecure.iter().any(|i| i == registry || i == host)
}

struct Ctx<'a> {
    client: Client,
    auth: RegistryAuth,
    registry: &'a str,
    repository: &'a str,
    settings: &'a PullSettings,
    store: &'a Store,
    progress: &'a dyn Progress,
}

/// Pulls `r` into `store`, returning the manifest digest once the
/// manifest, config and every layer are in the store and verified.
pub fn pull(
    store: &Store,
    r: &RegistryRef,
    settings: &PullSettings,
    progress: &dyn Progress,
) -> KindResult<Pulled> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ErrorKind::Registry {
            registry: r.registry.clone(),
            what: "starting the network runtime".to_owned(),
            detail: e.to_string(),
        })?;
    let config = ClientConfig {
        protocol: if settings.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        read_timeout: Some(settings.timeout),
        connect_timeout: Some(settings.timeout),
        // Indexes are resolved here, so the error can say which platforms exist.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    let auth = match &settings.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.expose().to_owned()),
        None => RegistryAuth::Anonymous,
    };
    let ctx = Ctx {
        client: Client::new(config),
        auth,
        registry: &r.registry,
        repository: &r.repository,
        settings,
        store,
        progress,
    };
    runtime.block_on(ctx.run(r))
}

impl Ctx<'_> {
    fn reference(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.to_owned(),
            self.repository.to_owned(),
            digest.to_owned(),
        )
    }

    async fn run(&self, r: &RegistryRef) -> KindResult<Pulled> {
        let first = match (&r.digest, &r.tag) {
            (Some(d), _) => self.reference(d),
            (None, tag) => Reference::with_tag(
                self.registry.to_owned(),
                self.repository.to_owned(),
                tag.clone()
                    .unwrap_or_else(|| crate::reference::DEFAULT_TAG.to_owned()),
            ),
        };
        let mut downloaded = 0u64;
        let (bytes, digest) = self.manifest(&first, r.digest.as_deref()).await?;
        downloaded += bytes.len() as u64;
        let (bytes, digest) = match manifest::parse(&bytes, &digest)? {
            Document::Index(index) => {
                self.store.put_blob(&bytes)?;
                let chosen = manifest::pick_platform(&index)?;
                let (b, d) = self
                    .manifest(&self.reference(&chosen.digest), Some(&chosen.digest))
                    .await?;
                downloaded += b.len() as u64;
                (b, d)
            }
            Document::Manifest(_) => (bytes, digest),
        };
        let Document::Manifest(m) = manifest::parse(&bytes, &digest)? else {
            return Err(ErrorKind::MediaType {
                what: "manifest",
                media_type: "an index inside an index".to_owned(),
            });
        };
        let (config, layers) = manifest::blobs(&m, &digest)?;
        let mut wanted: Vec<BlobRef> = Vec::new();
        for b in std::iter::once(config).chain(layers.iter().cloned()) {
            if !self.store.has_blob(&b.digest) && !wanted.iter().any(|w| w.digest == b.digest) {
                wanted.push(b);
            }
        }
        self.progress.event(&Event::Manifest {
            digest: digest.clone(),
            layers: layers.len(),
            missing_bytes: wanted.iter().map(|b| b.size).sum(),
        });
        let results: Vec<KindResult<u64>> = stream::iter(wanted.iter().map(|b| self.blob(b)))
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            downloaded += r?;
        }
        // The manifest goes in last: its presence says the pull completed.
        self.store.put_blob(&bytes)?;
        Ok(Pulled {
            manifest_digest: digest,
            downloaded,
        })
    }

    /// Fetches a manifest or index and checks it against `expected`.
    async fn manifest(
        &self,
        reference: &Reference,
        expected: Option<&str>,
    ) -> KindResult<(Vec<u8>, String)> {
        let what = format!("fetching the manifest of {}", reference.whole());
        let fut = self
            .client
            .pull_manifest_raw(reference, &self.auth, ACCEPTED);
        let (bytes, _) = self.deadline(&what, fut).await?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ErrorKind::Malformed {
                what: "manifest",
                digest: reference.whole(),
                detail: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let actual = sha256_digest(&bytes);
        if let Some(expected) = expected {
            if actual != expected {
                return Err(ErrorKind::DigestMismatch {
                    what: "manifest",
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        Ok((bytes.to_vec(), actual))
    }

    async fn deadline<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, OciDistributionError>>,
    ) -> KindResult<T> {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(what, e)),
            Err(_) => Err(self.timeout(what)),
        }
    }

    fn timeout(&self, what: &str) -> ErrorKind {
        ErrorKind::Timeout {
            registry: self.registry.to_owned(),
            what: what.to_owned(),
            after: self.settings.timeout,
        }
    }

    fn map_err(&self, what: &str, e: OciDistributionError) -> ErrorKind {
        let unauthorized = || ErrorKind::Unauthorized {
            registry: self.registry.to_owned(),
            had_credentials: self.settings.credentials.is_some(),
        };
        let not_found = |detail: String| ErrorKind::NotFound {
            registry: self.registry.to_owned(),
            detail,
        };
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
            OciDistributionError::ServerError { code: 401, .. } => unauthorized(),
            OciDistributionError::ServerError { code: 404, url, .. } => not_found(url),
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized()
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(format!("{url} ({envelope})"))
                } else {
                    self.other(what, format!("{url}: {envelope}"))
                }
            }
            OciDistributionError::RequestError(r) if r.is_timeout() => self.timeout(what),
            // reqwest's message chain says more than its top line.
            OciDistributionError::RequestError(r) => self.other(what, chain(&r)),
            other => self.other(what, other.to_string()),
        }
    }

    fn other(&self, what: &str, detail: String) -> ErrorKind {
        ErrorKind::Registry {
            registry: self.registry.to_owned(),
            what: what.to_owned(),
            detail,
        }
    }

    /// Downloads one blob into the store; returns the bytes fetched.
    async fn blob(&self, b: &BlobRef) -> KindResult<u64> {
        let what = format!("downloading blob {}", b.digest);
        let desc = OciDescriptor {
            digest: b.digest.clone(),
            size: i64::try_from(b.size).unwrap_or(i64::MAX),
            media_type: b.media_type.clone(),
            ..OciDescriptor::default()
        };
        let reference = self.reference(&b.digest);
        let mut tmp = self.store.temp_file("blob")?;
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut fetched = 0u64;
        let mut attempt = 0;
        loop {
            self.progress.event(&Event::BlobStart {
                digest: b.digest.clone(),
                size: b.size,
                resumed_at: have,
            });
            let outcome = self
                .fetch_into(
                    &reference,
                    &desc,
                    b,
                    &what,
                    &mut tmp,
                    &mut hasher,
                    &mut have,
                    &mut fetched,
                )
                .await;
            match outcome {
                Ok(()) => break,
                // A dropped connection or a stalled read: resume where we are.
                Err(ErrorKind::Timeout { .. } | ErrorKind::Registry { .. })
                    if attempt < self.settings.retries =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != b.digest || have != b.size {
            return Err(ErrorKind::DigestMismatch {
                what: "blob",
                expected: b.digest.clone(),
                actual,
            });
        }
        tmp.persist(&self.store.blob_path(&b.digest)?)?;
        self.progress.event(&Event::BlobDone {
            digest: b.digest.clone(),
        });
        Ok(fetched)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the state of one resumable download, kept by the caller across attempts"
    )]
    async fn fetch_into(
        &self,
        reference: &Reference,
        desc: &OciDescriptor,
        b: &BlobRef,
        what: &str,
        tmp: &mut crate::store::TempFile,
        hasher: &mut Sha256,
        have: &mut u64,
        fetched: &mut u64,
    ) -> KindResult<()> {
        let fut = self
            .client
            .pull_blob_stream_partial(reference, desc, *have, None);
        let response = self.deadline(what, fut).await?;
        let mut body = match response {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                // The registry ignored the range: start over.
                if *have > 0 {
                    tmp.file
                        .set_len(0)
                        .and_then(|()| std::io::Seek::rewind(&mut tmp.file))
                        .map_err(|e| ErrorKind::cache("truncate", &tmp.path, e))?;
                    *hasher = Sha256::new();
                    *have = 0;
                }
                s
            }
        };
        loop {
            let next = match tokio::time::timeout(self.settings.timeout, body.next()).await {
                Ok(n) => n,
                Err(_) => return Err(self.timeout(what)),
            };
            let Some(chunk) = next else {
                return Ok(());
            };
            let chunk = match chunk {
                Ok(c) => c,
                // oci-client's own check of a full response failed: ours,
                // made over the same bytes, says it with both digests.
                Err(_) if *have == b.size => return Ok(()),
                Err(e) => return Err(self.other(what, e.to_string())),
            };
            *have += chunk.len() as u64;
            *fetched += chunk.len() as u64;
            if *have > b.size {
                return Err(ErrorKind::DigestMismatch {
                    what: "blob",
                    expected: b.digest.clone(),
                    actual: format!("more than the {} bytes its descriptor says", b.size),
                });
            }
            hasher.update(&chunk);
            tmp.file
                .write_all(&chunk)
                .map_err(|e| ErrorKind::cache("write", &tmp.path, e))?;
            self.progress.event(&Event::BlobBytes {
                digest: b.digest.clone(),
                done: *have,
                size: b.size,
            });
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_listed_registries() {
        assert!(allows_plain_http("localhost:5000", &[]));
        assert!(allows_plain_http("127.0.0.1:5000", &[]));
        assert!(allows_plain_http("127.1.2.3", &[]));
        assert!(!allows_plain_http("docker.io", &[]));
        assert!(!allows_plain_http("10.0.0.1:5000", &[]));
        assert!(allows_plain_http(
            "reg.lan:5000",
            &["reg.lan:5000".to_owned()]
        ));
        assert!(allows_plain_http("reg.lan:5000", &["reg.lan".to_owned()]));
    }
}
