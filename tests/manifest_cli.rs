//! `sbxrun validate`, `sbxrun graph` and `sbxrun schema` as a user runs them.

use std::process::{Command, Output};

fn sbxrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbxrun"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running sbxrun: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_exits_zero_for_a_valid_job() {
    let out = sbxrun(&["validate", "examples/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "examples/pipeline.yaml: ok: job `word-count`, 4 steps, 4 instances\n"
    );
}

#[test]
fn validate_exits_two_with_a_located_diagnostic() {
    let out = sbxrun(&[
        "validate",
        "fixtures/manifests/invalid/unknown-field-need.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("[fixtures/manifests/invalid/unknown-field-need.yaml:6:5]"),
        "{err}"
    );
    assert!(err.contains("did you mean `needs`?"), "{err}");
}

#[test]
fn validate_of_a_missing_file_exits_two() {
    let out = sbxrun(&["validate", "no/such/job.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("failed to read manifest no/such/job.yaml"));
}

#[test]
fn graph_prints_each_format() {
    let out = sbxrun(&["graph", "examples/matrix.kdl"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("job checksums: 8 instances, 3 levels\n"));
    let dot = text(&sbxrun(&["graph", "examples/pipeline.yaml", "--format", "dot"]).stdout);
    assert!(dot.contains("\"split\" -> \"count-lines\";"), "{dot}");
    let mermaid = text(&sbxrun(&["graph", "examples/pipeline.yaml", "--format", "mermaid"]).stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
}

#[test]
fn graph_only_keeps_the_step_and_its_dependencies() {
    let out = sbxrun(&["graph", "examples/pipeline.yaml", "--only", "count-words"]);
    assert_eq!(
        text(&out.stdout),
        "job word-count: 2 instances, 2 levels\nlevel 0:\n  split\nlevel 1:\n  count-words  <- split\n"
    );
    let bad = sbxrun(&["graph", "examples/pipeline.yaml", "--only", "reprot"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("did you mean `report`?"));
}

#[test]
fn bad_usage_exits_two() {
    assert_eq!(
        sbxrun(&["graph", "x.yaml", "--format", "png"])
            .status
            .code(),
        Some(2)
    );
}

/// `sbxrun ARGS` with `input` on standard input.
fn sbxrun_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sbxrun"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_manifest_is_read_from_standard_input_in_either_syntax() {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipeline.yaml"),
    )
    .unwrap()
    // Host inputs are relative to the current directory for `-`.
    .replace("host: data", "host: examples/data");
    let out = sbxrun_with_stdin(&["validate", "-"], &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("<stdin>: ok: job `word-count`, 4 steps"),
        "{}",
        text(&out.stdout)
    );

    let kdl = "name \"k\"\nstep \"hi\" {\n    run \"echo hi\"\n}\n";
    let out = sbxrun_with_stdin(&["validate", "-", "--syntax", "kdl"], kdl);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = sbxrun_with_stdin(&["graph", "-", "--syntax", "kdl"], kdl);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hi"));

    // Diagnostics name the stream and the line.
    let out = sbxrun_with_stdin(
        &["validate", "-"],
        "name: x\nsteps:\n  a:\n    runn: make\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<stdin>:4"),
        "{}",
        text(&out.stderr)
    );

    // The nodes of a Slurm run cannot read this process's stdin.
    let out = sbxrun_with_stdin(
        &[
            "run",
            "-",
            "--syntax",
            "kdl",
            "--executor",
            "slurm",
            "-o",
            "/nonexistent/x",
        ],
        kdl,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not `-`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn schema_prints_each_checked_in_schema() {
    for (which, file) in [
        ("job", "schemas/job.schema.json"),
        ("report", "schemas/report.schema.json"),
        ("events", "schemas/events.schema.json"),
    ] {
        let out = sbxrun(&["schema", which]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text(&out.stdout) == on_disk,
            "`sbxrun schema {which}` is not {file}"
        );
    }
    let out = sbxrun(&["schema", "manifest"]);
    assert_eq!(out.status.code(), Some(2));
}
