//! Images from local sources: an OCI layout directory, an OCI archive and
//! a `docker save` archive (made from the layout by skopeo), and the
//! reproducibility of the ext4 file.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use sbxrun_image::{resolve, ErrorKind, NoProgress, Store};

fn layout_with_image(dir: &Path) -> String {
    layout_with(dir, true)
}

/// The test image; `zstd` makes its second layer zstd (which docker archives cannot hold).
fn layout_with(dir: &Path, zstd: bool) -> String {
    let motd = [E::File("etc/motd", b"hello")];
    add_image(
        dir,
        "v1",
        &[
            gz_layer(&[
                E::Dir("usr/"),
                E::Dir("usr/bin/"),
                E::File("usr/bin/dash", b"sh!"),
                E::Link("bin", "usr/bin"),
                E::Link("usr/bin/sh", "dash"),
            ]),
            if zstd {
                zstd_layer(&motd)
            } else {
                gz_layer(&motd)
            },
        ],
        "amd64",
    )
}

const TREE: &[&str] = &[
    "bin -> usr/bin",
    "etc/",
    "etc/motd = hello",
    "usr/",
    "usr/bin/",
    "usr/bin/dash = sh!",
    "usr/bin/sh -> dash",
];

fn skopeo_copy(from: String, to: String) {
    let out = Command::new(require("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(&from)
        .arg(&to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oci_layout_resolves_and_is_cached_by_manifest_digest() {
    let layout = tempfile::tempdir().unwrap();
    let digest = layout_with_image(layout.path());
    let cache = tempfile::tempdir().unwrap();
    let name = format!("oci:{}:v1", layout.path().display());
    let image = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
    assert_eq!(image.manifest_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(ext4_listing(&image.ext4), TREE);
    assert!(image.config.as_ref().unwrap().has_sh);
    assert!(image.pulled);
    let again = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
    assert!(!again.pulled);

    // The list/remove API sees it under its name, and removes it with its blobs.
    let store = Store::open(cache.path()).unwrap();
    let listed = store.list_images();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.names, std::slice::from_ref(&name));
    assert_eq!(store.list_blobs().len(), 4, "manifest, config, two layers");
    assert_eq!(store.remove_image(&name).unwrap().len(), 1);
    assert!(store.list_images().is_empty());
    assert!(store.list_blobs().is_empty());

    let err = resolve(
        &format!("oci:{}:nope", layout.path().display()),
        &options(cache.path()),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no image tagged \"nope\" (tags: v1)"),
        "{err}"
    );
    assert_tmp_empty(cache.path());
}

#[test]
fn same_manifest_gives_the_same_ext4_bytes_in_two_caches() {
    let layout = tempfile::tempdir().unwrap();
    layout_with_image(layout.path());
    let name = format!("oci:{}:v1", layout.path().display());
    let hashes: Vec<String> = (0..2)
        .map(|_| {
            let cache = tempfile::tempdir().unwrap();
            let image = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
            // A second apart at least in the worst case: host ctimes differ.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            sha(&std::fs::read(&image.ext4).unwrap())
        })
        .collect();
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn oci_archive_and_docker_archive_resolve_to_the_same_tree() {
    let layout = tempfile::tempdir().unwrap();
    layout_with(layout.path(), false);
    let work = tempfile::tempdir().unwrap();
    let oci_archive = work.path().join("image.oci.tar");
    let docker_archive = work.path().join("image.docker.tar");
    skopeo_copy(
        format!("oci:{}:v1", layout.path().display()),
        format!("oci-archive:{}:v1", oci_archive.display()),
    );
    skopeo_copy(
        format!("oci:{}:v1", layout.path().display()),
        format!("docker-archive:{}:example/app:v1", docker_archive.display()),
    );
    let cache = tempfile::tempdir().unwrap();
    for name in [
        format!("oci-archive:{}:v1", oci_archive.display()),
        format!("oci-archive:{}", oci_archive.display()),
        format!("docker-archive:{}", docker_archive.display()),
        format!("docker-archive:{}:example/app:v1", docker_archive.display()),
    ] {
        let image = resolve(&name, &options(cache.path()), &NoProgress)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ext4_listing(&image.ext4), TREE, "{name}");
        let config = image.config.unwrap();
        assert_eq!(config.working_dir.as_deref(), Some("/work"), "{name}");
        assert_eq!(config.entrypoint, ["/bin/entry"], "{name}");
    }
    let err = resolve(
        &format!("docker-archive:{}:other:v2", docker_archive.display()),
        &options(cache.path()),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Layout { .. }), "{err:?}");
    assert!(err.to_string().contains("example/app:v1"), "{err}");
    assert_tmp_empty(cache.path());
}

#[test]
fn layout_blob_that_does_not_match_its_name_is_refused() {
    let layout = tempfile::tempdir().unwrap();
    layout_with_image(layout.path());
    // Damage the zstd layer in the layout itself.
    let layer = sha(&zstd(&tar_of(&[E::File("etc/motd", b"hello")])));
    let path = layout.path().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let name = format!("oci:{}:v1", layout.path().display());
    let err = resolve(&name, &options(cache.path()), &NoProgress).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer), "{err}");
    assert_tmp_empty(cache.path());
}

#[test]
fn ext4_file_paths_pass_through_and_other_paths_are_refused() {
    let layout = tempfile::tempdir().unwrap();
    layout_with_image(layout.path());
    let cache = tempfile::tempdir().unwrap();
    let built = resolve(
        &format!("oci:{}:v1", layout.path().display()),
        &options(cache.path()),
        &NoProgress,
    )
    .unwrap();
    let path = built.ext4.display().to_string();
    let same = resolve(&path, &options(cache.path()), &NoProgress).unwrap();
    assert_eq!(
        (same.ext4, same.manifest_digest, same.pulled),
        (built.ext4.clone(), None, false)
    );
    let err = resolve(
        &layout.path().display().to_string(),
        &options(cache.path()),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotAnImage { .. }), "{err:?}");
}
