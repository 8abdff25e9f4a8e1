//! What the VMM jail costs: restore -> ready (host-side, VMM spawn to
//! guest-init's pong) with and without the jail, A/B interleaved in one
//! run, plus the VMM's own account of its jail setup time.
//! Run: `cargo bench --bench jail` (needs /dev/kvm and the guest assets;
//! `SBXRUN_BENCH_RUNS` overrides the 30 runs per side). Asserts nothing.

use std::time::Duration;

use sbxrun_runner::assets;
use sbxrun_runner::host::probe_kvm;
use sbxrun_runner::pool::launch::VmShape;
use sbxrun_runner::pool::warm::{Pool, PoolConfig};

fn shape(jail: bool) -> VmShape {
    let shape = VmShape::from_default_assets(256, 1)
        .unwrap_or_else(|e| panic!("bench needs the guest assets: {e}"));
    VmShape { jail, ..shape }
}

fn pool(jail: bool) -> Pool {
    let cache = assets::cache_dir();
    Pool::open(PoolConfig {
        scratch: cache.join("run"),
        cache,
        shape: shape(jail),
        warm: 0,
        console_dir: None,
    })
    .unwrap_or_else(|e| panic!("cannot open the pool: {}", sbxrun_runner::errors::chain(&e)))
}

struct Stats {
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        min: ms[0],
        max: ms[ms.len() - 1],
    }
}

fn row(name: &str, s: &Stats) {
    println!(
        "{name:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        s.median, s.p90, s.min, s.max
    );
}

fn main() {
    let kvm = probe_kvm();
    if !kvm.accessible {
        eprintln!(
            "bench jail: /dev/kvm is not usable: {}",
            kvm.error.unwrap_or_default()
        );
        std::process::exit(3);
    }
    sbxrun_runner::pool::vm::set_vmm_executable(env!("CARGO_BIN_EXE_sbxrun").into());
    let runs: usize = std::env::var("SBXRUN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(1);
    let jailed_pool = pool(true);
    let open_pool = pool(false);
    // One untimed round each: page cache and first-use costs.
    drop(jailed_pool.acquire());
    drop(open_pool.acquire());

    let (mut jailed, mut open, mut jail_setup) = (Vec::new(), Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for _ in 0..runs {
        let lease = jailed_pool
            .acquire()
            .unwrap_or_else(|e| panic!("jailed restore: {}", sbxrun_runner::errors::chain(&e)));
        assert!(lease.vm.jailed());
        jailed.push(ms(lease.restore_time));
        jail_setup.push(lease.vm.jail_us as f64 / 1e3);
        drop(lease);
        let lease = open_pool
            .acquire()
            .unwrap_or_else(|e| panic!("unjailed restore: {}", sbxrun_runner::errors::chain(&e)));
        open.push(ms(lease.restore_time));
        drop(lease);
    }
    let (j, o) = (stats(jailed), stats(open));
    println!("\nrestore -> ready (VMM spawn to guest pong), {runs} runs each, A/B interleaved, ms");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "median", "p90", "min", "max"
    );
    row("jailed", &j);
    row("--no-jail", &o);
    row("VMM-side jail setup (jailed)", &stats(jail_setup));
    println!(
        "jail cost (median difference): {:+.2} ms",
        j.median - o.median
    );
}
