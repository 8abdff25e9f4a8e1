//! Runner benchmark (prints, asserts nothing):
//!
//! 1. Host-side artifact throughput: packing a 256 MiB tree onto an input
//!    disk, and validating + unpacking a 256 MiB output disk.
//! 2. A generated job of N trivial steps in layers of `width` (each step
//!    needs one step of the previous layer): wall time, steps/s, and the
//!    per-step overhead breakdown from `report.json`'s timings.
//!
//! `SBXRUN_BENCH_STEPS` (default 200), `SBXRUN_BENCH_WIDTH` (50),
//! `SBXRUN_BENCH_CONCURRENCY` (min(width, 8)), `SBXRUN_BENCH_MIB` (256).
//! Part 2 needs /dev/kvm and the guest assets; it is skipped without them.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sbxrun_runner::artifacts::{pack_inputs, unpack_outputs, InputItem, OutputLimits};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:8.1}  p90 {:8.1}  min {:8.1}  max {:8.1}",
        at(0.5),
        at(0.9),
        v[0],
        v[v.len() - 1]
    )
}

fn artifacts_throughput(mib: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    // 16 files, pseudo-random so nothing below can shortcut zeros.
    let per = mib / 16;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..16 {
        let mut data = Vec::with_capacity(per << 20);
        for _ in 0..per {
            for b in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            data.extend_from_slice(&chunk);
        }
        std::fs::write(src.join(format!("f{i:02}.bin")), &data).expect("write");
    }
    let total = (per * 16) as f64;
    let disk = dir.path().join("disk");
    let mut packs = Vec::new();
    let mut unpacks = Vec::new();
    for round in 0..3 {
        let f = std::fs::File::create(&disk).expect("disk");
        f.set_len(1 << 30).expect("size");
        let item = InputItem {
            root: src.clone(),
            filter: None,
            to: "out".into(),
        };
        let t = Instant::now();
        pack_inputs(&[item], &disk, (1000, 1000), 1 << 30).expect("pack");
        packs.push(total / t.elapsed().as_secs_f64());
        let dest = dir.path().join(format!("dest{round}"));
        let t = Instant::now();
        let u = unpack_outputs(&disk, &dest, &["out/".into()], OutputLimits::default())
            .expect("unpack");
        unpacks.push(total / t.elapsed().as_secs_f64());
        assert_eq!(u.files.len(), 16);
        let _ = std::fs::remove_dir_all(&dest);
    }
    println!(
        "artifacts, host side, {} MiB in 16 files, 3 rounds (MB/s):",
        per * 16
    );
    println!("  pack (in)                 {}", stats(packs));
    println!("  validate+unpack+sha (out) {}", stats(unpacks));
}

fn job_bench(steps: usize, width: usize, concurrency: usize) {
    if !sbxrun_runner::host::probe_kvm().accessible {
        println!("job benchmark skipped: /dev/kvm is not usable");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = format!(
        "name: bench\nconcurrency: {concurrency}\ndefaults:\n  resources: {{ memory: 256MiB }}\nsteps:\n"
    );
    for i in 0..steps {
        yaml.push_str(&format!("  s{i}:\n    run: \"true\"\n"));
        if i >= width {
            yaml.push_str(&format!("    needs: [s{}]\n", i - width));
        }
    }
    let manifest = dir.path().join("bench.yaml");
    std::fs::write(&manifest, yaml).expect("manifest");
    let out = dir.path().join("out");
    let exe = Path::new(env!("CARGO_BIN_EXE_sbxrun"));
    let started = Instant::now();
    let status = Command::new(exe)
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        // The VMs are what this measures; benches/step_cache.rs has the cache.
        .arg("--no-cache")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run sbxrun");
    let wall = started.elapsed().as_secs_f64();
    let report: serde_json::Value = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let empty = Vec::new();
    let steps_v = report["steps"].as_array().unwrap_or(&empty);
    let passed = steps_v.iter().filter(|s| s["verdict"] == "passed").count();
    println!(
        "job of {steps} trivial steps, width {width}, concurrency {concurrency}: exit {:?}, {passed} passed",
        status.code()
    );
    println!(
        "  wall {wall:.1}s, {:.2} steps/s (includes a cold boot if the snapshot was missing)",
        steps as f64 / wall
    );
    println!("  per step (ms):");
    for key in [
        "queued_ms",
        "vm_acquire_ms",
        "inputs_ms",
        "run_ms",
        "outputs_ms",
        "total_ms",
    ] {
        let v: Vec<f64> = steps_v
            .iter()
            .filter_map(|s| s["timings"][key].as_f64())
            .collect();
        println!("    {key:<14} {}", stats(v));
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is understood.
    let mib = env_num("SBXRUN_BENCH_MIB", 256).max(16);
    artifacts_throughput(mib);
    let steps = env_num("SBXRUN_BENCH_STEPS", 200).max(1);
    let width = env_num("SBXRUN_BENCH_WIDTH", 50).max(1);
    let concurrency = env_num("SBXRUN_BENCH_CONCURRENCY", width.min(8)).max(1);
    job_bench(steps, width, concurrency);
}
