use std::os::unix::fs::MetadataExt;

use super::*;

/// One tar entry a test layer holds.
pub(crate) enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
}

/// A tar built from `entries`, names written raw (so `../x` and `/x` pass
/// through the tar crate's own checks).
pub(crate) fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            E::Link(n, t) | E::Hard(n, t) => {
                h.set_entry_type(if matches!(e, E::Link(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                set_raw(&mut h, 157, t);
                (n, b"")
            }
            E::Fifo(n) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                (n, b"")
            }
        };
        set_raw(&mut h, 0, name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn set_raw(h: &mut tar::Header, at: usize, s: &str) {
    let bytes = h.as_mut_bytes();
    bytes[at..at + 100].fill(0);
    bytes[at..at + s.len()].copy_from_slice(s.as_bytes());
}

fn apply_all(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<TreeStats, LayerError>) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier::new(dir.path(), LayerLimits::default());
    for l in layers {
        if let Err(e) = a.apply(&l[..], "application/vnd.oci.image.layer.v1.tar") {
            return (dir, Err(e));
        }
    }
    let r = a.finish();
    (dir, r)
}

/// Every path in the tree with a type letter, sorted.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for c in fs::read_dir(root.join(&rel)).unwrap() {
            let c = c.unwrap();
            let r = rel.join(c.file_name());
            let t = c.file_type().unwrap();
            let tag = if t.is_dir() {
                stack.push(r.clone());
                "/".to_owned()
            } else if t.is_symlink() {
                format!(" -> {}", fs::read_link(c.path()).unwrap().display())
            } else {
                format!(
                    " = {}",
                    String::from_utf8_lossy(&fs::read(c.path()).unwrap())
                )
            };
            out.push(format!("{}{tag}", r.display()));
        }
    }
    out.sort();
    out
}

#[test]
fn whiteouts_remove_lower_files_and_opaque_dirs_hide_lower_content() {
    let base = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/keep", b"k"),
        E::File("etc/gone", b"g"),
        E::Dir("opt/"),
        E::File("opt/old1", b"1"),
        E::Dir("opt/sub/"),
        E::File("opt/sub/old2", b"2"),
        E::Dir("var/"),
        E::File("var/x", b"x"),
    ]);
    let top = tar_of(&[
        E::File("etc/.wh.gone", b""),
        E::File("opt/new", b"n"),
        // The opaque marker after an entry of its own layer: order must not matter.
        E::File("opt/.wh..wh..opq", b""),
        E::File("opt/sub/fresh", b"f"),
        E::File(".wh.var", b""),
        // A whiteout of something this very layer adds hides nothing.
        E::File("etc/added", b"a"),
        E::File("etc/.wh.added", b""),
    ]);
    let (dir, r) = apply_all(&[base, top]);
    r.unwrap();
    assert_eq!(
        listing(dir.path()),
        [
            "etc/",
            "etc/added = a",
            "etc/keep = k",
            "opt/",
            "opt/new = n",
            "opt/sub/",
            "opt/sub/fresh = f",
        ]
    );
}

#[test]
fn unsafe_entries_are_refused_with_the_entry_named() {
    for (entries, needle) in [
        (
            vec![E::File("../evil", b"x")],
            "\"../evil\" climbs out of the tree",
        ),
        (vec![E::File("a/../../evil", b"x")], "climbs out"),
        (
            vec![E::File("/etc/passwd", b"x")],
            "\"/etc/passwd\" has an absolute path",
        ),
        (vec![E::Hard("h", "../../etc/shadow")], "climbs out"),
        (
            vec![E::Hard("h", "missing")],
            "hard link \"h\" points to \"missing\"",
        ),
        (
            vec![E::File("f", b"x"), E::File("f/g", b"y")],
            "a parent is not a directory",
        ),
    ] {
        let (_dir, r) = apply_all(&[tar_of(&entries)]);
        let err = r.unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn writes_through_symlinks_stay_inside_the_tree() {
    let outside = tempfile::tempdir().unwrap();
    let escape = outside.path().to_str().unwrap().to_owned();
    let layers = [
        tar_of(&[E::Link("abs", &escape), E::Link("rel", "../../../..")]),
        tar_of(&[E::File("abs/planted", b"1"), E::File("rel/planted2", b"2")]),
    ];
    let (dir, r) = apply_all(&layers);
    r.unwrap();
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote outside the tree"
    );
    // The absolute target is taken inside the root, as the guest will see it;
    // `..` stops at the root.
    assert_eq!(
        fs::read(dir.path().join(&escape[1..]).join("planted")).unwrap(),
        b"1"
    );
    assert_eq!(fs::read(dir.path().join("planted2")).unwrap(), b"2");
}

#[test]
fn links_devices_and_times_are_kept_or_skipped() {
    let layer = tar_of(&[
        E::Dir("usr/bin/"),
        E::File("usr/bin/dash", b"#!"),
        E::Link("bin", "usr/bin"),
        E::Link("usr/bin/sh", "/usr/bin/dash"),
        E::Hard("usr/bin/dash2", "usr/bin/dash"),
        E::Fifo("pipe"),
    ]);
    let (dir, r) = apply_all(&[layer]);
    let stats = r.unwrap();
    assert_eq!(stats.skipped_special, 1);
    assert!(stats.has_sh);
    let a = fs::metadata(dir.path().join("usr/bin/dash")).unwrap();
    let b = fs::metadata(dir.path().join("usr/bin/dash2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.mtime(), 1_600_000_000);
    assert_eq!(
        fs::symlink_metadata(dir.path().join("bin"))
            .unwrap()
            .mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::metadata(dir.path().join("usr")).unwrap().mtime(),
        0,
        "implicit dirs get time 0"
    );
    assert_eq!(
        fs::metadata(dir.path().join("usr/bin")).unwrap().mtime(),
        1_600_000_000
    );
    assert!(!dir.path().join("pipe").exists());
}

#[test]
fn no_sh_is_reported() {
    let (_dir, r) = apply_all(&[tar_of(&[
        E::File("bin/busybox", b"x"),
        E::Link("bin/sh", "/nowhere"),
    ])]);
    assert!(!r.unwrap().has_sh);
}

#[test]
fn compressed_layers_are_detected_and_truncation_is_reported() {
    use std::io::Write as _;
    let tar = tar_of(&[E::File("hello", b"world")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    for (blob, media) in [
        (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        // Mislabelled: the magic decides.
        (&gz, "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applier::new(dir.path(), LayerLimits::default());
        a.apply(&blob[..], media).unwrap();
        assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"world");
    }
    for blob in [&gz[..gz.len() - 12], &zst[..zst.len() / 2], &tar[..700]] {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applier::new(dir.path(), LayerLimits::default());
        let err = a.apply(blob, "").unwrap_err();
        assert!(matches!(err, LayerError::Truncated(_)), "{err:?}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn size_and_entry_caps_hold_across_layers() {
    let layer = tar_of(&[E::File("a", &[0u8; 3000]), E::File("b", &[0u8; 3000])]);
    let dir = tempfile::tempdir().unwrap();
    let limits = LayerLimits {
        max_bytes: 5000,
        max_entries: 100,
    };
    let err = Applier::new(dir.path(), limits)
        .apply(&layer[..], "")
        .unwrap_err();
    assert!(matches!(err, LayerError::TooLarge { .. }), "{err:?}");
    let limits = LayerLimits {
        max_bytes: 1 << 20,
        max_entries: 1,
    };
    let err = Applier::new(dir.path(), limits)
        .apply(&layer[..], "")
        .unwrap_err();
    assert!(matches!(err, LayerError::TooManyEntries { .. }), "{err:?}");
}
