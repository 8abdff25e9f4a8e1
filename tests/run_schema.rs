//! The checked-in report schema is what the report types generate, and a
//! report built from the types validates against it.

use std::path::Path;

use sbxrun_runner::report::json_log::events_schema;
use sbxrun_runner::report::report_schema;

/// Compares `schemas/<file>` with what the types generate (and rewrites it
/// under `UPDATE_SCHEMAS`).
fn check_generated(file: &str, schema: serde_json::Value) {
    let mut generated = serde_json::to_string_pretty(&schema).expect("schema encodes");
    generated.push('\n');
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{file} is stale; regenerate with `UPDATE_SCHEMAS=1 cargo test --test run_schema`"
    );
}

#[test]
fn checked_in_report_schema_matches_the_types() {
    check_generated("schemas/report.schema.json", report_schema());
}

#[test]
fn checked_in_events_schema_matches_the_types() {
    check_generated("schemas/events.schema.json", events_schema());
}

#[test]
fn report_schema_rejects_an_unknown_verdict() {
    let schema = report_schema();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let step = serde_json::json!({
        "name": "a", "step": "a", "verdict": "passed", "allow_failure": false,
        "attempts": [], "artifacts": [], "egress": {"policy": "none", "events": []}, "logs": {},
        "timings": {"queued_ms": 0, "vm_acquire_ms": 0, "inputs_ms": 0,
                    "run_ms": 0, "outputs_ms": 0, "total_ms": 0}
    });
    let mut report = serde_json::json!({
        "version": 1, "job": {"name": "j", "manifest": "j.yaml"},
        "status": "passed", "exit_code": 0, "started_at": "2026-01-01T00:00:00Z",
        "duration_ms": 1.0,
        "host": {"kvm_flavour": "pvm", "cpus": 2, "sbxrun_version": "0.1.0"},
        "steps": [step]
    });
    assert!(validator.is_valid(&report));
    report["steps"][0]["verdict"] = "maybe".into();
    assert!(!validator.is_valid(&report));
}
