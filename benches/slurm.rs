//! Slurm executor benchmark (prints a table, asserts nothing).
//!
//! A job of `SBXRUN_BENCH_STEPS` (200) trivial independent steps, run by
//! the real binary twice on this host: with the local executor at `-j 2`
//! (the parallelism of this one 2-CPU node) and with `--executor slurm`
//! against the one-node cluster `scripts/local-slurm.sh` starts (and this
//! benchmark stops). Both without the step cache, so every step boots a
//! VM. Printed: wall time of each, the Slurm executor's overhead per step,
//! Slurm's submit→start latency (its own clock, 1 s resolution, from the
//! report), and the CPU time the submitting process spent (its follow
//! loop, with sbatch/squeue children). Needs /dev/kvm, the guest assets
//! and Slurm installed (`scripts/test-deps.sh`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cpu_of_children() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

fn main() {
    if !sbxrun_runner::host::probe_kvm().accessible {
        println!("slurm benchmark skipped: /dev/kvm is not usable");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/local-slurm.sh");
    let started = Command::new("bash").arg(&script).arg("start").output();
    let conf = match started {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("export SLURM_CONF=")
                    .map(|c| c.trim_matches('\'').to_owned())
            })
            .unwrap_or_default(),
        Ok(o) => {
            println!(
                "slurm benchmark skipped: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("slurm benchmark skipped: {e}");
            return;
        }
    };
    let steps = env_num("SBXRUN_BENCH_STEPS", 200).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml =
        String::from("name: slurm-bench\ndefaults:\n  resources: { memory: 256MiB }\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!("  s{i}:\n    run: \"true\"\n"));
    }
    let manifest = dir.path().join("bench.yaml");
    std::fs::write(&manifest, yaml).expect("manifest");
    let exe = env!("CARGO_BIN_EXE_sbxrun");
    let mut rows = Vec::new();
    for (label, extra) in [
        ("local executor, -j 2", vec!["-j", "2"]),
        ("slurm executor", vec!["--executor", "slurm"]),
    ] {
        let out = dir.path().join(label.split(' ').next().unwrap_or("x"));
        let cpu_before = cpu_of_children();
        let t = Instant::now();
        let status = Command::new(exe)
            .arg("run")
            .arg(&manifest)
            .arg("--out")
            .arg(&out)
            .args(["-q", "--no-cache"])
            .args(&extra)
            .env("SLURM_CONF", &conf)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run sbxrun");
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_of_children() - cpu_before;
        let report: serde_json::Value = std::fs::read(out.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let empty = Vec::new();
        let all = report["steps"].as_array().unwrap_or(&empty);
        let passed = all.iter().filter(|s| s["verdict"] == "passed").count();
        let queued: Vec<f64> = all
            .iter()
            .filter_map(|s| s["attempts"][0]["slurm"]["queued_ms"].as_f64())
            .collect();
        rows.push((label, wall, cpu, passed, status.code(), queued));
    }
    let _ = Command::new("bash").arg(&script).arg("stop").output();
    println!("{steps} trivial steps on one 2-CPU node (each boots a VM):");
    for (label, wall, cpu, passed, code, queued) in &rows {
        println!(
            "  {label:<22} wall {wall:>7.1} s  ({passed} passed, exit {code:?}); CPU of sbxrun and its children {cpu:.1} s"
        );
        if !queued.is_empty() {
            println!(
                "    Slurm submit->start: median {:.1} s, max {:.1} s",
                median(queued.clone()) / 1000.0,
                queued.iter().cloned().fold(0.0, f64::max) / 1000.0
            );
        }
    }
    if let [(_, local, ..), (_, slurm, ..)] = rows.as_slice() {
        println!(
            "  Slurm executor overhead: {:+.1} s in all, {:+.0} ms per step",
            slurm - local,
            (slurm - local) * 1000.0 / steps as f64
        );
    }
}
