//! Step cache benchmark (prints a table, asserts nothing).
//!
//! 1. Key computation for one step whose inputs are 10,000 files, 1 GiB in
//!    all (`SBXRUN_BENCH_KEY_FILES`, `SBXRUN_BENCH_KEY_MIB`), through the
//!    same code a run uses (`sbxrun_runner::runner::instance_key`):
//!    - cold: no digest memo, every byte hashed; the files are in the page
//!      cache (just written), so this is SHA-256 speed, not the disk's;
//!    - cold, page cache dropped (root only): hashing from the disk;
//!    - warm: the memo saved by an earlier run, loaded from its file, as a
//!      second run finds it: one `stat` per file, no byte read.
//!
//!    The guest kernel, initramfs and root image are hashed too (memoized
//!    after the first row), as in a run.
//! 2. A job of `SBXRUN_BENCH_STEPS` (200) trivial steps in layers of
//!    `SBXRUN_BENCH_WIDTH` (50), run three times by the real binary:
//!    without the cache, with an empty cache (every step runs and is
//!    stored), and again (every step is a hit). Needs /dev/kvm and the
//!    guest assets; skipped without them, or with `SBXRUN_BENCH_JOB=0`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sbxrun_runner::assets::{self, Asset};
use sbxrun_runner::manifest::{load_source, SourceFile, Syntax};
use sbxrun_runner::plan::{InstanceId, Plan, Selection};
use sbxrun_runner::runner::{instance_key, StepImage};
use sbxrun_stepcache::{DigestMemo, LocalStore};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drop_page_cache() -> bool {
    // Harmless when not root: the write simply fails.
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn key_bench(files: usize, mib: usize) {
    let (Ok(kernel), Ok(initramfs), Ok(image)) = (
        assets::require(Asset::Kernel, None),
        assets::require(Asset::Initramfs, None),
        assets::require(Asset::Image, None),
    ) else {
        println!("key benchmark skipped: the guest assets are missing (make assets)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("src/data");
    let per = (mib << 20) / files.max(1);
    let t = Instant::now();
    for i in 0..files {
        let sub = data.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        // Distinct contents, cheap to make.
        let mut bytes = vec![(i % 251) as u8; per];
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(sub.join(format!("f{i:05}.bin")), bytes).expect("write");
    }
    let total = (per * files) as f64;
    println!(
        "step key over {files} input files, {:.0} MiB (made in {:.1}s):",
        total / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let yaml = "name: k\nsteps:\n  s:\n    inputs: [{ host: data }]\n    run: make\n";
    let src = SourceFile::new("k.yaml", yaml.into(), dir.path().join("src"), Syntax::Yaml);
    let job = load_source(src).expect("manifest");
    let plan = Plan::new(&job, &Selection::All).expect("plan");
    let store = LocalStore::open(&dir.path().join("steps")).expect("store");
    let image = StepImage {
        ext4: image,
        reference: "default".into(),
        digest: None,
        config: None,
        pulled: false,
    };
    let memo_file = dir.path().join("steps/memo.json");
    // Files modified within the memo's racy window are never trusted:
    // age them past it, as any input of a real run is.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let key = |memo: &DigestMemo| {
        let t = Instant::now();
        let k = instance_key(
            &plan,
            InstanceId(0),
            &dir.path().join("run"),
            &kernel,
            &initramfs,
            &image,
            &store,
            memo,
        )
        .expect("key");
        (k, t.elapsed().as_secs_f64())
    };
    let row = |label: &str, secs: f64| {
        println!(
            "  {label:<34} {:>8.3} s  {:>8.0} MB/s of inputs",
            secs,
            total / 1e6 / secs
        );
    };
    // The guest files are hashed once here, into the memo every row
    // starts from, so that the rows are about the inputs alone.
    let guest_memo = DigestMemo::load(&memo_file);
    let t = Instant::now();
    for f in [&kernel, &initramfs, &image.ext4] {
        let meta = std::fs::metadata(f).expect("guest file");
        guest_memo.digest(f, &meta).expect("guest digest");
    }
    let guest = t.elapsed().as_secs_f64();
    let _ = guest_memo.save();
    println!("  (hashing the guest kernel, initramfs and root image once: {guest:.3} s)");

    let cold = DigestMemo::load(&memo_file);
    let (k1, secs) = key(&cold);
    row("cold memo, inputs in page cache", secs);
    if drop_page_cache() {
        let (k2, secs) = key(&DigestMemo::load(&memo_file));
        assert_eq!(k1, k2);
        row("cold memo, page cache dropped", secs);
    } else {
        println!("  cold memo, page cache dropped       n/a (needs root)");
    }
    let _ = cold.save();
    let t = Instant::now();
    let warm = DigestMemo::load(&memo_file);
    let load = t.elapsed().as_secs_f64();
    let (k3, secs) = key(&warm);
    assert_eq!(k1, k3);
    row("warm memo (stat only)", secs + load);
    println!("    of it: loading the memo file       {load:.3} s");
}

fn run_job(manifest: &Path, out: &Path, cache: &Path, extra: &[&str]) -> (f64, serde_json::Value) {
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_sbxrun"))
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .env("SBXRUN_STEP_CACHE_DIR", cache)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run sbxrun");
    let wall = started.elapsed().as_secs_f64();
    let report = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if !status.success() {
        println!("  (run exited {:?})", status.code());
    }
    (wall, report)
}

fn job_bench(steps: usize, width: usize) {
    if !sbxrun_runner::host::probe_kvm().accessible {
        println!("job benchmark skipped: /dev/kvm is not usable");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from(
        "name: cache-bench\nconcurrency: 8\ndefaults:\n  resources: { memory: 256MiB }\nsteps:\n",
    );
    for i in 0..steps {
        yaml.push_str(&format!(
            "  s{i}:\n    run: echo {i} > o\n    outputs: [o]\n"
        ));
        if i >= width {
            yaml.push_str(&format!(
                "    inputs: [{{ step: s{}, to: prev }}]\n",
                i - width
            ));
        }
    }
    let manifest = dir.path().join("bench.yaml");
    std::fs::write(&manifest, yaml).expect("manifest");
    let cache = dir.path().join("steps");
    println!("job of {steps} trivial steps (width {width}, concurrency 8), wall time:");
    let cases: [(&str, &str, &[&str]); 3] = [
        ("no cache (--no-cache)", "a", &["--no-cache"]),
        ("empty cache: every step runs, stored", "b", &[]),
        ("full cache: every step a hit", "c", &[]),
    ];
    for (label, out, extra) in cases {
        let (wall, report) = run_job(&manifest, &dir.path().join(out), &cache, extra);
        let empty = Vec::new();
        let all = report["steps"].as_array().unwrap_or(&empty);
        let cached = all.iter().filter(|s| s["cached"] == true).count();
        println!(
            "  {label:<38} {wall:>8.2} s  ({cached} cached, {} VMs started)",
            report["vms_started"]
        );
    }
}

fn main() {
    key_bench(
        env_num("SBXRUN_BENCH_KEY_FILES", 10_000).max(1),
        env_num("SBXRUN_BENCH_KEY_MIB", 1024).max(1),
    );
    if env_num("SBXRUN_BENCH_JOB", 1) != 0 {
        job_bench(
            env_num("SBXRUN_BENCH_STEPS", 200).max(1),
            env_num("SBXRUN_BENCH_WIDTH", 50).max(1),
        );
    }
}
