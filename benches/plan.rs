//! Validate + plan a generated 10,000-step job (fan-out, deep chains,
//! matrices) from YAML and from KDL; prints timings and peak memory.
//! Run: `cargo bench --bench plan`. Asserts nothing.

use std::time::{Duration, Instant};

use sbxrun_runner::manifest::{load_source, parse_tree, SourceFile, Syntax};
use sbxrun_runner::plan::{Plan, Selection};

const CHAINS: usize = 40;
const CHAIN_LEN: usize = 200;
const FANOUT: usize = 1_998;
const RUNS: usize = 7;

/// How one syntax writes each kind of generated step.
struct Templates {
    root: &'static str,
    chain: fn(&str, &str) -> String,
    fan: fn(usize) -> String,
    sink: fn(&[String]) -> String,
}

/// 1 root + 40 chains of 200 + 1,998 matrix steps (3 instances each) + 1 sink.
fn generate(t: &Templates) -> String {
    let mut s = String::from(t.root);
    for c in 0..CHAINS {
        for i in 0..CHAIN_LEN {
            let prev = if i == 0 {
                "root".to_owned()
            } else {
                format!("c{c}-{}", i - 1)
            };
            s.push_str(&(t.chain)(&format!("c{c}-{i}"), &prev));
        }
    }
    for f in 0..FANOUT {
        s.push_str(&(t.fan)(f));
    }
    let ends: Vec<String> = (0..CHAINS)
        .map(|c| format!("c{c}-{}", CHAIN_LEN - 1))
        .collect();
    s.push_str(&(t.sink)(&ends));
    s
}

const YAML: Templates = Templates {
    root: "name: bench\nsteps:\n  root:\n    run: echo root\n    outputs: [out/]\n",
    chain: |id, prev| {
        format!("  {id}:\n    inputs: [{{ step: {prev}, to: in }}]\n    run: cp -r in out\n    outputs: [out/]\n    timeout: 1m\n")
    },
    fan: |f| {
        format!("  f{f}:\n    needs: [root]\n    matrix: {{ case: [a, b, c] }}\n    run: echo ${{{{ matrix.case }}}}\n    env: {{ N: \"{f}\" }}\n")
    },
    sink: |ends| {
        format!(
            "  sink:\n    needs: [{}]\n    run: echo done\n",
            ends.join(", ")
        )
    },
};

const KDL: Templates = Templates {
    root: "name bench\nstep root {\n    run \"echo root\"\n    output \"out/\"\n}\n",
    chain: |id, prev| {
        format!("step {id} {{\n    input step={prev} to=in\n    run \"cp -r in out\"\n    output \"out/\"\n    timeout \"1m\"\n}}\n")
    },
    fan: |f| {
        format!("step f{f} {{\n    needs root\n    matrix {{\n        case a b c\n    }}\n    run \"echo ${{{{ matrix.case }}}}\"\n    env N=\"{f}\"\n}}\n")
    },
    sink: |ends| {
        format!(
            "step sink {{\n    needs {}\n    run \"echo done\"\n}}\n",
            ends.join(" ")
        )
    },
};

/// Peak resident memory since the last reset, in KiB (Linux).
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak() {
    // "5" resets the peak RSS counter (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn current_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Row {
    name: &'static str,
    times: Vec<Duration>,
    /// Median of the syntax-only phase (text → tree), and of planning.
    tree: Duration,
    plan: Duration,
    peak_delta_kib: Option<u64>,
    steps: usize,
    instances: usize,
}

fn measure(name: &'static str, text: &str, syntax: Syntax) -> Row {
    let mut times = Vec::new();
    let mut peak_delta_kib = None;
    let mut steps = 0;
    let mut instances = 0;
    let mut tree = Vec::new();
    let mut plan_times = Vec::new();
    for run in 0..RUNS {
        let src = SourceFile::new("bench", text.to_owned(), ".".into(), syntax);
        let t = Instant::now();
        let _ = parse_tree(&src);
        tree.push(t.elapsed());
        reset_peak();
        let before = current_kib();
        let start = Instant::now();
        let job = match load_source(src) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        };
        let t = Instant::now();
        let plan = match Plan::new(&job, &Selection::All) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        };
        plan_times.push(t.elapsed());
        times.push(start.elapsed());
        if run == 0 {
            peak_delta_kib = peak_kib().zip(before).map(|(p, b)| p.saturating_sub(b));
        }
        steps = job.steps.len();
        instances = plan.len();
    }
    times.sort();
    tree.sort();
    plan_times.sort();
    Row {
        name,
        times,
        tree: tree[tree.len() / 2],
        plan: plan_times[plan_times.len() / 2],
        peak_delta_kib,
        steps,
        instances,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Each syntax is measured in a fresh child process (`plan yaml`,
/// `plan kdl`), so the peak-memory figure of one is not hidden by memory
/// the other already made the allocator keep.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().skip(1).find(|a| *a == "yaml" || *a == "kdl");
    if let Some(which) = only {
        let row = if which == "yaml" {
            measure("yaml", &generate(&YAML), Syntax::Yaml)
        } else {
            measure("kdl", &generate(&KDL), Syntax::Kdl)
        };
        print_row(&row);
        return;
    }
    println!(
        "validate + plan of a generated job, {RUNS} runs each ({} KiB YAML, {} KiB KDL)",
        generate(&YAML).len() / 1024,
        generate(&KDL).len() / 1024
    );
    println!("min..max: load + validate + plan; syntax: text -> tree alone; plan: Plan::new alone (medians);");
    println!("peak: growth of peak RSS during the first run");
    println!(
        "{:<6} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "input",
        "steps",
        "instances",
        "min ms",
        "median ms",
        "p90 ms",
        "max ms",
        "syntax ms",
        "plan ms",
        "peak MiB"
    );
    let exe = args.first().cloned().unwrap_or_default();
    for which in ["yaml", "kdl"] {
        match std::process::Command::new(&exe).arg(which).output() {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => eprintln!("{which}: {e}"),
        }
    }
}

fn print_row(r: &Row) {
    let p90 = r.times[(r.times.len() * 9 / 10).min(r.times.len() - 1)];
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let peak = r
        .peak_delta_kib
        .map_or("n/a".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!(
        "{:<6} {:>7} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
        r.name,
        r.steps,
        r.instances,
        ms(r.times[0]),
        ms(r.times[r.times.len() / 2]),
        ms(p90),
        ms(r.times[r.times.len() - 1]),
        ms(r.tree),
        ms(r.plan),
        peak
    );
}
