//! Examples and valid fixtures: they load, YAML and KDL twins mean the
//! same job, and the checked-in JSON Schema is what the model generates
//! (tests/schema_fixtures.rs holds manifests against it).

mod common;

use std::path::{Path, PathBuf};

use common::manifests;
use sbxrun_runner::manifest::{self, job_schema, render};
use sbxrun_runner::plan::{Plan, Selection};

const SCHEMA: &str = "schemas/job.schema.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn all_valid() -> Vec<PathBuf> {
    let mut v = manifests("examples");
    v.extend(manifests("fixtures/manifests/valid"));
    v
}

fn load(path: &Path) -> manifest::Job {
    match manifest::load(path) {
        Ok(job) => job,
        Err(e) => panic!("{}", render(&e, true)),
    }
}

#[test]
fn examples_and_valid_fixtures_load_and_plan() {
    let all = all_valid();
    assert!(
        all.len() >= 8,
        "expected examples and fixtures, found {all:?}"
    );
    for path in all {
        let job = load(&path);
        if let Err(e) = Plan::new(&job, &Selection::All) {
            panic!("{}: {}", path.display(), render(&e, true));
        }
    }
}

#[test]
fn every_yaml_example_has_a_kdl_twin_with_an_equal_model() {
    let mut pairs = 0;
    for yaml in all_valid()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let kdl = yaml.with_extension("kdl");
        assert!(kdl.exists(), "{} has no KDL twin", yaml.display());
        let (a, b) = (load(&yaml).to_json(), load(&kdl).to_json());
        assert_eq!(a, b, "{} and its KDL twin differ", yaml.display());
        pairs += 1;
    }
    assert!(pairs >= 4);
}

#[test]
fn checked_in_schema_matches_the_model() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&job_schema()).unwrap_or_default()
    );
    let path = root().join(SCHEMA);
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {SCHEMA}: {e}"));
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{SCHEMA} is stale; regenerate with `UPDATE_SCHEMAS=1 cargo test --test manifest_examples`"
    );
}

#[test]
fn schema_rejects_what_the_loader_rejects_by_shape() {
    let text = std::fs::read_to_string(root().join(SCHEMA)).unwrap_or_default();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let validator =
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("bad schema: {e}"));
    let bad = serde_json::json!({ "name": "x", "steps": { "a": { "run": "x", "need": ["b"] } } });
    assert!(!validator.is_valid(&bad));
    let bad_id = serde_json::json!({ "name": "x", "steps": { "A": { "run": "x" } } });
    assert!(!validator.is_valid(&bad_id));
    let ok = serde_json::json!({ "name": "x", "x-anchors": {}, "steps": { "a": { "run": "x" } } });
    assert!(validator.is_valid(&ok));
}
