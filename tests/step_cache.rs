//! The step cache end to end on real VMs: a DAG run again starts no VM and
//! gives the same artifacts and report; a changed input or env reruns
//! exactly what depends on it; a step with network is not cached unless it
//! says so; a damaged blob is caught and the step reruns; two concurrent
//! runs of one job run each step once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{report, require_kvm, sbxrun_exe, step, text, tree};
use serde_json::Value;

/// The VM size of every job here (and of tests/run_jobs.rs): one snapshot.
const SHAPE: &str = "defaults:\n  resources: { memory: 256MiB }\n  timeout: 1m\n";

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, content).unwrap();
    p
}

fn command(manifest: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Command {
    require_kvm();
    let mut c = Command::new(sbxrun_exe());
    c.arg(manifest)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("SBXRUN_STEP_CACHE_DIR", cache)
        .env_remove("SBXRUN_NO_CACHE");
    c
}

/// Runs the job (it must pass) and returns its report.
fn run(manifest: &Path, out: &Path, cache: &Path, extra: &[&str]) -> (Output, Value) {
    let o = command(manifest, out, cache, extra)
        .output()
        .expect("cannot run sbxrun");
    assert!(
        o.status.success(),
        "run failed: {}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    (o, report(out))
}

/// Builds the shape's snapshot once, before tests race to build it.
fn warm_snapshot() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = write(
            dir.path(),
            "warm.yaml",
            &format!("name: warm\n{SHAPE}steps:\n  hi:\n    run: \"true\"\n"),
        );
        let cache = dir.path().join("cache");
        run(&m, &dir.path().join("out"), &cache, &["--no-cache"]);
    });
}

fn cached(report: &Value, name: &str) -> bool {
    step(report, name)["cached"] == true
}

fn ran_steps(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cached"] != true)
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// What a step's result is, leaving out how long it took and the cache.
fn result(report: &Value, name: &str) -> Value {
    let s = step(report, name);
    serde_json::json!({
        "verdict": s["verdict"], "exit_code": s["exit_code"], "artifacts": s["artifacts"],
        "missing_outputs": s["missing_outputs"], "egress": s["egress"], "usage": s["usage"],
        "logs": s["logs"]["output"], "message": s["message"],
    })
}

fn dag(word: &str) -> String {
    format!(
        "name: cache-dag\n{SHAPE}steps:
  a:
    inputs: [{{ host: in/a.txt }}]
    run: read x < a.txt; echo \"$x\" > a.out; ln -s a.out link; echo made a
    outputs: [a.out, link]
  b:
    env: {{ WORD: {word} }}
    run: echo \"$WORD\" > b.out
    outputs: [b.out]
  c:
    inputs: [{{ step: a }}]
    run: read x < a.out; echo \"$x$x\" > c.out
    outputs: [c.out]
  d:
    inputs: [{{ step: b }}]
    run: read x < b.out; echo \"d:$x\" > d.out
    outputs: [d.out]
"
    )
}

#[test]
fn a_dag_runs_again_from_the_cache_and_reruns_only_what_changed() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    write(d, "in/a.txt", "first\n");
    let job = write(d, "job.yaml", &dag("hello"));

    let (_, first) = run(&job, &d.join("run1"), &cache, &[]);
    assert_eq!(ran_steps(&first).len(), 4);
    for name in ["a", "b", "c", "d"] {
        assert_eq!(step(&first, name)["cache"]["status"], "stored", "{name}");
    }
    assert!(first["vms_started"].as_u64().unwrap() >= 4);

    // Nothing changed: no VM, the same artifacts, logs and results.
    let (out, second) = run(&job, &d.join("run2"), &cache, &[]);
    assert_eq!(second["vms_started"], 0, "{second:#}");
    assert!(ran_steps(&second).is_empty(), "{second:#}");
    assert_eq!(
        tree(&d.join("run1/artifacts")),
        tree(&d.join("run2/artifacts"))
    );
    for name in ["a", "b", "c", "d"] {
        assert_eq!(result(&first, name), result(&second, name), "{name}");
        assert_eq!(
            step(&second, name)["cache"]["key"],
            step(&first, name)["cache"]["key"]
        );
        let log = format!("logs/{name}.log");
        assert_eq!(
            std::fs::read(d.join("run1").join(&log)).unwrap(),
            std::fs::read(d.join("run2").join(&log)).unwrap(),
            "{log}"
        );
    }
    assert!(
        text(&out.stderr).contains("✓ a cached (was "),
        "{}",
        text(&out.stderr)
    );
    let junit = std::fs::read_to_string(d.join("run2/junit.xml")).unwrap();
    assert!(junit.contains("cached=true"), "{junit}");

    // A host input changes: its step and what depends on it rerun.
    write(d, "in/a.txt", "second\n");
    let (_, third) = run(&job, &d.join("run3"), &cache, &["-v"]);
    assert_eq!(ran_steps(&third), vec!["a", "c"]);
    assert_eq!(
        step(&third, "a")["cache"]["changed"],
        serde_json::json!(["inputs"])
    );
    assert_eq!(
        std::fs::read_to_string(d.join("run3/artifacts/c/c.out")).unwrap(),
        "secondsecond\n"
    );

    // One step's env changes: it and its dependent rerun.
    std::fs::write(&job, dag("bye")).unwrap();
    let (_, fourth) = run(&job, &d.join("run4"), &cache, &[]);
    assert_eq!(ran_steps(&fourth), vec!["b", "d"]);
    assert_eq!(
        step(&fourth, "b")["cache"]["changed"],
        serde_json::json!(["env"])
    );
    assert_eq!(
        std::fs::read_to_string(d.join("run4/artifacts/d/d.out")).unwrap(),
        "d:bye\n"
    );

    // --rebuild runs a step again; its outputs are the same bytes, so its
    // dependent still hits.
    let (_, fifth) = run(&job, &d.join("run5"), &cache, &["--rebuild", "b"]);
    assert_eq!(ran_steps(&fifth), vec!["b"]);
    assert_eq!(step(&fifth, "b")["cache"]["reason"], "--rebuild");
}

#[test]
fn a_step_with_network_is_cached_only_when_it_says_so() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let job = write(
        d,
        "net.yaml",
        &format!(
            "name: cache-net\n{SHAPE}steps:
  net:
    egress: {{ allow: [\"127.0.0.1:9\"] }}
    run: echo n > n.out
    outputs: [n.out]
  opted-in:
    egress: {{ allow: [\"127.0.0.1:9\"] }}
    cache: true
    run: echo o > o.out
    outputs: [o.out]
"
        ),
    );
    run(&job, &d.join("run1"), &cache, &[]);
    let (_, second) = run(&job, &d.join("run2"), &cache, &[]);
    assert_eq!(ran_steps(&second), vec!["net"]);
    let net = &step(&second, "net")["cache"];
    assert_eq!(net["status"], "off");
    assert!(
        net["reason"].as_str().unwrap().contains("network"),
        "{net:#}"
    );
    assert!(cached(&second, "opted-in"));
}

#[test]
fn a_damaged_blob_is_caught_and_the_step_runs_again() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let job = write(
        d,
        "job.yaml",
        &format!(
            "name: cache-damage\n{SHAPE}steps:\n  make:\n    run: echo payload-7f3 > p.out\n    outputs: [p.out]\n"
        ),
    );
    let (_, first) = run(&job, &d.join("run1"), &cache, &[]);
    let sha = step(&first, "make")["artifacts"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = cache.join("blobs").join(&sha[..2]).join(&sha);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, "payload-XXX\n").unwrap();

    let (out, second) = run(&job, &d.join("run2"), &cache, &[]);
    assert!(!cached(&second, "make"), "{second:#}");
    let reason = step(&second, "make")["cache"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("damaged"), "{reason}");
    assert!(
        text(&out.stderr).contains("damaged"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("run2/artifacts/make/p.out")).unwrap(),
        "payload-7f3\n"
    );
    assert_eq!(step(&second, "make")["cache"]["status"], "stored");

    // Stored again, whole.
    let (_, third) = run(&job, &d.join("run3"), &cache, &[]);
    assert!(cached(&third, "make"));
    assert_eq!(
        std::fs::read_to_string(d.join("run3/artifacts/make/p.out")).unwrap(),
        "payload-7f3\n"
    );
}

#[test]
fn two_concurrent_runs_of_one_job_run_each_step_once() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let job = write(
        d,
        "job.yaml",
        &format!(
            "name: cache-race\n{SHAPE}steps:
  x:
    run: echo x > x.out
    outputs: [x.out]
  y:
    inputs: [{{ step: x }}]
    run: read v < x.out; echo \"y$v\" > y.out
    outputs: [y.out]
"
        ),
    );
    let children: Vec<_> = ["run1", "run2"]
        .iter()
        .map(|r| {
            command(&job, &d.join(r), &cache, &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("cannot run sbxrun")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let reports = [report(&d.join("run1")), report(&d.join("run2"))];
    for name in ["x", "y"] {
        let ran = reports.iter().filter(|r| !cached(r, name)).count();
        assert_eq!(ran, 1, "`{name}` ran {ran} times");
        for r in &reports {
            assert_eq!(step(r, name)["verdict"], "passed");
        }
    }
    assert_eq!(
        tree(&d.join("run1/artifacts")),
        tree(&d.join("run2/artifacts"))
    );
    let entries = std::fs::read_dir(cache.join("entries")).unwrap().count();
    assert_eq!(entries, 2);
}
