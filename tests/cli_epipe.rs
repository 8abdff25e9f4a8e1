//! Commands whose stdout reader has gone (`sbxrun graph job.yaml | head -1`)
//! stop quietly: no panic message, exit 0.

mod common;

use std::process::{Command, Stdio};

/// Runs `sbxrun ARGS` with stdout a pipe whose read end is already closed,
/// so its first write fails with EPIPE; returns (exit code, stderr).
fn with_closed_stdout(args: &[&str], cache: &std::path::Path) -> (Option<i32>, String) {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let out = Command::new(common::sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .args(args)
        .env("SBXRUN_CACHE_DIR", cache)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run sbxrun");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn commands_exit_quietly_when_stdout_is_closed() {
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cache.path().join("snapshots")).unwrap();
    for args in [
        &["graph", "examples/pipeline.yaml"][..],
        &["graph", "examples/pipeline.yaml", "--format", "mermaid"],
        &["validate", "examples/pipeline.yaml"],
        &["schema", "job"],
        &["schema", "report"],
        &["schema", "events"],
        &["cache", "ls"],
        &["cache", "ls", "--json"],
        &["cache", "clean", "--dry-run"],
    ] {
        let (code, stderr) = with_closed_stdout(args, cache.path());
        assert!(!stderr.contains("panicked"), "sbxrun {args:?}: {stderr}");
        assert_eq!(code, Some(0), "sbxrun {args:?}: {stderr}");
    }
}
