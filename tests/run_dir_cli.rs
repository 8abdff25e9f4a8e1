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
