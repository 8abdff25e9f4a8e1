//! `sbxrun cache ls` and `sbxrun cache clean` as a user runs them, against
//! a cache directory of hand-made entries (no VM is booted).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use sbxrun_proto::snapshot_file::{encode, FORMAT_MAJOR, FORMAT_MINOR};
use sbxrun_runner::pool::snapshot::SnapshotMeta;

/// A pid no process can have: above the kernel's pid_max ceiling (2^22).
const DEAD_PID: u32 = 4_000_000_000;

fn sbxrun(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbxrun"))
        .args(args)
        .env("SBXRUN_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running sbxrun: {e}"))
}

fn stdout_ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A snapshot as the runner writes it, with a sparse 2 MiB memory file,
/// booted from a kernel asset file of the cache (created here).
fn snapshot(cache: &Path, key: &str, format: &str) {
    snapshot_of(cache, key, format, &kernel(cache));
}

/// The cache's (fake) kernel asset.
fn kernel(cache: &Path) -> std::path::PathBuf {
    let kernel = cache.join("kernel/k1/vmlinux");
    fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    if !kernel.exists() {
        fs::write(&kernel, vec![9u8; 30_000]).unwrap();
    }
    kernel
}

/// A snapshot booted from the cache's kernel (as initramfs too) and `image`.
fn snapshot_of(cache: &Path, key: &str, format: &str, image: &Path) {
    let booted = kernel(cache);
    let dir = cache.join("snapshots").join(key);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("state"), encode(&serde_json::json!({})).unwrap()).unwrap();
    let memory = dir.join("memory");
    let f = fs::File::create(&memory).unwrap();
    f.set_len(2 << 20).unwrap();
    f.write_all_at(&[1; 4096], 1 << 20).unwrap();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fs::read(&memory).unwrap());
    let meta = SnapshotMeta {
        key: key.into(),
        format: format.into(),
        memory_mib: 2,
        vcpus: 1,
        kernel: booted.clone(),
        initramfs: booted,
        image: image.into(),
        memory_crc32: crc.finalize(),
        memory_bytes_written: 4096,
        boot_ms: 1,
        snapshot_ms: 1,
        created_unix: 1_700_000_000,
    };
    fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
}

/// good (usable), old (format 2.0), junk (garbage meta.json), a live build
/// (this test's pid), an abandoned build, and a kernel asset tree.
fn fake_cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path();
    let current = format!("{FORMAT_MAJOR}.{FORMAT_MINOR}");
    snapshot(c, "aaaaaaaaaaaaaaaaaaaaaaaa", &current);
    snapshot(c, "bbbbbbbbbbbbbbbbbbbbbbbb", "2.0");
    snapshot(c, "cccccccccccccccccccccccc", &current);
    fs::write(
        c.join("snapshots/cccccccccccccccccccccccc/meta.json"),
        "{oops",
    )
    .unwrap();
    let live = format!(
        "snapshots/.tmp-dddddddddddddddddddddddd-{}",
        std::process::id()
    );
    fs::create_dir_all(c.join(live)).unwrap();
    let dead = format!("snapshots/.tmp-eeeeeeeeeeeeeeeeeeeeeeee-{DEAD_PID}");
    fs::create_dir_all(c.join(dead)).unwrap();
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn ls_lists_each_snapshot_with_its_state_and_the_totals() {
    let dir = fake_cache();
    let text = stdout_ok(&sbxrun(dir.path(), &["cache", "ls"]));
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no line for {key}:\n{text}"))
            .to_string()
    };
    assert!(line("aaaaaaaaaaaa").ends_with("  ok"), "{text}");
    assert!(line("aaaaaaaaaaaa").contains("2 MiB"), "{text}");
    assert!(
        line("bbbbbbbbbbbb").ends_with("stale (format 2.0)"),
        "{text}"
    );
    assert!(
        line("cccccccccccc").contains("damaged (meta.json: "),
        "{text}"
    );
    assert!(
        line("dddddddddddd").ends_with(&format!("building (pid {})", std::process::id())),
        "{text}"
    );
    assert!(line("eeeeeeeeeeee").ends_with("abandoned"), "{text}");
    assert!(
        text.contains("total: 5 snapshots, ")
            && text.contains("(1 usable, 3 stale or damaged, 1 building)"),
        "{text}"
    );
    assert!(text.contains("guest assets: "), "{text}");
    assert!(text.contains(" on disk in kernel/\n"), "{text}");
}

#[test]
fn ls_json_is_machine_readable() {
    let dir = fake_cache();
    let text = stdout_ok(&sbxrun(dir.path(), &["cache", "ls", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    assert_eq!(snaps[2]["key"], "aaaaaaaaaaaaaaaaaaaaaaaa", "{text}");
    assert_eq!(snaps[2]["state"]["kind"], "usable");
    assert_eq!(snaps[3]["state"]["kind"], "stale");
    assert_eq!(snaps[3]["state"]["format"], "2.0");
    let u = &snaps[2]["usage"];
    assert!(u["disk_bytes"].as_u64().unwrap() < u["apparent_bytes"].as_u64().unwrap());
    assert!(v["assets_total"]["apparent_bytes"].as_u64().unwrap() >= 30_000);
}

#[test]
fn clean_stale_dry_run_removes_nothing() {
    let dir = fake_cache();
    let before = names(&dir.path().join("snapshots"));
    let text = stdout_ok(&sbxrun(
        dir.path(),
        &["cache", "clean", "--stale", "--dry-run"],
    ));
    assert_eq!(names(&dir.path().join("snapshots")), before);
    assert!(
        text.contains("would remove snapshots/bbbbbbbbbbbbbbbbbbbbbbbb: snapshot bbbbbbbbbbbb, stale (format 2.0), "),
        "{text}"
    );
    assert!(
        text.contains("would remove snapshots/cccccccccccccccccccccccc"),
        "{text}"
    );
    assert!(!text.contains("would remove snapshots/aaaa"), "{text}");
    assert!(text.contains("would free "), "{text}");
}

#[test]
fn clean_stale_keeps_usable_snapshots_and_live_builds() {
    let dir = fake_cache();
    let text = stdout_ok(&sbxrun(dir.path(), &["cache", "clean", "--stale"]));
    assert_eq!(
        names(&dir.path().join("snapshots")),
        [
            format!(".tmp-dddddddddddddddddddddddd-{}", std::process::id()),
            "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        ]
    );
    assert!(text.contains("kept snapshots/.tmp-dddd"), "{text}");
    assert!(text.contains("\nfreed "), "{text}");
}

#[test]
fn clean_removes_every_snapshot_but_not_the_assets() {
    let dir = fake_cache();
    let text = stdout_ok(&sbxrun(dir.path(), &["cache", "clean"]));
    assert_eq!(
        names(&dir.path().join("snapshots")),
        [format!(
            ".tmp-dddddddddddddddddddddddd-{}",
            std::process::id()
        )]
    );
    assert!(dir.path().join("kernel/k1/vmlinux").exists());
    assert!(
        text.contains("removed snapshots/aaaaaaaaaaaaaaaaaaaaaaaa"),
        "{text}"
    );
    // Again: only the live build is left, and it stays.
    let again = stdout_ok(&sbxrun(dir.path(), &["cache", "clean"]));
    assert!(again.contains("nothing to remove\nfreed 0 B\n"), "{again}");
}

#[test]
fn clean_all_removes_assets_and_says_how_to_rebuild_them() {
    let dir = fake_cache();
    let text = stdout_ok(&sbxrun(dir.path(), &["cache", "clean", "--all"]));
    assert!(!dir.path().join("kernel").exists());
    assert!(text.contains("`make assets` rebuilds them"), "{text}");
}

#[test]
fn an_unreadable_cache_exits_three_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // `snapshots` as a file cannot be listed, whoever runs the test.
    fs::write(dir.path().join("snapshots"), b"").unwrap();
    let out = sbxrun(dir.path(), &["cache", "ls"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read ") && err.contains("snapshots"),
        "{err}"
    );
}

#[test]
fn step_results_are_listed_and_cleaned_on_their_own() {
    use sbxrun_stepcache::{capture_tree, Entry, LocalStore, Store, ENTRY_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let outputs = dir.path().join("outputs");
    fs::create_dir_all(&outputs).unwrap();
    fs::write(outputs.join("a.out"), vec![7u8; 4096]).unwrap();
    let store = LocalStore::open(&cache.join("steps")).unwrap();
    let entry = Entry {
        format: ENTRY_FORMAT,
        key: "ab".repeat(32),
        parts: Default::default(),
        created_unix_ms: 0,
        outputs: capture_tree(&store, &outputs).unwrap(),
        log: None,
        record: serde_json::json!({}),
    };
    store.put(&entry).unwrap();
    snapshot(&cache, "k1", "1.0");

    let ls = stdout_ok(&sbxrun(&cache, &["cache", "ls"]));
    assert!(ls.contains("step results: 1 cached"), "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout_ok(&sbxrun(&cache, &["cache", "ls", "--json"]))).unwrap();
    assert_eq!(json["steps"]["entries"], 1, "{json:#}");
    assert!(json["steps"]["bytes"].as_u64().unwrap() >= 4096);

    let dry = stdout_ok(&sbxrun(&cache, &["cache", "clean", "--steps", "--dry-run"]));
    assert!(dry.contains("would remove 1 cached step results"), "{dry}");
    assert!(store.get(&entry.key).unwrap().is_some());

    let cleaned = stdout_ok(&sbxrun(&cache, &["cache", "clean", "--steps"]));
    assert!(
        cleaned.contains("removed 1 cached step results"),
        "{cleaned}"
    );
    assert!(store.get(&entry.key).unwrap().is_none());
    assert_eq!(store.usage().bytes, 0);
    // Snapshots are not step results.
    assert!(cache.join("snapshots/k1").is_dir());
}

/// Images built from directories are listed with their source and last
/// use; `--stale` drops the ones whose tree changed or went away (and the
/// snapshots booted from an image that is gone), `--images` drops them
/// all, and the kernel stays throughout.
#[test]
fn directory_images_are_listed_with_their_source_and_cleaned_when_stale() {
    use sbxrun_runner::pool::resolve_image;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let tree = dir.path().join("rootfs");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/os-release"), "ID=test\n").unwrap();
    let old = resolve_image(&tree, &cache).unwrap();
    fs::write(tree.join("etc/os-release"), "ID=test\nVERSION=2\n").unwrap();
    let new = resolve_image(&tree, &cache).unwrap();
    assert_ne!(old, new);
    let gone = dir.path().join("deleted-rootfs");
    fs::create_dir_all(&gone).unwrap();
    fs::write(gone.join("x"), "x").unwrap();
    let orphan_image = resolve_image(&gone, &cache).unwrap();
    fs::remove_dir_all(&gone).unwrap();
    let current = format!("{FORMAT_MAJOR}.{FORMAT_MINOR}");
    snapshot(&cache, "k1k1k1k1k1k1k1k1k1k1k1k1", &current);
    snapshot_of(&cache, "0000000000000000000000aa", &current, &old);

    let ls = stdout_ok(&sbxrun(&cache, &["cache", "ls"]));
    let source = fs::canonicalize(&tree).unwrap().display().to_string();
    let rows: Vec<&str> = ls.lines().filter(|l| l.starts_with("directory")).collect();
    assert_eq!(rows.len(), 3, "{ls}");
    assert_eq!(
        rows.iter().filter(|r| r.ends_with(&source)).count(),
        2,
        "{ls}"
    );
    assert!(
        rows.iter().all(|r| r.contains("0s") || r.contains("1s")),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout_ok(&sbxrun(&cache, &["cache", "ls", "--json"]))).unwrap();
    assert_eq!(json["dir_images"].as_array().unwrap().len(), 3, "{json:#}");

    let stale = stdout_ok(&sbxrun(&cache, &["cache", "clean", "--stale"]));
    assert!(stale.contains("its source changed since"), "{stale}");
    assert!(stale.contains("its source is gone"), "{stale}");
    assert!(new.exists(), "the current image stays: {stale}");
    assert!(!old.exists() && !orphan_image.exists(), "{stale}");
    // The snapshot booted from the removed image goes on the next pass;
    // the one booted from the kernel stays.
    let again = stdout_ok(&sbxrun(&cache, &["cache", "clean", "--stale"]));
    assert!(again.contains("orphaned (image "), "{again}");
    assert_eq!(
        names(&cache.join("snapshots")),
        ["k1k1k1k1k1k1k1k1k1k1k1k1"]
    );

    let images = stdout_ok(&sbxrun(&cache, &["cache", "clean", "--images"]));
    assert!(!new.exists(), "{images}");
    assert!(cache.join("kernel/k1/vmlinux").exists(), "{images}");
    assert!(cache.join("snapshots/k1k1k1k1k1k1k1k1k1k1k1k1").exists());
}
