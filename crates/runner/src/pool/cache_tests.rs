//! The cache inventory and cleanup against hand-made cache directories:
//! real-looking snapshots, stale and damaged ones, builds in progress and
//! odd entries a user or a crash may leave behind.

use super::*;
use crate::pool::snapshot::SnapshotMeta;
use sbxrun_proto::snapshot_file::FORMAT_MINOR;
use std::os::unix::fs::FileExt;

const MIB: u32 = 4;

/// Writes a snapshot the runner would accept: meta.json, a valid state file
/// and a sparse memory file with a little data in it.
fn fake_snapshot(cache: &Path, key: &str, format: &str) -> PathBuf {
    // Booted from a file that exists, or the snapshot would be orphaned.
    let booted = cache.join("kernel/vmlinux");
    fs::create_dir_all(booted.parent().unwrap()).unwrap();
    fs::write(&booted, b"kernel").unwrap();
    let dir = snapshots_dir(cache).join(key);
    fs::create_dir_all(&dir).unwrap();
    let state = sbxrun_proto::snapshot_file::encode(&serde_json::json!({"vcpus": []})).unwrap();
    fs::write(dir.join("state"), state).unwrap();
    let memory = dir.join("memory");
    let f = fs::File::create(&memory).unwrap();
    f.set_len(u64::from(MIB) << 20).unwrap();
    f.write_all_at(&[0x5a; 8192], 1 << 20).unwrap();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fs::read(&memory).unwrap());
    let meta = SnapshotMeta {
        key: key.into(),
        format: format.into(),
        memory_mib: MIB,
        vcpus: 2,
        kernel: booted.clone(),
        initramfs: booted.clone(),
        image: booted,
        memory_crc32: crc.finalize(),
        memory_bytes_written: 8192,
        boot_ms: 900,
        snapshot_ms: 100,
        created_unix: 1_700_000_000,
    };
    fs::write(
        dir.join("meta.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    dir
}

fn current_format() -> String {
    format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")
}

/// A pid no process can have: above the kernel's pid_max ceiling (2^22).
const DEAD_PID: u32 = 4_000_000_000;

fn state_of<'a>(inv: &'a Inventory, name: &str) -> &'a SnapshotState {
    &inv.snapshots
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} not listed: {inv:#?}"))
        .state
}

#[test]
fn scan_of_a_missing_cache_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let inv = scan(&dir.path().join("nope")).unwrap();
    assert!(inv.snapshots.is_empty() && inv.assets.is_empty() && inv.scratch.is_empty());
}

#[test]
fn a_good_snapshot_is_usable_with_its_meta_fields() {
    let dir = tempfile::tempdir().unwrap();
    fake_snapshot(dir.path(), "aaaa1111bbbb2222", &current_format());
    let inv = scan(dir.path()).unwrap();
    let s = &inv.snapshots[0];
    assert_eq!(s.state, SnapshotState::Usable);
    assert_eq!(s.memory_mib, Some(u64::from(MIB)));
    assert_eq!(s.vcpus, Some(2));
    assert_eq!(s.created_unix, Some(1_700_000_000));
    assert_eq!(s.format.as_deref(), Some(current_format().as_str()));
}

#[test]
fn sparse_memory_counts_its_blocks_not_its_length() {
    let dir = tempfile::tempdir().unwrap();
    fake_snapshot(dir.path(), "aaaa1111bbbb2222", &current_format());
    let u = scan(dir.path()).unwrap().snapshots[0].usage;
    assert!(u.apparent_bytes >= u64::from(MIB) << 20, "{u:?}");
    assert!(u.disk_bytes < u.apparent_bytes / 2, "{u:?}");
    assert!(u.disk_bytes >= 8192, "{u:?}");
}

#[test]
fn snapshot_of_another_major_is_stale_even_with_old_meta_fields() {
    let dir = tempfile::tempdir().unwrap();
    fake_snapshot(dir.path(), "old1", "2.0");
    // An older sbxrun wrote fewer fields; it is still recognisably stale.
    let old = snapshots_dir(dir.path()).join("old2");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("meta.json"), r#"{"key":"old2","format":"1.4"}"#).unwrap();
    let inv = scan(dir.path()).unwrap();
    assert_eq!(
        state_of(&inv, "old1"),
        &SnapshotState::Stale {
            format: "2.0".into()
        }
    );
    assert_eq!(state_of(&inv, "old1").describe(), "stale (format 2.0)");
    assert_eq!(
        state_of(&inv, "old2"),
        &SnapshotState::Stale {
            format: "1.4".into()
        }
    );
}

#[test]
fn damage_is_reported_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path();
    let fmt = current_format();
    let garbage = fake_snapshot(cache, "garbage", &fmt);
    fs::write(garbage.join("meta.json"), b"\xff{not json").unwrap();
    let no_meta = fake_snapshot(cache, "nometa", &fmt);
    fs::remove_file(no_meta.join("meta.json")).unwrap();
    let crc = fake_snapshot(cache, "crc", &fmt);
    fs::OpenOptions::new()
        .write(true)
        .open(crc.join("memory"))
        .unwrap()
        .write_all_at(b"x", 3 << 20)
        .unwrap();
    let state = fake_snapshot(cache, "state", &fmt);
    fs::write(state.join("state"), b"SBXSNAP\0short").unwrap();
    let wrong_key = fake_snapshot(cache, "wrongkey", &fmt);
    fs::rename(&wrong_key, snapshots_dir(cache).join("renamed")).unwrap();
    fs::write(snapshots_dir(cache).join("stray-file"), b"hi").unwrap();
    fake_snapshot(cache, "badformat", "three");
    let huge = fake_snapshot(cache, "huge", &fmt);
    fs::File::create(huge.join("meta.json"))
        .unwrap()
        .set_len(MAX_META_BYTES + 1)
        .unwrap();

    let inv = scan(cache).unwrap();
    let reason = |name| match state_of(&inv, name) {
        SnapshotState::Damaged { reason } => reason.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        reason("garbage").starts_with("meta.json: "),
        "{}",
        reason("garbage")
    );
    assert_eq!(reason("nometa"), "no meta.json");
    assert_eq!(reason("crc"), "memory checksum mismatch");
    assert!(
        reason("state").starts_with("state: "),
        "{}",
        reason("state")
    );
    assert_eq!(reason("renamed"), "meta.json names another key");
    assert_eq!(reason("stray-file"), "not a directory");
    assert!(reason("badformat").contains("not MAJOR.MINOR"));
    assert_eq!(
        reason("huge"),
        format!("meta.json is over {MAX_META_BYTES} bytes")
    );
}

#[test]
fn a_symlink_in_snapshots_is_damaged_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = fake_snapshot(outside.path(), "k", &current_format());
    fs::create_dir_all(snapshots_dir(dir.path())).unwrap();
    std::os::unix::fs::symlink(&target, snapshots_dir(dir.path()).join("k")).unwrap();
    let inv = scan(dir.path()).unwrap();
    assert!(matches!(state_of(&inv, "k"), SnapshotState::Damaged { .. }));
    // Measured as the link, not as the 4 MiB it points at.
    assert!(inv.snapshots[0].usage.apparent_bytes < 4096);
    let plan = plan_clean(&inv, CleanScope::Stale);
    for r in &plan.remove {
        assert!(remove_entry(&r.path).unwrap());
    }
    assert!(target.join("memory").exists(), "followed the link");
    assert!(snapshots_dir(dir.path())
        .join("k")
        .symlink_metadata()
        .is_err());
}

#[test]
fn temp_builds_are_building_while_their_pid_lives() {
    let dir = tempfile::tempdir().unwrap();
    let root = snapshots_dir(dir.path());
    let live = format!(".tmp-abcdef-{}", std::process::id());
    let dead = format!(".tmp-abcdef-{DEAD_PID}");
    for name in [live.as_str(), dead.as_str(), ".tmp-nopid"] {
        fs::create_dir_all(root.join(name)).unwrap();
    }
    let inv = scan(dir.path()).unwrap();
    assert_eq!(
        state_of(&inv, &live),
        &SnapshotState::Building {
            pid: std::process::id()
        }
    );
    assert_eq!(
        state_of(&inv, &dead),
        &SnapshotState::Abandoned {
            pid: Some(DEAD_PID)
        }
    );
    assert_eq!(state_of(&inv, &dead).describe(), "abandoned");
    assert_eq!(
        state_of(&inv, ".tmp-nopid"),
        &SnapshotState::Abandoned { pid: None }
    );
    assert!(inv
        .snapshots
        .iter()
        .all(|s| s.key.starts_with("abcdef") || s.key == "nopid"));
}

fn populated_cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path();
    fake_snapshot(cache, "good", &current_format());
    fake_snapshot(cache, "old", "2.0");
    fs::create_dir_all(snapshots_dir(cache).join(format!(".tmp-good-{}", std::process::id())))
        .unwrap();
    fs::create_dir_all(snapshots_dir(cache).join(format!(".tmp-good-{DEAD_PID}"))).unwrap();
    fs::create_dir_all(cache.join("kernel/abc")).unwrap();
    fs::write(cache.join("kernel/abc/vmlinux"), vec![1u8; 10_000]).unwrap();
    fs::create_dir_all(cache.join("assets")).unwrap();
    std::os::unix::fs::symlink(
        cache.join("kernel/abc/vmlinux"),
        cache.join("assets/vmlinux"),
    )
    .unwrap();
    fs::create_dir_all(cache.join(format!("run/vm-{}-0", std::process::id()))).unwrap();
    fs::create_dir_all(cache.join(format!("run/vm-{DEAD_PID}-0"))).unwrap();
    fs::create_dir_all(cache.join(format!("run/exec-{DEAD_PID}"))).unwrap();
    dir
}

fn removed_names(plan: &CleanPlan) -> Vec<String> {
    let mut v: Vec<String> = plan
        .remove
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn clean_stale_takes_only_stale_damaged_and_abandoned() {
    let dir = populated_cache();
    let plan = plan_clean(&scan(dir.path()).unwrap(), CleanScope::Stale);
    assert_eq!(
        removed_names(&plan),
        [format!(".tmp-good-{DEAD_PID}"), "old".into()]
    );
    assert_eq!(plan.keep.len(), 1, "{plan:?}");
}

#[test]
fn default_clean_takes_every_snapshot_but_no_assets() {
    let dir = populated_cache();
    let plan = plan_clean(&scan(dir.path()).unwrap(), CleanScope::Snapshots);
    assert_eq!(
        removed_names(&plan),
        [format!(".tmp-good-{DEAD_PID}"), "good".into(), "old".into()]
    );
}

#[test]
fn clean_all_adds_assets_and_dead_scratch_but_keeps_live_work() {
    let dir = populated_cache();
    let cache = dir.path();
    let plan = plan_clean(&scan(cache).unwrap(), CleanScope::All);
    for r in &plan.remove {
        assert!(remove_entry(&r.path).unwrap(), "{}", r.path.display());
    }
    let left = |p: &str| cache.join(p).exists();
    assert!(!left("kernel") && !left("assets") && !left("snapshots/good"));
    assert!(left(&format!("snapshots/.tmp-good-{}", std::process::id())));
    assert!(left(&format!("run/vm-{}-0", std::process::id())));
    assert!(!left(&format!("run/vm-{DEAD_PID}-0")) && !left(&format!("run/exec-{DEAD_PID}")));
    assert_eq!(plan.keep.len(), 2, "{plan:?}");
}

#[test]
fn removing_what_is_already_gone_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!remove_entry(&dir.path().join("gone")).unwrap());
}

#[test]
fn a_failed_removal_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A path through a regular file fails with ENOTDIR, as root too.
    fs::write(dir.path().join("f"), b"").unwrap();
    let bad = dir.path().join("f/sub");
    let err = remove_entry(&bad).unwrap_err();
    assert!(err.to_string().contains("f/sub"), "{err}");
}

#[test]
fn usage_counts_a_hard_linked_file_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), vec![7u8; 50_000]).unwrap();
    fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
    let u = usage_of(dir.path());
    assert!(u.apparent_bytes < 100_000, "{u:?}");
}

#[test]
fn scratch_and_temp_names_yield_their_pids() {
    assert_eq!(scratch_pid("vm-123-4"), Some(123));
    assert_eq!(scratch_pid("exec-77"), Some(77));
    assert_eq!(scratch_pid("other"), None);
    assert_eq!(
        parse_tmp_name(".tmp-ab12-99"),
        Some(("ab12".into(), Some(99)))
    );
    assert_eq!(parse_tmp_name(".tmp-x"), Some(("x".into(), None)));
    assert_eq!(parse_tmp_name("ab12"), None);
}

#[test]
fn json_listing_survives_names_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let root = snapshots_dir(dir.path());
    fs::create_dir_all(&root).unwrap();
    fs::create_dir(root.join(std::ffi::OsStr::from_bytes(b"bad\xffname"))).unwrap();
    let inv = scan(dir.path()).unwrap();
    let json = serde_json::to_string(&inv).unwrap();
    assert!(json.contains("bad\u{fffd}name"), "{json}");
}

#[test]
fn a_snapshot_whose_image_is_gone_is_orphaned_and_stale() {
    let dir = tempfile::tempdir().unwrap();
    let snap = fake_snapshot(dir.path(), "aaaa1111bbbb2222", &current_format());
    let meta_path = snap.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["image"] = "/nonexistent/rootfs.ext4".into();
    fs::write(&meta_path, meta.to_string()).unwrap();
    let inv = scan(dir.path()).unwrap();
    let state = state_of(&inv, "aaaa1111bbbb2222");
    assert_eq!(
        *state,
        SnapshotState::Orphaned {
            missing: "image /nonexistent/rootfs.ext4".into()
        }
    );
    assert!(state.is_stale());
}
