//! MicroVM benchmarks on real KVM: cold boot, snapshot restore, exec
//! round trips, guest→host stdout throughput, virtio-blk read throughput,
//! and the memory cost of restored VMs. Prints tables; asserts nothing.
//!
//! Knobs (environment): SBXRUN_BENCH_BOOTS (cold boots, default 5),
//! SBXRUN_BENCH_RESTORES (default 30), SBXRUN_BENCH_EXECS (sequential
//! `true` runs, default 200), SBXRUN_BENCH_PSS_VMS (default 50),
//! SBXRUN_BENCH_STREAM_MB (default 4), SBXRUN_BENCH_AGE_S (how old the
//! aged snapshot is, default 120), SBXRUN_BENCH_AGED_RESTORES (default 10).
//!
//! What the figures depend on: restore times on the guest's work after the
//! restore (on kvm-pvm hosts its kernel code is emulated) and, with a TSC
//! clocksource, on the snapshot's age, which is why a snapshot this bench
//! makes is restored both fresh and aged; PSS on how many pages the guest
//! touched since the restore.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_init::proto::{Command, RunRequest, User};
use sbxrun_runner::assets::{self, Asset};
use sbxrun_runner::host::probe_kvm;
use sbxrun_runner::pool::launch::{boot_cold, StepDisks, VmShape, DEFAULT_ARTIFACT_DISK_BYTES};
use sbxrun_runner::pool::session::{self, fresh_seed, host_clock_ns};
use sbxrun_runner::pool::warm::{LeasedVm, Pool, PoolConfig};
use sbxrun_runner::pool::OutputStream;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label:<38} | {:>5} | {:>10.2} | {:>10.2} | {:>10.2} | {:>10.2} |",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

fn request(script: &str, user: User) -> RunRequest {
    RunRequest {
        command: Command::Shell(script.into()),
        env: vec![],
        cwd: "/work".into(),
        user,
        rlimits: Default::default(),
        unix_time_ns: host_clock_ns(),
        rng_seed: fresh_seed(),
        timeout_ms: Some(600_000),
        stdin: None,
        artifacts: Default::default(),
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    }
}

fn run(lease: &mut LeasedVm, script: &str, user: User) -> (Duration, usize) {
    let mut bytes = 0usize;
    let outcome = session::run(
        &mut lease.vm,
        &request(script, user),
        Duration::from_secs(900),
        &mut |s, b| {
            if s == OutputStream::Stdout {
                bytes += b.len();
            }
        },
    )
    .unwrap_or_else(|e| panic!("run failed: {}", sbxrun_runner::errors::chain(&e)));
    (outcome.wall, bytes)
}

/// `pid` and every process below it: a jailed VM is a relay process with
/// the VMM (and its vCPU thread) as a descendant.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// PSS of a VM's relay (its top process) and of the rest of its tree.
fn vm_pss_kib(pid: u32) -> (u64, u64) {
    let tree = process_tree(pid);
    let rest = tree[1..].iter().map(|&p| pss_kib(p)).sum();
    (pss_kib(pid), rest)
}

fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let kvm = probe_kvm();
    assert!(kvm.accessible, "benchmarks need /dev/kvm: {:?}", kvm.error);
    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/sbxrun");
    assert!(
        exe.exists(),
        "build the VMM first: cargo build --release --bin sbxrun"
    );
    sbxrun_runner::pool::vm::set_vmm_executable(exe);
    let get = |a| assets::require(a, None).unwrap_or_else(|e| panic!("{e}"));
    let shape = VmShape {
        kernel: get(Asset::Kernel),
        initramfs: get(Asset::Initramfs),
        image: get(Asset::Image),
        memory_mib: 256,
        vcpus: 1,
        flavour: kvm.flavour,
        artifact_disk_bytes: DEFAULT_ARTIFACT_DISK_BYTES,
        jail: true,
    };
    println!(
        "host: {} ({} cores)",
        kvm.flavour.label(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "| {:<38} | {:>5} | {:>10} | {:>10} | {:>10} | {:>10} |",
        "measure (ms)", "n", "median", "p90", "min", "max"
    );
    println!(
        "|{:-<40}|{:-<7}|{:-<12}|{:-<12}|{:-<12}|{:-<12}|",
        "", "", "", "", "", ""
    );

    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut boots = Vec::new();
    let mut vmm_setup = Vec::new();
    for i in 0..knob("SBXRUN_BENCH_BOOTS", 5) {
        let disks = StepDisks::create_in(
            &scratch.path().join(format!("boot{i}")),
            shape.artifact_disk_bytes,
        )
        .unwrap();
        let booted = boot_cold(&shape, &disks, "", None, None)
            .unwrap_or_else(|e| panic!("{}", sbxrun_runner::errors::chain(&e)));
        boots.push(booted.boot_time);
        vmm_setup.push(Duration::from_micros(booted.vm.setup_us));
    }
    summary("cold boot -> guest-init ready", boots);
    summary("  of which VMM setup (spawn excluded)", vmm_setup);

    let cache = sbxrun_runner::assets::cache_dir();
    let config = |warm| PoolConfig {
        cache: cache.clone(),
        scratch: scratch.path().join("pool"),
        shape: shape.clone(),
        warm,
        console_dir: None,
    };
    let pool =
        Pool::open(config(0)).unwrap_or_else(|e| panic!("{}", sbxrun_runner::errors::chain(&e)));
    let mut restores = Vec::new();
    let mut restore_setup = Vec::new();
    let mut second_pings = Vec::new();
    for i in 0..knob("SBXRUN_BENCH_RESTORES", 30) {
        let mut lease = pool.acquire().expect("restore");
        restores.push(lease.restore_time);
        restore_setup.push(Duration::from_micros(lease.vm.setup_us));
        // The first ping after a restore also pays for faulting in every
        // guest page it touches; the second shows the guest's own cost.
        let t = Instant::now();
        session::ping(&mut lease.vm, 1_000_000 + i as u64, Duration::from_secs(30))
            .expect("second ping");
        second_pings.push(t.elapsed());
    }
    summary("restore -> guest-init pong", restores);
    summary("  of which VMM setup (spawn excluded)", restore_setup);
    summary("  a second ping in the same VM", second_pings);

    // A snapshot of this bench's own, restored while fresh and once aged:
    // the guest's first reply must not depend on how old its snapshot is.
    let age = Duration::from_secs(knob("SBXRUN_BENCH_AGE_S", 120) as u64);
    let aged_restores = knob("SBXRUN_BENCH_AGED_RESTORES", 10);
    let own_pool = Pool::open(PoolConfig {
        cache: scratch.path().join("own-cache"),
        ..config(0)
    })
    .unwrap_or_else(|e| panic!("{}", sbxrun_runner::errors::chain(&e)));
    let made = Instant::now();
    let own_snapshot = own_pool.snapshot().meta.clone();
    let restore_times = |n: usize| -> Vec<Duration> {
        (0..n)
            .map(|_| own_pool.acquire().expect("restore").restore_time)
            .collect()
    };
    let fresh = restore_times(aged_restores);
    let fresh_age = made.elapsed();
    std::thread::sleep(age.saturating_sub(made.elapsed()));
    let aged_at = made.elapsed();
    let aged = restore_times(aged_restores);
    summary(
        &format!(
            "restore -> pong, snapshot <{} s old",
            fresh_age.as_secs() + 1
        ),
        fresh,
    );
    summary(
        &format!("restore -> pong, snapshot {} s old", aged_at.as_secs()),
        aged,
    );
    drop(own_pool);

    let mut lease = pool.acquire().expect("restore");
    let mut trues = Vec::new();
    for _ in 0..5 {
        trues.push(run(&mut lease, "true", User::Unprivileged).0);
    }
    summary("`true` in an already restored VM", trues);
    drop(lease);

    let warm_pool = Pool::open(config(2)).expect("pool");
    std::thread::sleep(Duration::from_secs(2));
    let execs = knob("SBXRUN_BENCH_EXECS", 200);
    let mut exec_true = Vec::new();
    let started = Instant::now();
    for _ in 0..execs {
        let t = Instant::now();
        let mut lease = warm_pool.acquire().expect("acquire");
        run(&mut lease, "true", User::Unprivileged);
        drop(lease);
        exec_true.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    summary("exec `true` via warm pool (acquire+run)", exec_true);
    println!();
    println!(
        "sequential exec `true`: {execs} in {:.1} s = {:.2} steps/s",
        elapsed.as_secs_f64(),
        execs as f64 / elapsed.as_secs_f64()
    );
    drop(warm_pool);
    println!(
        "snapshot create (pause, save state, write memory): {} ms, after a cold boot of {} ms",
        own_snapshot.snapshot_ms, own_snapshot.boot_ms
    );

    let mb = knob("SBXRUN_BENCH_STREAM_MB", 4);
    let mut lease = pool.acquire().expect("restore");
    let (wall, bytes) = run(
        &mut lease,
        &format!("head -c {} /dev/zero", mb << 20),
        User::Unprivileged,
    );
    println!(
        "stdout guest->host: {bytes} bytes in {:.2} s = {:.3} MB/s",
        wall.as_secs_f64(),
        bytes as f64 / 1e6 / wall.as_secs_f64()
    );
    let (wall, _) = run(
        &mut lease,
        &format!("dd if=/dev/vdb of=/dev/null bs=1M count={mb} 2>/dev/null"),
        User::Root,
    );
    println!(
        "virtio-blk sequential read: {mb} MiB in {:.2} s = {:.3} MB/s",
        wall.as_secs_f64(),
        (mb << 20) as f64 / 1e6 / wall.as_secs_f64()
    );
    drop(lease);

    // Idle: restored and answered a ping, nothing run since.
    let one = pool.acquire().expect("restore");
    let (relay, vmm) = vm_pss_kib(one.vm.pid());
    println!(
        "PSS of one idle restored VM: relay {relay} KiB + VMM {vmm} KiB = {} KiB ({} processes)",
        relay + vmm,
        process_tree(one.vm.pid()).len()
    );
    drop(one);
    let n = knob("SBXRUN_BENCH_PSS_VMS", 50);
    let many: Vec<LeasedVm> = (0..n).map(|_| pool.acquire().expect("restore")).collect();
    let (relays, vmms) = many
        .iter()
        .map(|l| vm_pss_kib(l.vm.pid()))
        .fold((0, 0), |(a, b), (r, v)| (a + r, b + v));
    let each = |kib: u64| kib / n.max(1) as u64;
    println!(
        "PSS of {n} idle restored VMs: {} KiB total; each: relay {} KiB + VMM {} KiB",
        relays + vmms,
        each(relays),
        each(vmms)
    );
}
