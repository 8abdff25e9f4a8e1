//! `sbxrun run -o DIR` never mixes two runs: a non-empty run directory is
//! refused before any VM starts.

mod common;

use std::process::Command;

#[test]
fn a_non_empty_run_directory_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("artifacts")).unwrap();
    std::fs::write(out.join("report.json"), "{}").unwrap();
    let o = Command::new(common::sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .args(["run", "examples/hello.yaml", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run sbxrun");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    // The old run is untouched.
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), b"{}");
}

#[test]
fn a_job_read_from_standard_input_runs_with_inputs_relative_to_the_current_directory() {
    use std::io::Write;
    common::require_kvm();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("word.txt"), "stdin-job\n").unwrap();
    let out = tmp.path().join("out");
    let mut child = Command::new(common::sbxrun_exe())
        .env("SBXRUN_NO_CACHE", "1")
        .args(["run", "-", "--syntax", "kdl", "--out"])
        .arg(&out)
        .current_dir(tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sbxrun");
    let job = "name \"from-stdin\"\ndefaults {\n    resources memory=\"256MiB\"\n}\nstep \"copy\" {\n    input host=\"word.txt\"\n    run \"read w < word.txt; echo \\\"$w\\\" > got\"\n    output \"got\"\n}\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("artifacts/copy/got")).unwrap(),
        "stdin-job\n"
    );
    // No `file` attribute names a file that does not exist.
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(!junit.contains("file="), "{junit}");
    let report = common::report(&out);
    assert_eq!(report["job"]["manifest"], "-");
}
