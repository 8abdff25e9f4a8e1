use super::*;

fn record(digest: &str, blobs: &[&str], last_used: u64) -> ImageRecord {
    ImageRecord {
        manifest_digest: digest.to_owned(),
        names: vec![format!("name-{}", &digest[7..12])],
        config: ImageConfig::default(),
        blobs: blobs.iter().map(|b| (*b).to_owned()).collect(),
        last_used,
    }
}

fn add_image(store: &Store, digest: &str, blobs: &[&str], last_used: u64, size: usize) {
    let dir = store.image_dir(digest).unwrap();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("rootfs.ext4"), vec![1u8; size]).unwrap();
    store
        .put_image_record(&record(digest, blobs, last_used))
        .unwrap();
}

#[test]
fn blobs_are_content_addressed_and_verified_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = store.put_blob(b"hello").unwrap();
    assert_eq!(d, sha256_digest(b"hello"));
    assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
    // A blob that rotted on disk is refused and removed.
    fs::write(store.blob_path(&d).unwrap(), b"hellO").unwrap();
    let err = store.read_blob(&d, 100).unwrap_err();
    assert!(matches!(err, ErrorKind::DigestMismatch { .. }), "{err:?}");
    assert!(!store.has_blob(&d));
    // An import that does not match its expected digest leaves nothing.
    let err = store.import(&b"other"[..], Some(&d), 100).unwrap_err();
    assert!(matches!(err, ErrorKind::DigestMismatch { .. }), "{err:?}");
    assert!(!store.has_blob(&d));
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert!(store.blob_path("sha256:../../x").is_err());
}

#[test]
fn refs_and_records_round_trip_and_remove_drops_unneeded_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let shared = store.put_blob(b"base").unwrap();
    let own = store.put_blob(b"top").unwrap();
    let m1 = store.put_blob(b"m1").unwrap();
    let m2 = store.put_blob(b"m2").unwrap();
    add_image(&store, &m1, &[&m1, &shared, &own], 10, 100);
    add_image(&store, &m2, &[&m2, &shared], 20, 100);
    store.set_ref("docker.io/library/a:1", &m1).unwrap();
    assert_eq!(
        store.get_ref("docker.io/library/a:1").as_deref(),
        Some(m1.as_str())
    );
    assert_eq!(store.list_images().len(), 2);
    assert_eq!(
        store.list_images()[0].record.manifest_digest,
        m2,
        "most recent first"
    );
    let removed = store.remove_image(&m1).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(!store.has_blob(&own));
    assert!(store.has_blob(&shared), "still needed by the other image");
    assert_eq!(store.get_ref("docker.io/library/a:1"), None);
}

#[test]
fn eviction_drops_least_recently_used_first_and_keeps_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m: Vec<String> = (0..3)
        .map(|i| store.put_blob(format!("m{i}").as_bytes()).unwrap())
        .collect();
    for (i, d) in m.iter().enumerate() {
        add_image(&store, d, &[d], 100 - i as u64 * 10, 1 << 20);
    }
    // m[2] is the oldest but is the one in use: m[1] goes instead.
    let evicted = store.evict(2 * (1 << 20) + 4096 * 8, Some(&m[2])).unwrap();
    assert_eq!(
        evicted
            .iter()
            .map(|r| &r.manifest_digest)
            .collect::<Vec<_>>(),
        [&m[1]]
    );
    let left: Vec<String> = store
        .list_images()
        .into_iter()
        .map(|i| i.record.manifest_digest)
        .collect();
    assert_eq!(left, [m[0].clone(), m[2].clone()]);
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mine = store.temp_file("x").unwrap();
    // pid_max is at most 2^22; this one cannot be running.
    fs::write(store.tmp_dir().join("99999999.0.0.blob"), b"junk").unwrap();
    Store::open(dir.path()).unwrap();
    let names: Vec<_> = fs::read_dir(store.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, std::slice::from_ref(&mine.path));
    drop(mine);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}
