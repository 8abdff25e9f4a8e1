//! `sbxrun JOB` end to end on real VMs: a DAG with fan-out/fan-in and
//! artifacts checked by SHA-256, a matrix, allowed failures, skipped
//! dependents, `if: failure()`, secrets masked, timeouts, output limits,
//! fail-fast, a hostile output disk, and SIGINT mid-run. Several checks
//! share one job to keep the number of VMs (each a few seconds of slow
//! guest work here) small.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{report, require_kvm, sbxrun_exe, step, text};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Every job here uses this VM size, so they share one snapshot.
const SHAPE: &str = "defaults:\n  resources: { memory: 256MiB }\n";

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, content).unwrap();
    p
}

fn run_job(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    require_kvm();
    Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("SBX_TEST_TOKEN", "tok-Zq81-secret")
        .output()
        .expect("cannot run sbxrun")
}

/// Builds the shape's snapshot once before tests race to build it.
fn warm_snapshot() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = write(
            dir.path(),
            "warm.yaml",
            format!("name: warm\n{SHAPE}steps:\n  hi:\n    run: \"true\"\n").as_bytes(),
        );
        let out = run_job(&m, &dir.path().join("out"), &[]);
        assert!(
            out.status.success(),
            "cannot run a job: {}",
            text(&out.stderr)
        );
    });
}

fn verdict(report: &Value, name: &str) -> String {
    step(report, name)["verdict"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The `--log-format json` lines of a run: all on stdout, each valid
/// against the checked-in events schema, timestamps never going back.
fn json_events(o: &Output) -> Vec<Value> {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/events.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("events schema compiles");
    let stderr = text(&o.stderr);
    assert!(
        !stderr.lines().any(|l| l.starts_with('{')),
        "JSON events belong on stdout only: {stderr}"
    );
    let mut last = String::new();
    text(&o.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
            let at = v["timestamp"].as_str().unwrap().to_owned();
            assert!(at >= last, "timestamps went back: {last} then {at}");
            last = at;
            v
        })
        .collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Parses junit.xml with a real consumer (python junitparser), returning
/// `name verdict` lines.
fn junit_cases(out: &Path) -> Vec<String> {
    let has = Command::new("python3")
        .args(["-c", "import junitparser"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        let pip = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "junitparser"])
            .status()
            .expect("python3 is needed to validate JUnit output");
        assert!(pip.success(), "cannot install junitparser");
    }
    let script = r#"
import sys
from junitparser import JUnitXml, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    for case in suite:
        kinds = [type(r).__name__.lower() + ":" + (r.type or "") for r in case.result]
        print(case.name, ",".join(kinds) or "passed")
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(out.join("junit.xml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "junitparser: {}", text(&o.stderr));
    text(&o.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn run_dag_with_artifacts_matrix_failures_skips_and_reports() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let words = b"alpha\nbeta\n";
    write(dir.path(), "data/words.txt", words);
    let manifest = format!(
        r#"name: dag
concurrency: 4
{SHAPE}steps:
  split:
    inputs: [{{ host: data, to: data }}]
    run: |
      mkdir -p parts
      head -n 1 data/words.txt > parts/a
      tail -n 1 data/words.txt > parts/b
    outputs: [parts/]
  left:
    inputs: [{{ step: split, path: parts/a }}]
    run: mkdir -p out && cat parts/a > out/left
    outputs: [out/left]
  right:
    inputs: [{{ step: split, to: in }}]
    run: |
      mkdir -p out
      cat in/parts/b > out/right
      printf '<testsuite name="r"><testcase name="inner-ok"/><testcase name="inner-bad"><failure message="nope" type="assert"/></testcase></testsuite>' > junit.xml
    outputs: [out/right]
    junit: junit.xml
  merge:
    inputs: [{{ step: left }}, {{ step: right }}]
    run: cat out/left out/right > final.txt
    outputs: [final.txt]
  mat:
    matrix: {{ case: [x, y] }}
    run: echo "${{{{ matrix.case }}}} token=$SBX_TEST_TOKEN" > m.txt; cat m.txt
    secrets: [SBX_TEST_TOKEN]
    outputs: [m.txt]
  flaky:
    allow_failure: true
    run: echo flaky-out; exit 3
  after-flaky:
    needs: [flaky]
    run: echo ran
  broken:
    run: echo "bad things" >&2; exit 1
  dependent:
    needs: [broken]
    run: echo never
  cleanup:
    needs: [broken]
    if: failure()
    run: echo cleaning
"#
    );
    let m = write(dir.path(), "dag.yaml", manifest.as_bytes());
    let out = dir.path().join("out");
    let o = run_job(&m, &out, &["--log-format", "json", "--verbose"]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    let events = json_events(&o);
    let r = report(&out);
    assert_eq!(r["status"], "failed");
    for (name, want) in [
        ("split", "passed"),
        ("left", "passed"),
        ("right", "passed"),
        ("merge", "passed"),
        ("mat[case=x]", "passed"),
        ("mat[case=y]", "passed"),
        ("flaky", "failed"),
        ("after-flaky", "passed"),
        ("broken", "failed"),
        ("dependent", "skipped"),
        ("cleanup", "passed"),
    ] {
        assert_eq!(verdict(&r, name), want, "{name}: {:#}", step(&r, name));
    }
    assert_eq!(step(&r, "flaky")["exit_code"], 3);
    assert_eq!(
        step(&r, "dependent")["message"],
        "dependency `broken` failed"
    );

    // Artifacts: the host file went through split → left/right → merge.
    let final_txt = std::fs::read(out.join("artifacts/merge/final.txt")).unwrap();
    assert_eq!(final_txt, words);
    let merge = step(&r, "merge");
    assert_eq!(merge["artifacts"][0]["path"], "final.txt");
    assert_eq!(merge["artifacts"][0]["sha256"], sha(words));
    assert_eq!(merge["artifacts"][0]["size"], words.len());
    let split = step(&r, "split");
    let paths: Vec<&str> = split["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["parts/a", "parts/b"]);
    assert_eq!(split["artifacts"][0]["sha256"], sha(b"alpha\n"));
    let t = &merge["timings"];
    assert!(t["run_ms"].as_f64().unwrap() > 0.0 && t["vm_acquire_ms"].as_f64().unwrap() > 0.0);

    // Matrix outputs stay apart; the secret never reaches logs or reports.
    let mx = std::fs::read_to_string(out.join("artifacts/mat[case=x]/m.txt")).unwrap();
    assert_eq!(
        mx, "x token=tok-Zq81-secret\n",
        "artifacts are the step's own data"
    );
    let log = std::fs::read_to_string(out.join("logs/mat[case=x].log")).unwrap();
    assert_eq!(log, "out| x token=***\n");
    for f in ["report.json", "junit.xml", "logs/mat[case=y].log"] {
        let body = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(!body.contains("tok-Zq81"), "{f} leaks the secret");
    }
    assert!(!stderr.contains("tok-Zq81"));
    assert!(!text(&o.stdout).contains("tok-Zq81"));
    assert!(out.join("logs/broken.console").is_file());

    // The JSON event stream: one run on stdout, in order, every line
    // valid against schemas/events.schema.json (checked in json_events).
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run-started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"summary"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "step-finished").count(), 11);
    let find = |kind: &str, step: &str| {
        events
            .iter()
            .find(|e| e["event"] == kind && e["step"] == step)
            .unwrap_or_else(|| panic!("no {kind} event for {step}: {kinds:?}"))
    };
    let mat = find("finished", "mat[case=y]");
    assert_eq!(mat["id"], "mat");
    assert_eq!(mat["matrix"]["case"], "y");
    assert_eq!(mat["verdict"], "passed");
    assert_eq!(mat["exit_code"], 0);
    assert!(mat["duration_ms"].as_f64().unwrap() > 0.0, "{mat}");
    assert_eq!(find("finished", "flaky")["exit_code"], 3);
    let skipped = find("step-finished", "dependent");
    assert_eq!(skipped["verdict"], "skipped");
    assert_eq!(skipped["attempts"], 0);
    assert_eq!(skipped["reason"], "dependency `broken` failed");
    let said = find("output", "broken");
    assert_eq!(
        (&said["stream"], &said["line"]),
        (&"stderr".into(), &"bad things".into())
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["verdicts"]["skipped"], 1);
    assert_eq!(summary["run_dir"], out.display().to_string());

    // JUnit, as a real consumer reads it.
    let cases = junit_cases(&out);
    let find = |n: &str| {
        cases
            .iter()
            .find(|c| c.rsplit_once(' ').map(|(name, _)| name) == Some(n))
            .unwrap_or_else(|| panic!("no testcase {n} in {cases:?}"))
            .clone()
    };
    assert_eq!(find("merge"), "merge passed");
    assert_eq!(find("broken"), "broken failure:failed");
    assert_eq!(find("dependent"), "dependent skipped:skipped");
    assert_eq!(
        find("right / inner-bad"),
        "right / inner-bad failure:assert"
    );
    assert_eq!(find("right / inner-ok"), "right / inner-ok passed");
    assert_eq!(cases.len(), 13, "{cases:?}");
}

#[test]
fn run_timeout_output_limit_hostile_disk_and_fail_fast() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    // A hand-made archive a compromised guest could write: parent escapes,
    // an absolute path, a symlink to /etc.
    let mut evil = Vec::new();
    for (name, kind, link) in [
        ("out/../../escape", tar::EntryType::Regular, ""),
        ("/tmp/sbxrun-absolute", tar::EntryType::Regular, ""),
        ("out/etc", tar::EntryType::Symlink, "/etc"),
    ] {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(if link.is_empty() { 4 } else { 0 });
        h.set_cksum();
        evil.extend_from_slice(h.as_bytes());
        if link.is_empty() {
            evil.extend_from_slice(b"pwn!");
            evil.resize(evil.len().div_ceil(512) * 512, 0);
        }
    }
    evil.extend_from_slice(&[0u8; 1024]);
    write(dir.path(), "evil/evil.tar", &evil);
    let manifest = format!(
        r#"name: limits
concurrency: 3
fail_fast: true
{SHAPE}steps:
  slow:
    timeout: 3s
    run: sleep 60
  loud:
    limits: {{ output: 1KiB }}
    run: while true; do echo 0123456789abcdef; done
  evil:
    user: root
    inputs: [{{ host: evil }}]
    run: |
      echo first-out
      echo then-err >&2
      dd if=evil.tar of=/dev/vdc conv=fsync 2>/dev/null
      echo last-out
    outputs: [out/]
  later:
    run: echo too late
"#
    );
    let m = write(dir.path(), "limits.yaml", manifest.as_bytes());
    let out = dir.path().join("run/out");
    let o = run_job(&m, &out, &[]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    let r = report(&out);
    assert_eq!(verdict(&r, "slow"), "tle", "{:#}", step(&r, "slow"));
    assert_eq!(verdict(&r, "loud"), "ole", "{:#}", step(&r, "loud"));
    assert_eq!(verdict(&r, "evil"), "failed", "{:#}", step(&r, "evil"));
    let msg = step(&r, "evil")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(msg.contains("output disk rejected"), "{msg}");
    assert!(step(&r, "evil")["artifacts"].as_array().unwrap().is_empty());
    assert!(!dir.path().join("escape").exists() && !dir.path().join("run/escape").exists());
    assert!(!Path::new("/tmp/sbxrun-absolute").exists());
    assert!(!out.join("artifacts/evil").exists());
    // The failure's tail keeps stdout and stderr in the order they came.
    let tail: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("evil | "))
        .collect();
    assert_eq!(tail, ["first-out", "then-err", "last-out"], "{stderr}");
    // fail-fast: the step that never got a slot is cancelled.
    assert_eq!(verdict(&r, "later"), "cancelled");
    assert!(stderr.contains("fail-fast"), "{stderr}");
    let log = std::fs::read_to_string(out.join("logs/loud.log")).unwrap();
    assert!(
        log.len() < 4096,
        "output was not capped: {} bytes",
        log.len()
    );
    assert!(log.contains("output limit of 1024 bytes exceeded"));
    let cases = junit_cases(&out);
    assert!(cases.contains(&"slow failure:TLE".to_owned()), "{cases:?}");
    assert!(cases.contains(&"loud failure:OLE".to_owned()), "{cases:?}");
}

/// Direct children of `pid` whose command line mentions `__vmm`.
fn vmm_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("__vmm") {
            out.push(p);
        }
    }
    out
}

#[test]
fn run_sigint_mid_run_writes_reports_and_exits_130() {
    warm_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let manifest =
        format!("name: stop\n{SHAPE}steps:\n  a:\n    run: sleep 120\n  b:\n    run: sleep 120\n  c:\n    needs: [a]\n    run: \"true\"\n");
    let m = write(dir.path(), "stop.yaml", manifest.as_bytes());
    let out = dir.path().join("out");
    let mut child = Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .arg(&m)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until both steps' VMs run.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut vmms = Vec::new();
    while Instant::now() < deadline {
        vmms = vmm_children(pid);
        if vmms.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(vmms.len() >= 2, "the steps' VMs never started");
    std::thread::sleep(Duration::from_secs(3));
    vmms = vmm_children(pid);
    let rc = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sbxrun did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    let r = report(&out);
    assert_eq!(r["status"], "interrupted");
    assert_eq!(r["exit_code"], 130);
    for name in ["a", "b", "c"] {
        assert_eq!(verdict(&r, name), "cancelled", "{name}");
    }
    assert!(out.join("junit.xml").is_file());
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<u32> = vmms
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(left.is_empty(), "VMM processes left behind: {left:?}");
}
