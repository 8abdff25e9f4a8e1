//! The snapshot pool on real VMs: clones are fresh, damaged snapshots are
//! rebuilt, dead warm VMs are replaced.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_init::proto::{Command, ExitStatus, RunRequest, User};
use sbxrun_runner::assets::cache_dir;
use sbxrun_runner::pool::session::{self, fresh_seed, host_clock_ns};
use sbxrun_runner::pool::snapshot::{self, SnapshotError};
use sbxrun_runner::pool::warm::{LeasedVm, Pool, PoolConfig};
use sbxrun_runner::pool::OutputStream;

fn request(cmd: Command, user: User, stdin: Option<Vec<u8>>) -> RunRequest {
    RunRequest {
        command: cmd,
        env: vec![],
        cwd: "/work".into(),
        user,
        rlimits: Default::default(),
        unix_time_ns: host_clock_ns(),
        rng_seed: fresh_seed(),
        timeout_ms: Some(60_000),
        stdin,
        artifacts: Default::default(),
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    }
}

/// Runs a shell script in a leased VM; returns (status, stdout, stderr).
fn run(
    lease: &mut LeasedVm,
    script: &str,
    stdin: Option<Vec<u8>>,
) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let req = request(Command::Shell(script.into()), User::Unprivileged, stdin);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = session::run(
        &mut lease.vm,
        &req,
        Duration::from_secs(90),
        &mut |s, b| match s {
            OutputStream::Stdout => out.extend_from_slice(b),
            OutputStream::Stderr => err.extend_from_slice(b),
        },
    )
    .unwrap_or_else(|e| panic!("run failed: {}", sbxrun_runner::errors::chain(&e)));
    (outcome.exited.status, out, err)
}

fn pool_in(cache: PathBuf, warm: usize) -> Pool {
    let scratch = cache.join("run");
    Pool::open(PoolConfig {
        cache,
        scratch,
        shape: common::default_shape(),
        warm,
        console_dir: None,
    })
    .unwrap_or_else(|e| panic!("cannot open the pool: {}", sbxrun_runner::errors::chain(&e)))
}

#[test]
fn twenty_clones_have_distinct_rng_and_the_host_clock() {
    let pool = pool_in(cache_dir(), 2);
    let mut seen = HashSet::new();
    for i in 0..20 {
        let mut lease = pool.acquire().expect("acquire");
        // The guest reads its clock somewhere inside the run, and an emulated
        // guest may take seconds to fork three programs, so the only honest
        // bound is the host clock before and after the run.
        let host_before = (host_clock_ns() / 1_000_000_000) as i64;
        let (status, out, err) = run(
            &mut lease,
            "head -c 16 /dev/urandom | od -An -tx1; date +%s",
            None,
        );
        let host_after = (host_clock_ns() / 1_000_000_000) as i64;
        assert_eq!(
            status,
            ExitStatus::Code(0),
            "clone {i}: {}",
            String::from_utf8_lossy(&err)
        );
        let text = String::from_utf8_lossy(&out).into_owned();
        let mut lines = text.lines();
        let random = lines.next().expect("random bytes").trim().to_string();
        let guest_time: i64 = lines
            .next()
            .expect("date")
            .trim()
            .parse()
            .expect("a number");
        // One second of slack each side for whole-second truncation.
        assert!(
            (host_before - 1..=host_after + 1).contains(&guest_time),
            "clone {i}: guest clock {guest_time}, host clock {host_before}..={host_after}"
        );
        assert!(
            seen.insert(random.clone()),
            "clone {i} repeated RNG output {random}"
        );
    }
    assert!(pool.stats().restored >= 20);
}

#[test]
fn stdin_stdout_and_stderr_are_binary_safe() {
    let pool = pool_in(cache_dir(), 0);
    let mut lease = pool.acquire().expect("acquire");
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).rev().collect();
    let (status, out, err) = run(
        &mut lease,
        "cat; cat /work/../proc/self/status >/dev/null",
        Some(data.clone()),
    );
    assert_eq!(
        status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out, data);
    let mut lease = pool.acquire().expect("acquire");
    let (status, out, err) = run(&mut lease, "cat >&2", Some(data.clone()));
    assert_eq!(status, ExitStatus::Code(0));
    assert!(out.is_empty());
    assert_eq!(err, data);
}

#[test]
fn a_warm_vm_killed_while_waiting_is_replaced() {
    let pool = pool_in(cache_dir(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pool.ready_count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = pool.ready_pids();
    assert_eq!(pids.len(), 2, "the pool did not warm up");
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..2 {
        let mut lease = pool.acquire().expect("acquire");
        assert_ne!(lease.vm.pid(), pids[0], "the killed VM was handed out");
        let (status, out, _) = run(&mut lease, "echo alive", None);
        assert_eq!((status, out), (ExitStatus::Code(0), b"alive\n".to_vec()));
    }
    assert!(pool.stats().died_waiting >= 1, "stats: {:?}", pool.stats());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn every_kind_of_damage_is_detected_before_restore() {
    let pool = pool_in(cache_dir(), 0);
    let good = pool.snapshot().clone();
    let key = good.meta.key.clone();
    type Damage = fn(&Path);
    let damages: [(&str, &str, Damage); 6] = [
        ("state", "truncate", |p| truncate(p, 100)),
        ("state", "flip a byte", |p| flip(p, 200)),
        ("state", "other version", |p| {
            write_at(p, 8, &99u16.to_le_bytes())
        }),
        ("memory", "truncate", |p| truncate(p, 4096)),
        ("memory", "flip a byte", |p| flip(p, 0x10_0000 + 17)),
        ("meta.json", "garbage", |p| {
            std::fs::write(p, b"{not json").unwrap()
        }),
    ];
    for (file, what, damage) in damages {
        let cache = tempfile::tempdir().unwrap();
        let dir = snapshot::snapshots_dir(cache.path()).join(&key);
        copy_dir(&good.dir, &dir);
        assert!(
            snapshot::load(cache.path(), &key).unwrap().is_some(),
            "the intact copy must load"
        );
        damage(&dir.join(file));
        match snapshot::load(cache.path(), &key) {
            Err(SnapshotError::Damaged(..)) => {}
            other => panic!(
                "{file}: {what}: expected Damaged, got {:?}",
                other.map(|s| s.map(|s| s.dir))
            ),
        }
    }
}

#[test]
fn a_damaged_snapshot_is_rebuilt_and_works() {
    let good = pool_in(cache_dir(), 0).snapshot().clone();
    let cache = tempfile::tempdir().unwrap();
    let dir = snapshot::snapshots_dir(cache.path()).join(&good.meta.key);
    copy_dir(&good.dir, &dir);
    flip(&dir.join("state"), 300);
    let pool = pool_in(cache.path().to_path_buf(), 0);
    assert_eq!(pool.stats().rebuilt, 1);
    let mut lease = pool.acquire().expect("acquire");
    let (status, out, _) = run(&mut lease, "echo rebuilt", None);
    assert_eq!((status, out), (ExitStatus::Code(0), b"rebuilt\n".to_vec()));
}

#[test]
fn runners_racing_to_create_one_snapshot_both_succeed() {
    let cache = tempfile::tempdir().unwrap();
    let exe = common::sbxrun_exe();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                // Every run here runs its steps; tests/step_cache.rs covers the cache.
                .env("SBXRUN_NO_CACHE", "1")
                .args(["exec", "--", "echo", "raced"])
                .env("SBXRUN_CACHE_DIR", cache.path())
                .env(
                    "SBXRUN_KERNEL",
                    sbxrun_runner::assets::Asset::Kernel.resolve(None),
                )
                .env(
                    "SBXRUN_INITRAMFS",
                    sbxrun_runner::assets::Asset::Initramfs.resolve(None),
                )
                .env(
                    "SBXRUN_IMAGE",
                    sbxrun_runner::assets::Asset::Image.resolve(None),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"raced\n");
    }
    let entries: Vec<_> = std::fs::read_dir(snapshot::snapshots_dir(cache.path()))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "expected exactly one installed snapshot and no temp dirs"
    );
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// The guest's uptime, seconds, from a fresh restore of `pool`'s snapshot.
fn restored_uptime(pool: &Pool) -> f64 {
    let mut lease = pool.acquire().expect("acquire");
    let (status, out, err) = run(&mut lease, "cat /proc/uptime", None);
    assert_eq!(status, ExitStatus::Code(0), "{}", common::text(&err));
    let text = common::text(&out);
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not /proc/uptime: {text:?}"))
}

/// A restored guest's clock continues from its snapshot, so it has no
/// snapshot age to catch up on: restores a minute apart start from the same
/// uptime, the uptime the guest had when the snapshot was taken.
#[test]
fn restored_guests_continue_from_the_snapshot_uptime_whatever_its_age() {
    let cache = tempfile::tempdir().unwrap();
    let pool = pool_in(cache.path().to_path_buf(), 0);
    let made = std::time::Instant::now();
    let boot_s = pool.snapshot().meta.boot_ms as f64 / 1000.0;
    let fresh = restored_uptime(&pool);
    // The snapshot's age is what this test is about, so it has to pass.
    let age = Duration::from_secs(62);
    std::thread::sleep(age.saturating_sub(made.elapsed()));
    let aged = restored_uptime(&pool);
    // Running `cat` takes the emulated guest well under a second; a clock
    // that saw the snapshot's age would be a minute ahead.
    assert!(
        (aged - fresh).abs() < 3.0,
        "uptime {fresh:.2} s in a fresh restore, {aged:.2} s in one {} s later",
        made.elapsed().as_secs()
    );
    assert!(
        fresh < boot_s + 5.0,
        "uptime {fresh:.2} s after restoring a snapshot taken {boot_s:.2} s into boot"
    );
}
