//! The Slurm executor against a real one-node Slurm (slurmctld, slurmd and
//! munged on this host, started by `scripts/local-slurm.sh` and stopped
//! when the test ends): a DAG with a matrix fan-out and a fan-in (and
//! examples/pipeline.yaml) gives the same artifacts and reports as the
//! local executor; a failure skips `success()` dependents and runs
//! `failure()` ones; fail-fast cancels pending jobs; SIGINT leaves no job
//! queued; a step's job cancelled from outside is an infra fault, retried;
//! `--detach` and `sbxrun report --wait`; `doctor --executor slurm`.
//!
//! One cluster serves every scenario, one after the other, so the scenarios
//! live in one test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{report, require_kvm, sbxrun_exe, step, text, tree};
use serde_json::Value;

const SHAPE: &str = "defaults:\n  resources: { memory: 256MiB }\n  timeout: 1m\n";

/// The local cluster, stopped when dropped (also when a scenario fails).
struct Cluster {
    conf: String,
}

fn script(arg: &str) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-slurm.sh"))
        .arg(arg)
        .output()
        .expect("cannot run scripts/local-slurm.sh")
}

impl Cluster {
    fn start() -> Cluster {
        let o = script("start");
        assert!(
            o.status.success(),
            "cannot start the local Slurm (scripts/test-deps.sh installs it): {}",
            text(&o.stderr)
        );
        let out = text(&o.stdout);
        let conf = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("export SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF in {out:?}"))
            .trim_matches(|c| c == '\'' || c == '"')
            .to_owned();
        Cluster { conf }
    }

    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Our jobs still pending or running.
    fn queued(&self) -> Vec<String> {
        let o = self
            .cmd(Path::new("squeue"))
            .args(["-h", "-t", "pending,running,completing", "-o", "%i %j %T"])
            .output()
            .expect("squeue");
        text(&o.stdout)
            .lines()
            .filter(|l| l.contains("sbxrun:"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = script("stop");
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

fn sbxrun(cluster: &Cluster, manifest: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = cluster.cmd(&sbxrun_exe());
    c.arg("run")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("SBXRUN_NO_CACHE", "1");
    c
}

fn run(cluster: &Cluster, manifest: &Path, out: &Path, extra: &[&str]) -> (Output, Value) {
    let o = sbxrun(cluster, manifest, out, extra)
        .output()
        .expect("cannot run sbxrun");
    let r = report(out);
    (o, r)
}

/// A report without what differs between executors and runs: times, Slurm
/// ids, resource usage (CPU time moves with the load), and VM counts (a
/// local run counts its warm VMs, a Slurm run the VMs its nodes started).
fn comparable(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "timings"
                            | "slurm"
                            | "duration_ms"
                            | "started_at"
                            | "usage"
                            | "vms_started"
                    )
                })
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

fn same_as_local(cluster: &Cluster, manifest: &Path, dir: &Path) {
    let (lo, local) = run(cluster, manifest, &dir.join("local"), &[]);
    assert!(lo.status.success(), "local: {}", text(&lo.stderr));
    let (so, slurm) = run(
        cluster,
        manifest,
        &dir.join("slurm"),
        &["--executor", "slurm"],
    );
    assert!(so.status.success(), "slurm: {}", text(&so.stderr));
    assert_eq!(
        comparable(&local),
        comparable(&slurm),
        "{}",
        manifest.display()
    );
    assert_eq!(
        tree(&dir.join("local/artifacts")),
        tree(&dir.join("slurm/artifacts"))
    );
    for s in slurm["steps"].as_array().unwrap() {
        let a = &s["attempts"][0];
        assert!(
            a["slurm"]["job_id"].as_str().is_some_and(|j| !j.is_empty()),
            "{s:#}"
        );
        assert!(
            !a["slurm"]["node"].as_str().unwrap_or("").is_empty(),
            "{s:#}"
        );
    }
    let junit = std::fs::read_to_string(dir.join("slurm/junit.xml")).unwrap();
    assert!(junit.contains("<testcase"), "{junit}");
}

#[test]
fn the_slurm_executor_runs_jobs_like_the_local_one() {
    require_kvm();
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1. A matrix fan-out and a fan-in, and the pipeline example: the same
    //    reports and artifacts as a local run.
    let dag = write(
        d,
        "dag.yaml",
        &format!(
            "name: dag\n{SHAPE}steps:
  split:
    run: mkdir parts; echo alpha > parts/a; echo beta > parts/b
    outputs: [parts/]
  count:
    matrix: {{ part: [a, b] }}
    inputs: [{{ step: split, path: parts/ }}]
    run: read w < parts/${{{{ matrix.part }}}}; echo \"${{{{ matrix.part }}}}=$w\" > n-${{{{ matrix.part }}}}
    outputs: [\"n-${{{{ matrix.part }}}}\"]
  merge:
    inputs: [{{ step: count }}]
    run: read a < n-a; read b < n-b; echo \"$a $b\" > all
    outputs: [all]
"
        ),
    );
    same_as_local(&cluster, &dag, &d.join("dag"));
    assert_eq!(
        std::fs::read_to_string(d.join("dag/slurm/artifacts/merge/all")).unwrap(),
        "a=alpha b=beta\n"
    );
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipeline.yaml");
    same_as_local(&cluster, &pipeline, &d.join("pipeline"));

    // 2. A failure skips its success() dependents and runs failure() ones.
    let fail = write(
        d,
        "fail.yaml",
        &format!(
            "name: fail\n{SHAPE}steps:
  bad:
    run: echo boom; exit 3
  after-bad:
    needs: [bad]
    run: echo never
  on-failure:
    needs: [bad]
    if: failure()
    run: echo cleaning up
"
        ),
    );
    let (o, r) = run(&cluster, &fail, &d.join("fail"), &["--executor", "slurm"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(step(&r, "bad")["verdict"], "failed");
    assert_eq!(step(&r, "bad")["exit_code"], 3);
    assert_eq!(step(&r, "after-bad")["verdict"], "skipped");
    assert_eq!(step(&r, "after-bad")["message"], "dependency `bad` failed");
    assert_eq!(step(&r, "on-failure")["verdict"], "passed");

    // 3. fail_fast cancels what has not started; nothing stays queued.
    let ff = write(
        d,
        "ff.yaml",
        &format!(
            "name: ff\nfail_fast: true\n{SHAPE}steps:
  bad:
    run: exit 1
  slow:
    run: sleep 6
  later:
    needs: [slow]
    run: echo later
"
        ),
    );
    let (o, r) = run(&cluster, &ff, &d.join("ff"), &["--executor", "slurm"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(step(&r, "later")["verdict"], "cancelled", "{r:#}");
    assert!(cluster.queued().is_empty(), "{:?}", cluster.queued());

    // 4. SIGINT mid-run: every job cancelled, reports written, exit 130.
    let slow = write(
        d,
        "slow.yaml",
        &format!(
            "name: slow\n{SHAPE}steps:
  slow:
    run: sleep 20; echo done > o
    outputs: [o]
    retries: 1
  next:
    inputs: [{{ step: slow }}]
    run: cat o
"
        ),
    );
    let out = d.join("int");
    let child = started(&cluster, &slow, &out);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let r = report(&out);
    assert_eq!(r["status"], "interrupted");
    assert_eq!(step(&r, "slow")["verdict"], "cancelled");
    assert!(cluster.queued().is_empty(), "{:?}", cluster.queued());

    // 5. A step's job cancelled from outside: infra, retried, and its
    //    dependent runs on the retry's outputs.
    let out = d.join("scancel");
    let child = started(&cluster, &slow, &out);
    let jobs: Value =
        serde_json::from_slice(&std::fs::read(out.join(".sbxrun/jobs.json")).unwrap()).unwrap();
    let first = jobs["slow"][0].as_str().unwrap().to_owned();
    let c = cluster
        .cmd(Path::new("scancel"))
        .arg(&first)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", text(&c.stderr));
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = report(&out);
    let attempts = step(&r, "slow")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{r:#}");
    assert_eq!(attempts[0]["verdict"], "infra");
    assert_eq!(attempts[0]["slurm"]["job_id"], first.as_str());
    assert!(attempts[0]["message"]
        .as_str()
        .unwrap()
        .contains("CANCELLED"));
    assert_eq!(attempts[1]["verdict"], "passed");
    assert_ne!(attempts[1]["slurm"]["job_id"], first.as_str());
    assert_eq!(step(&r, "next")["verdict"], "passed");
    assert!(cluster.queued().is_empty(), "{:?}", cluster.queued());

    // 6. --detach returns once submitted; `report --wait` follows the
    //    jobs to the end; `report` alone rebuilds the same outcome.
    let out = d.join("detached");
    let (o, r) = run(&cluster, &fail, &out, &["--executor", "slurm", "--detach"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("report"), "{}", text(&o.stderr));
    assert_eq!(r["status"], "running");
    let follow = |extra: &[&str]| {
        cluster
            .cmd(&sbxrun_exe())
            .arg("report")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = follow(&["--wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let r = report(&out);
    assert_eq!(r["status"], "failed");
    assert_eq!(step(&r, "after-bad")["verdict"], "skipped");
    assert_eq!(step(&r, "on-failure")["verdict"], "passed");
    let o = follow(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(comparable(&report(&out)), comparable(&r));

    // 7. The doctor runs a step on a node through Slurm.
    let o = cluster
        .cmd(&sbxrun_exe())
        .args(["doctor", "--executor", "slurm", "--out"])
        .arg(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).contains("passed on node"),
        "{}",
        text(&o.stdout)
    );
    assert!(cluster.queued().is_empty(), "{:?}", cluster.queued());
}

/// Starts a Slurm run of `manifest` and returns once its `slow` step's
/// first attempt is running on the node.
fn started(cluster: &Cluster, manifest: &Path, out: &Path) -> std::process::Child {
    let child = sbxrun(cluster, manifest, out, &["--executor", "slurm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&out.join(".sbxrun/steps/slow/running-1"));
    child
}

/// Waits (bounded) for a file a step's job writes when its attempt starts.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
