//! The grading settings end to end on real VMs: `limits.cpu_time` (a
//! spinning step is `tle` with `limit: cpu_time`, a sleeping one with the
//! same limit passes), `limits.memory` (one allocation larger than the VM
//! is `mle` with `limit: memory` where without the limit it fails with
//! ENOMEM; a small one passes), `stdin` fed from the inputs, and `expect`
//! (a right answer passes, a wrong one is `wrong` with its mismatch in
//! report.json, JUnit and the console; cut-off output is `ole`, not a
//! pass). One job, so the VMs share one snapshot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{report, require_kvm, sbxrun_exe, step, text};

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, content).unwrap();
    p
}

// One VM at a time: the guest's CPU time includes what the host takes
// from the vCPU (no steal-time accounting on kvm-pvm hosts), so a loaded
// host inflates it. The CPU limit leaves room for a shell's start (about
// 1.5 s of CPU there) but not for the nap's wall time.
const JOB: &str = r#"name: grading
concurrency: 1
defaults:
  resources: { memory: 256MiB }
  timeout: 2m
steps:
  spin:
    limits: { cpu_time: 8s }
    run: "while :; do :; done"
  nap:
    limits: { cpu_time: 8s }
    run: sleep 15
  hog:
    limits: { memory: 8MiB }
    # One allocation of 300 MB (dd's buffer), more than the whole VM.
    run: dd if=/dev/zero of=/dev/null bs=300M count=1
  unlimited:
    # The same without a memory limit: the kernel refuses it up front
    # (ENOMEM), the plain failure the limit's overcommit rule avoids.
    run: dd if=/dev/zero of=/dev/null bs=300M count=1
  sip:
    limits: { memory: 8MiB }
    run: dd if=/dev/zero of=/dev/null bs=1M count=1
  answer:
    matrix: { case: [right, wrong] }
    inputs: [{ host: cases, to: cases }]
    stdin: cases/${{ matrix.case }}.in
    expect: { stdout: "expected/${{ matrix.case }}.out" }
    run: tr a-z A-Z
  tokens:
    inputs: [{ host: cases, to: cases }]
    stdin: cases/right.in
    expect: { stdout: expected/tokens.out, compare: tokens }
    run: tr a-z A-Z
  nostdin:
    stdin: missing.txt
    run: cat
  flood:
    limits: { output: 1KiB }
    expect: { stdout: expected/flood.out, compare: tokens }
    run: yes | head -c 100000
"#;

#[test]
fn grading_limits_stdin_and_expected_output_on_real_vms() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "cases/right.in", "hello world\nsecond line\n");
    write(d, "cases/wrong.in", "hello there\nsecond line\n");
    // Trailing spaces and a final blank line: equal under `trim`.
    write(d, "expected/right.out", "HELLO WORLD  \nSECOND LINE\n\n");
    write(d, "expected/wrong.out", "HELLO WORLD\nSECOND LINE\n");
    write(d, "expected/tokens.out", "HELLO\nWORLD SECOND\tLINE");
    // Exactly what fits in the output limit: the kept output would match.
    write(d, "expected/flood.out", &"y\n".repeat(512));
    let manifest = write(d, "grading.yaml", JOB);
    let out = d.join("out");
    let run = Command::new(sbxrun_exe())
        .env("SBXRUN_NO_CACHE", "1")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cannot run sbxrun");
    let console = format!("{}{}", text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{console}");
    let r = report(&out);
    let last = |name: &str| {
        let s = step(&r, name);
        let attempts = s["attempts"].as_array().expect("attempts");
        (s.clone(), attempts.last().cloned().expect("an attempt"))
    };

    // CPU time: the spinning step is stopped at its CPU limit, its reason
    // distinct from the wall timeout; sleeping costs no CPU time.
    let (spin, a) = last("spin");
    assert_eq!(spin["verdict"], "tle", "{spin:#}");
    assert_eq!(a["limit"], "cpu_time", "{a:#}");
    let msg = a["message"].as_str().unwrap_or("");
    assert!(msg.starts_with("CPU time limit of 8s exceeded ("), "{msg}");
    let (nap, a) = last("nap");
    assert_eq!(nap["verdict"], "passed", "{nap:#}");
    assert!(a.get("limit").is_none(), "{a:#}");

    // Memory: the single huge allocation reaches the step's limit instead
    // of failing with ENOMEM as a plain error; a small one is fine.
    let (hog, a) = last("hog");
    assert_eq!(hog["verdict"], "mle", "{hog:#}");
    assert_eq!(a["limit"], "memory", "{a:#}");
    let msg = a["message"].as_str().unwrap_or("");
    assert!(msg.starts_with("memory limit of 8MiB exceeded"), "{msg}");
    let (sip, _) = last("sip");
    assert_eq!(sip["verdict"], "passed", "{sip:#}");
    let (unlimited, a) = last("unlimited");
    assert_eq!(unlimited["verdict"], "failed", "{unlimited:#}");
    assert_eq!(a["exit_code"], 1);
    let log = std::fs::read_to_string(out.join("logs/unlimited.log")).unwrap();
    assert!(log.contains("err| dd: out of memory"), "{log}");

    // stdin is fed from the inputs; the right answer passes under `trim`
    // and `tokens`.
    let (right, _) = last("answer[case=right]");
    assert_eq!(right["verdict"], "passed", "{right:#}");
    let log = std::fs::read_to_string(out.join("logs/answer[case=right].log")).unwrap();
    assert!(
        log.contains("out| HELLO WORLD\nout| SECOND LINE\n"),
        "{log}"
    );
    let (tokens, _) = last("tokens");
    assert_eq!(tokens["verdict"], "passed", "{tokens:#}");

    // The wrong answer: verdict, mismatch and message in report.json...
    let (wrong, a) = last("answer[case=wrong]");
    assert_eq!(wrong["verdict"], "wrong", "{wrong:#}");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(a["mismatch"]["compare"], "trim");
    assert_eq!(a["mismatch"]["line"], 1);
    assert_eq!(a["mismatch"]["expected"], "HELLO WORLD");
    assert_eq!(a["mismatch"]["actual"], "HELLO THERE");
    let want = "wrong answer (trim comparison): line 1: expected `HELLO WORLD`, got `HELLO THERE`";
    assert_eq!(a["message"], want);
    // ...in the console's failure line...
    assert!(console.contains(want), "{console}");
    // ...and in JUnit, as a failure of type "wrong" with the text as body.
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    let case = junit
        .split("<testcase ")
        .find(|c| c.contains("answer[case=wrong]"))
        .unwrap_or_else(|| panic!("no testcase: {junit}"));
    assert!(case.contains(r#"type="wrong""#), "{case}");
    assert!(
        case.contains("expected `HELLO WORLD`, got `HELLO THERE`"),
        "{case}"
    );

    // A stdin file that is not there fails the step, without a retry.
    let (nostdin, a) = last("nostdin");
    assert_eq!(nostdin["verdict"], "failed", "{nostdin:#}");
    assert_eq!(nostdin["attempts"].as_array().map(Vec::len), Some(1));
    let msg = a["message"].as_str().unwrap_or("");
    assert!(msg.contains("missing.txt"), "{msg}");

    // Output cut off by its limit is never compared into a pass.
    let (flood, a) = last("flood");
    assert_eq!(flood["verdict"], "ole", "{flood:#}");
    assert_eq!(a["limit"], "output");
}
