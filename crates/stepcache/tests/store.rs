//! The local store against real files: round trips, sharing, damage,
//! eviction and two writers at once.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sbxrun_stepcache::{
    capture_tree, restore_tree, Entry, LocalStore, Store, StoreError, Tree, TreeEntry, ENTRY_FORMAT,
};

fn sample_outputs(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("report.txt"), b"lines: 3\n").unwrap();
    fs::write(dir.join("same.txt"), b"lines: 3\n").unwrap();
    symlink("bin/tool", dir.join("tool")).unwrap();
}

/// Everything about a tree a consumer could see: names, kinds, modes,
/// contents and link targets.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o777;
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/ {mode:o}"));
                stack.push(p);
            } else {
                out.push(format!("{rel} {mode:o} {:?}", fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn entry(key: &str, outputs: Tree) -> Entry {
    Entry {
        format: ENTRY_FORMAT,
        key: key.to_owned(),
        parts: BTreeMap::new(),
        created_unix_ms: 0,
        outputs,
        log: None,
        record: serde_json::json!({"verdict": "passed"}),
    }
}

fn key(n: u8) -> String {
    format!("{:064x}", n)
}

#[test]
fn outputs_round_trip_byte_exact_and_identical_files_share_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("steps")).unwrap();
    let src = dir.path().join("src");
    sample_outputs(&src);
    let tree = capture_tree(&store, &src).unwrap();
    store.put(&entry(&key(1), tree)).unwrap();

    let got = store.get(&key(1)).unwrap().expect("stored entry");
    let dest = dir.path().join("dest");
    restore_tree(&store, &got.outputs, &dest).unwrap();
    assert_eq!(describe(&src), describe(&dest));
    // report.txt and same.txt hold the same bytes: one blob.
    assert_eq!(store.usage().blobs, 2);
    assert_eq!(store.usage().entries, 1);
}

#[test]
fn a_damaged_blob_is_a_corruption_error_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let steps = dir.path().join("steps");
    let store = LocalStore::open(&steps).unwrap();
    let src = dir.path().join("src");
    sample_outputs(&src);
    let tree = capture_tree(&store, &src).unwrap();
    let blob = tree.blobs().next().unwrap().clone();
    let path = steps
        .join("blobs")
        .join(&blob.sha256[..2])
        .join(&blob.sha256);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, bytes).unwrap();

    let dest = dir.path().join("dest");
    let err = restore_tree(&store, &tree, &dest).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(!path.exists(), "the damaged blob is dropped");
}

#[test]
fn a_damaged_entry_is_a_corruption_error_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let steps = dir.path().join("steps");
    let store = LocalStore::open(&steps).unwrap();
    let path = steps.join("entries").join(format!("{}.json", key(7)));
    fs::write(&path, b"{\"format\": 1, \"key\"").unwrap();
    let err = store.get(&key(7)).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!path.exists());
    assert!(store.get(&key(7)).unwrap().is_none());
}

#[test]
fn an_entry_naming_paths_outside_its_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("steps")).unwrap();
    for bad in [
        TreeEntry::Dir {
            path: "../escape".into(),
            mode: 0o755,
        },
        TreeEntry::Symlink {
            path: "l".into(),
            target: "/etc".into(),
        },
    ] {
        let tree = Tree { entries: vec![bad] };
        let err = restore_tree(&store, &tree, &dir.path().join("dest")).unwrap_err();
        assert!(matches!(err, StoreError::UnsafePath(_)), "{err}");
    }
    assert!(!dir.path().join("escape").exists());
    // A file written through a link the tree made.
    let tree = Tree {
        entries: vec![
            TreeEntry::Symlink {
                path: "d".into(),
                target: ".".into(),
            },
            TreeEntry::Dir {
                path: "d/x".into(),
                mode: 0o755,
            },
        ],
    };
    let err = restore_tree(&store, &tree, &dir.path().join("dest2")).unwrap_err();
    assert!(matches!(err, StoreError::UnsafePath(_)), "{err}");
}

#[test]
fn eviction_drops_least_recently_used_entries_and_their_unshared_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("steps")).unwrap();
    for n in 1..=3u8 {
        let src = dir.path().join(format!("src{n}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("big"), vec![n; 100_000]).unwrap();
        let tree = capture_tree(&store, &src).unwrap();
        store.put(&entry(&key(n), tree)).unwrap();
        // Distinct last-use times, oldest first.
        let f = fs::File::options()
            .write(true)
            .open(
                dir.path()
                    .join("steps/entries")
                    .join(format!("{}.json", key(n))),
            )
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(100 - u64::from(n)))
            .unwrap();
    }
    // Entry 1 is used again: now the most recent.
    assert!(store.get(&key(1)).unwrap().is_some());
    let before = store.usage();
    assert_eq!((before.entries, before.blobs), (3, 3));
    let evicted = store.evict(250_000, true).unwrap();
    assert_eq!(evicted.entries, 1);
    assert_eq!(evicted.blobs, 1);
    assert!(
        store.get(&key(2)).unwrap().is_none(),
        "least recently used goes"
    );
    assert!(store.get(&key(1)).unwrap().is_some());
    assert!(store.get(&key(3)).unwrap().is_some());
    assert!(store.usage().bytes <= 250_000);
    store.clear().unwrap();
    assert_eq!(store.usage(), Default::default());
}

#[test]
fn two_writers_of_one_key_leave_one_whole_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("steps");
    let src = dir.path().join("src");
    sample_outputs(&src);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (root, src) = (root.clone(), src.clone());
            std::thread::spawn(move || {
                let store = LocalStore::open(&root).unwrap();
                for _ in 0..20 {
                    let tree = capture_tree(&store, &src).unwrap();
                    store.put(&entry(&key(9), tree)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = LocalStore::open(&root).unwrap();
    let usage = store.usage();
    assert_eq!((usage.entries, usage.blobs), (1, 2));
    let got = store.get(&key(9)).unwrap().unwrap();
    let dest = dir.path().join("dest");
    restore_tree(&store, &got.outputs, &dest).unwrap();
    assert_eq!(describe(&src), describe(&dest));
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_claimed_key_makes_the_next_claimant_wait_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(&dir.path().join("steps")).unwrap());
    let first = store
        .claim(&key(3), Duration::from_millis(5), &|| false)
        .unwrap()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let s = store.clone();
    let waiter = std::thread::spawn(move || {
        let lock = s
            .claim(&key(3), Duration::from_millis(5), &|| false)
            .unwrap();
        tx.send(()).unwrap();
        lock.is_some()
    });
    // Still waiting while the first claim is held.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    drop(first);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("claimed after release");
    assert!(waiter.join().unwrap());
    // A cancelled wait gives up.
    let _held = store
        .claim(&key(4), Duration::from_millis(5), &|| false)
        .unwrap();
    let s = store.clone();
    let gave_up = std::thread::spawn(move || {
        s.claim(&key(4), Duration::from_millis(5), &|| true)
            .unwrap()
    })
    .join()
    .unwrap();
    assert!(gave_up.is_none());
}

#[test]
fn secret_digests_are_salted_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalStore::open(&dir.path().join("a")).unwrap();
    let b = LocalStore::open(&dir.path().join("b")).unwrap();
    assert_eq!(a.secret_digest(b"hunter2"), a.secret_digest(b"hunter2"));
    assert_ne!(a.secret_digest(b"hunter2"), b.secret_digest(b"hunter2"));
    assert_ne!(
        a.secret_digest(b"hunter2"),
        sbxrun_stepcache::sha256_hex(b"hunter2")
    );
    // Reopening keeps the salt.
    let a2 = LocalStore::open(&dir.path().join("a")).unwrap();
    assert_eq!(a.secret_digest(b"x"), a2.secret_digest(b"x"));
}
