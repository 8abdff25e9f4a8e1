//! Pulls from a real registry (docker-registry on 127.0.0.1) of images the
//! tests build and push with skopeo.

mod common;

use std::cell::RefCell;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use sbxrun_image::{resolve, Credentials, ErrorKind, Event, NoProgress, Progress, Secret};

/// Records blob downloads.
#[derive(Default)]
struct Recorder(RefCell<Vec<String>>);

impl Progress for Recorder {
    fn event(&self, e: &Event) {
        if let Event::BlobDone { digest } = e {
            self.0.borrow_mut().push(digest.clone());
        }
    }
}

fn base_layer() -> Layer {
    gz_layer(&[
        E::Dir("bin/"),
        E::File("bin/busybox", b"BB"),
        E::Link("bin/sh", "busybox"),
        E::Dir("etc/"),
        E::File("etc/keep", b"keep"),
        E::File("etc/gone", b"gone"),
        E::Dir("opt/"),
        E::File("opt/lower", b"lower"),
        E::Dir("opt/sub/"),
        E::File("opt/sub/deep", b"deep"),
    ])
}

#[test]
fn multi_layer_image_with_whiteout_and_opaque_dir_pulls_to_the_exact_tree() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    let top = zstd_layer(&[
        E::File("etc/.wh.gone", b""),
        E::File("opt/.wh..wh..opq", b""),
        E::File("opt/upper", b"upper"),
        E::Dir("work/"),
    ]);
    let digest = add_image(layout.path(), "v1", &[base_layer(), top], "amd64");
    reg.push(layout.path(), "v1", "test/app", None);

    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}/test/app:v1", reg.addr);
    let started = Instant::now();
    let image = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
    eprintln!(
        "pull+convert of a 2-layer image took {:?}",
        started.elapsed()
    );
    assert!(image.pulled);
    assert_eq!(image.manifest_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(image.canonical, name);
    assert_eq!(
        ext4_listing(&image.ext4),
        [
            "bin/",
            "bin/busybox = BB",
            "bin/sh -> busybox",
            "etc/",
            "etc/keep = keep",
            "opt/",
            "opt/upper = upper",
            "work/",
        ]
    );
    let config = image.config.unwrap();
    assert!(config.has_sh);
    assert_eq!(config.env, ["PATH=/usr/bin:/bin", "GREETING=hi"]);
    assert_eq!(config.working_dir.as_deref(), Some("/work"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        (config.entrypoint, config.cmd),
        (vec!["/bin/entry".to_owned()], vec!["--flag".to_owned()])
    );

    // The second resolve is served from the cache, without the registry.
    drop(reg);
    let again = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
    assert!(!again.pulled);
    assert_eq!(again.ext4, image.ext4);
    assert_tmp_empty(cache.path());
}

#[test]
fn two_images_sharing_a_base_layer_download_it_once() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    let base = base_layer();
    let base_digest = sha(&base.blob);
    add_image(
        layout.path(),
        "a",
        &[base_layer(), gz_layer(&[E::File("a", b"a")])],
        "amd64",
    );
    add_image(
        layout.path(),
        "b",
        &[base, gz_layer(&[E::File("b", b"b")])],
        "amd64",
    );
    reg.push(layout.path(), "a", "shared/a", None);
    reg.push(layout.path(), "b", "shared/b", None);
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    resolve(
        &format!("{}/shared/a:a", reg.addr),
        &options(cache.path()),
        &rec,
    )
    .unwrap();
    let b = resolve(
        &format!("{}/shared/b:b", reg.addr),
        &options(cache.path()),
        &rec,
    )
    .unwrap();
    assert!(ext4_listing(&b.ext4).contains(&"b = b".to_owned()));
    let downloads = rec.0.borrow();
    assert_eq!(
        downloads.iter().filter(|d| **d == base_digest).count(),
        1,
        "{downloads:?}"
    );
    // Two configs, two top layers, one base.
    assert_eq!(downloads.len(), 5, "{downloads:?}");
}

fn expect_error(
    name: &str,
    cache: &std::path::Path,
    opts: sbxrun_image::Options,
) -> sbxrun_image::ImageError {
    let err = resolve(name, &opts, &NoProgress).unwrap_err();
    assert_eq!(err.image, name);
    assert!(
        err.to_string().starts_with(&format!("image {name}: ")),
        "{err}"
    );
    assert_tmp_empty(cache);
    err
}

#[test]
fn corrupted_blob_in_the_registry_is_a_digest_mismatch_naming_the_layer() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    let layer = gz_layer(&[E::File("f", b"content that will be damaged")]);
    let layer_digest = sha(&layer.blob);
    add_image(layout.path(), "v1", &[layer], "amd64");
    reg.push(layout.path(), "v1", "bad/digest", None);
    let data = reg.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}/bad/digest:v1", reg.addr);
    let err = expect_error(&name, cache.path(), options(cache.path()));
    assert!(
        matches!(err.kind, ErrorKind::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer_digest), "{err}");
    assert!(!cache
        .path()
        .join("blobs/sha256")
        .join(&layer_digest[7..])
        .exists());
}

#[test]
fn truncated_and_escaping_layers_are_refused_naming_the_layer() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    let full = gzip(&tar_of(&[E::File("big", &[7u8; 100_000])]));
    let truncated = Layer {
        blob: full[..full.len() / 2].to_vec(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    let trunc_digest = sha(&truncated.blob);
    add_image(layout.path(), "trunc", &[truncated], "amd64");
    let escaping = gz_layer(&[E::File("../../escape", b"x")]);
    let esc_digest = sha(&escaping.blob);
    add_image(layout.path(), "escape", &[escaping], "amd64");
    reg.push(layout.path(), "trunc", "bad/layers", None);
    reg.push(layout.path(), "escape", "bad/layers", None);
    let cache = tempfile::tempdir().unwrap();

    let name = format!("{}/bad/layers:trunc", reg.addr);
    let err = expect_error(&name, cache.path(), options(cache.path()));
    let text = err.to_string();
    assert!(
        text.contains(&format!("layer {trunc_digest}: the layer is truncated")),
        "{text}"
    );

    let name = format!("{}/bad/layers:escape", reg.addr);
    let err = expect_error(&name, cache.path(), options(cache.path()));
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "layer {esc_digest}: entry \"../../escape\" climbs out"
        )),
        "{text}"
    );
    assert!(!cache.path().parent().unwrap().join("escape").exists());
}

#[test]
fn index_with_only_arm64_says_which_platforms_it_has() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    add_index_image(
        layout.path(),
        "multi",
        &[gz_layer(&[E::File("x", b"x")])],
        "arm64",
    );
    reg.push(layout.path(), "multi", "arm/only", None);
    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}/arm/only:multi", reg.addr);
    let err = expect_error(&name, cache.path(), options(cache.path()));
    assert_eq!(
        err.to_string(),
        format!("image {name}: no linux/amd64 image in the index; it has only linux/arm64")
    );
}

#[test]
fn basic_auth_registry_refuses_without_credentials_and_serves_with_them() {
    let reg = Registry::start(Some(&[("tester", "s3cret-pw")]));
    let layout = tempfile::tempdir().unwrap();
    add_image(
        layout.path(),
        "v1",
        &[gz_layer(&[E::File("private", b"p")])],
        "amd64",
    );
    reg.push(layout.path(), "v1", "private/app", Some("tester:s3cret-pw"));
    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}/private/app:v1", reg.addr);

    // Nothing in this machine's auth files names a registry on a random port.
    let mut opts = options(cache.path());
    let err = expect_error(&name, cache.path(), opts.clone());
    assert!(
        matches!(
            err.kind,
            ErrorKind::Unauthorized {
                had_credentials: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("401"), "{err}");

    let creds = |pw: &str| Credentials {
        username: "tester".into(),
        password: Secret::new(pw),
    };
    opts.credentials = vec![(reg.addr.clone(), creds("wrong-pw"))];
    let err = expect_error(&name, cache.path(), opts.clone());
    assert!(
        matches!(
            err.kind,
            ErrorKind::Unauthorized {
                had_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !format!("{err} {err:?}").contains("wrong-pw"),
        "a password leaked: {err:?}"
    );

    opts.credentials = vec![(reg.addr.clone(), creds("s3cret-pw"))];
    let image = resolve(&name, &opts, &NoProgress).unwrap();
    assert!(ext4_listing(&image.ext4).contains(&"private = p".to_owned()));
}

#[test]
fn registry_that_never_answers_times_out_naming_the_image() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept connections and hold them open without a word, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(16) {
            held.push(s);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let mut opts = options(cache.path());
    opts.timeout = Duration::from_secs(2);
    let name = format!("{addr}/silent/app:v1");
    let started = Instant::now();
    let err = expect_error(&name, cache.path(), opts);
    assert!(matches!(err.kind, ErrorKind::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("did not answer within 2s"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
