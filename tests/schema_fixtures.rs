//! The job schema against the loader: a JSON Schema validator rejects every
//! invalid fixture whose fault a schema can express, and the fixtures it
//! cannot reject are listed below with the reason, a list checked both
//! ways so it stays honest. The schema never rejects what `validate`
//! accepts: the examples, the valid fixtures, and the cases where
//! `defaults` and merge keys decide.

mod common;

use std::path::Path;

use common::manifests;
use sbxrun_runner::manifest::{self, parse_tree, SourceFile, Syntax, JOB_SCHEMA_ID};
use sbxrun_runner::report::{report_schema, REPORT_SCHEMA_ID};

/// Invalid fixtures a JSON Schema cannot reject, and why.
const CANNOT_EXPRESS: &[(&str, &str)] = &[
    // Not a document: the text does not parse, so there is nothing to
    // validate (an editor's parser reports these itself).
    ("syntax-error.kdl", "not parseable"),
    (
        "bare-number-string.kdl",
        "not parseable: `10m` is no KDL value",
    ),
    ("yaml-syntax-error.yaml", "not parseable"),
    ("yaml-tab-indent.yaml", "not parseable"),
    (
        "unknown-alias.yaml",
        "not parseable: an alias is resolved by the parser",
    ),
    (
        "merge-key-not-a-map.yaml",
        "not parseable: merge keys are resolved by the parser",
    ),
    (
        "duplicate-step.yaml",
        "not parseable: a JSON object has no duplicate keys",
    ),
    (
        "duplicate-step.kdl",
        "not parseable: a JSON object has no duplicate keys",
    ),
    (
        "duplicate-field.kdl",
        "not parseable: a JSON object has no duplicate keys",
    ),
    (
        "mixed-node.kdl",
        "not parseable: KDL shape, before there is a tree",
    ),
    (
        "list-with-properties.kdl",
        "not parseable: KDL shape, before there is a tree",
    ),
    (
        "input-with-argument.kdl",
        "not parseable: KDL shape, before there is a tree",
    ),
    (
        "step-without-id.kdl",
        "not parseable: KDL shape, before there is a tree",
    ),
    // The step graph.
    ("cycle.kdl", "a cycle is a property of the whole graph"),
    ("cycle-self.yaml", "names a step: references between keys"),
    (
        "cycle-three.yaml",
        "a cycle is a property of the whole graph",
    ),
    (
        "cycle-via-inputs.yaml",
        "a cycle is a property of the whole graph",
    ),
    ("unknown-needs.yaml", "references another key of `steps`"),
    (
        "unknown-input-step.yaml",
        "references another key of `steps`",
    ),
    (
        "undeclared-output.yaml",
        "compares with the producing step's `outputs`",
    ),
    (
        "undeclared-output.kdl",
        "compares with the producing step's `outputs`",
    ),
    (
        "producer-without-outputs.yaml",
        "compares with the producing step's `outputs`",
    ),
    // Matrix keys in scope and expressions.
    (
        "matrix-key-without-matrix.yaml",
        "compares text with the step's `matrix` keys",
    ),
    (
        "matrix-unknown-key.yaml",
        "compares text with the step's `matrix` keys",
    ),
    (
        "matrix-unknown-key.kdl",
        "compares text with the step's `matrix` keys",
    ),
    (
        "unsupported-expression.yaml",
        "the `${{ }}` grammar in every text field: restating interpolate.rs as a regex would risk flagging scripts that load",
    ),
    (
        "unclosed-expression.yaml",
        "the `${{ }}` grammar in every text field: restating interpolate.rs as a regex would risk flagging scripts that load",
    ),
    (
        "secret-also-in-env.yaml",
        "compares `secrets` with the keys of two `env` maps",
    ),
    // Grading: files and limits that depend on other fields or the disk.
    (
        "stdin-unknown-matrix-key.yaml",
        "compares text with the step's `matrix` keys",
    ),
    (
        "expect-missing-file.yaml",
        "whether a host file exists is not in the document",
    ),
    (
        "memory-limit-above-vm.yaml",
        "compares two sizes written as text, `limits.memory` and `resources.memory`",
    ),
    (
        "memory-limit-above-default-vm.kdl",
        "compares a size written as text with the built-in VM size",
    ),
    (
        "cpu-time-too-short.yaml",
        "a pattern sees a duration's text, not its length",
    ),
    // Magnitudes written as text.
    (
        "timeout-out-of-range.yaml",
        "a pattern sees a duration's text, not its length",
    ),
    (
        "memory-out-of-range.yaml",
        "a pattern sees a size's text, not its bytes",
    ),
    (
        "size-out-of-range.kdl",
        "a pattern sees a size's text, not its bytes",
    ),
    // The file system and other parsers.
    ("host-input-missing.yaml", "the file system"),
    ("host-input-missing-for-an-instance.yaml", "the file system"),
    (
        "host-input-escapes.yaml",
        "the file system: `..` may stay inside after symlinks",
    ),
    ("image-not-ext4.yaml", "the file system"),
    ("image-oci-layout-missing.yaml", "the file system"),
    (
        "image-bad-reference.yaml",
        "the container reference grammar of sbxrun-image, not restated as a regex",
    ),
    ("invalid-glob.yaml", "the glob grammar of globset, not restated as a regex"),
    (
        "egress-host-bits.yaml",
        "CIDR host bits are arithmetic, not text",
    ),
    (
        "egress-bad-port.yaml",
        "the host:port grammar and port range, not restated as a regex",
    ),
    (
        "egress-not-a-host.yaml",
        "the host grammar, not restated as a regex",
    ),
    (
        "egress-not-a-host.kdl",
        "the host grammar, not restated as a regex",
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("schemas").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn job_validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema("job.schema.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// The manifest's tree as JSON, or `None` when it does not parse.
fn tree(text: &str, name: &str, syntax: Syntax) -> Option<serde_json::Value> {
    let dir = root().join("fixtures/manifests/invalid");
    let src = SourceFile::new(name.to_owned(), text.to_owned(), dir, syntax);
    parse_tree(&src).ok().map(|t| t.to_json())
}

fn file_tree(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let syntax = Syntax::from_path(path).unwrap_or_default();
    tree(&text, &path.display().to_string(), syntax)
}

fn schema_errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn the_schema_rejects_every_invalid_fixture_it_can_express() {
    let v = job_validator();
    let mut wrong = Vec::new();
    let mut rejected = 0;
    for path in manifests("fixtures/manifests/invalid") {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let listed = CANNOT_EXPRESS.iter().find(|(n, _)| *n == name);
        let doc = file_tree(&path);
        let rejects = doc.as_ref().is_some_and(|doc| !v.is_valid(doc));
        match (rejects, listed) {
            (true, None) => rejected += 1,
            (false, Some(_)) => {}
            (false, None) if doc.is_none() => {
                wrong.push(format!("{name}: does not parse; list it as not parseable"));
            }
            (false, None) => wrong.push(format!(
                "{name}: the schema accepts it; make the schema reject it, or list why it cannot"
            )),
            (true, Some((_, why))) => wrong.push(format!(
                "{name}: the schema rejects it, yet it is listed as inexpressible ({why})"
            )),
        }
    }
    for (name, _) in CANNOT_EXPRESS {
        if !root()
            .join("fixtures/manifests/invalid")
            .join(name)
            .exists()
        {
            wrong.push(format!("{name}: listed but no such fixture"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(rejected >= 30, "only {rejected} rejected");
}

#[test]
fn examples_and_valid_fixtures_satisfy_the_schema() {
    let v = job_validator();
    let mut all = manifests("examples");
    all.extend(manifests("fixtures/manifests/valid"));
    assert!(all.len() >= 8, "{all:?}");
    for path in all {
        let doc = file_tree(&path).unwrap_or_else(|| panic!("{} parses", path.display()));
        let errors = schema_errors(&v, &doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

/// Both judges on one YAML manifest: (loader accepts, schema accepts).
fn judge(yaml: &str) -> (bool, bool) {
    let dir = root().join("fixtures/manifests/valid");
    let src = SourceFile::new("t.yaml", yaml.into(), dir, Syntax::Yaml);
    let loader = manifest::load_source(src).is_ok();
    let doc = tree(yaml, "t.yaml", Syntax::Yaml).unwrap_or_default();
    (loader, job_validator().is_valid(&doc))
}

#[test]
fn run_and_command_follow_the_loader_through_defaults_and_merge_keys() {
    // (manifest, the loader accepts it)
    let cases = [
        ("name: j\nsteps: { a: { run: make } }", true),
        ("name: j\nsteps: { a: { command: [make] } }", true),
        ("name: j\nsteps: { a: { run: make, command: [make] } }", false),
        ("name: j\nsteps: { a: { run: ~, command: [make] } }", true),
        ("name: j\nsteps: { a: { command: [] } }", false),
        ("name: j\nsteps: { a: { outputs: [o] } }", false),
        // A container image's entrypoint is the command.
        ("name: j\nsteps: { a: { image: 'python:3.12' } }", true),
        ("name: j\ndefaults: { image: 'python:3.12' }\nsteps: { a: {} }", true),
        ("name: j\ndefaults: { image: 'python:3.12' }\nsteps: { a: { image: ~ } }", true),
        ("name: j\ndefaults: { image: 'python:3.12' }\nsteps: { a: { image: default } }", false),
        ("name: j\ndefaults: { image: default }\nsteps: { a: {} }", false),
        ("name: j\ndefaults: { image: default }\nsteps: { a: { image: 'alpine:3' } }", true),
        ("name: j\ndefaults: { image: 'alpine:3' }\nsteps: { a: { image: ./rootfs } }", false),
        ("name: j\nsteps: { a: { image: 'docker://alpine' } }", true),
        // Merge keys bring `run` or `command` in; explicit keys win.
        ("x-base: &b { run: make }\nname: j\nsteps: { a: { <<: *b } }", true),
        ("x-base: &b { run: make }\nname: j\nsteps: { a: { <<: *b, command: [x] } }", false),
        ("x-base: &b { command: [make] }\nname: j\nsteps: { a: { <<: *b, command: [x] } }", true),
        // Inputs: one source; `path` only with `step`.
        ("name: j\nsteps: { a: { run: x, outputs: [o] }, b: { run: x, inputs: [{ step: a, path: o }] } }", true),
        ("name: j\nsteps: { a: { run: x, inputs: [{ host: data }] } }", true),
        ("name: j\nsteps: { a: { run: x, inputs: [{ host: data, path: o }] } }", false),
        ("name: j\nsteps: { a: { run: x, outputs: [o] }, b: { run: x, inputs: [{ step: a, host: data }] } }", false),
        ("name: j\nsteps: { a: { run: x, inputs: [{ to: d }] } }", false),
        // No caching with public egress, the step's own or inherited.
        ("name: j\ndefaults: { egress: public }\nsteps: { a: { run: x, cache: true } }", false),
        ("name: j\ndefaults: { egress: { policy: public } }\nsteps: { a: { run: x, cache: { failures: true } } }", false),
        ("name: j\ndefaults: { egress: public }\nsteps: { a: { run: x, cache: true, egress: { on_violation: fail } } }", false),
        ("name: j\ndefaults: { egress: public }\nsteps: { a: { run: x, cache: true, egress: none } }", true),
        ("name: j\ndefaults: { egress: public }\nsteps: { a: { run: x, cache: true, egress: { allow: [pypi.org] } } }", true),
        ("name: j\ndefaults: { egress: public }\nsteps: { a: { run: x, cache: false } }", true),
        ("name: j\nsteps: { a: { run: x, cache: true, egress: public } }", false),
        ("name: j\nsteps: { a: { run: x, cache: true, egress: { policy: public, on_violation: fail } } }", false),
        ("name: j\ndefaults: { cache: true, egress: public }\nsteps: { a: { run: x } }", true),
        // Ranges at their edges.
        ("name: j\nsteps: { a: { run: x, retries: 10 } }", true),
        ("name: j\nsteps: { a: { run: x, retries: 11 } }", false),
        ("name: j\nsteps: { a: { run: x, resources: { vcpus: 64 } } }", true),
        ("name: j\nsteps: { a: { run: x, resources: { vcpus: 100 } } }", false),
        ("name: j\nconcurrency: 1024\nsteps: { a: { run: x } }", true),
        ("name: j\nconcurrency: 1025\nsteps: { a: { run: x } }", false),
        ("name: j\nsteps: { a: { run: x, timeout: ' 1m30s ' } }", true),
        ("name: j\nsteps: { a: { run: x, timeout: 30sec } }", false),
        ("name: j\nsteps: { a: { run: x, resources: { memory: 1G } } }", true),
        ("name: j\nsteps: { a: { run: x, resources: { memory: 512mb } } }", false),
        ("name: '  '\nsteps: { a: { run: x } }", false),
        ("name: j\nsteps: {}", false),
        ("name: j\nsteps: { a: { run: x, outputs: ['a/../../b'] } }", false),
        ("name: j\nsteps: { a: { run: x, outputs: ['a/..b/c', '...'] } }", true),
        ("name: j\nsteps: { a: { run: x, matrix: { k: [1, '2', true] } } }", true),
        ("name: j\nsteps: { a: { run: x, matrix: { k: ['a,b'] } } }", false),
        ("name: j\nsteps: { a: { run: x, matrix: { k: [] } } }", false),
        ("name: j\nsteps: { a: { run: x, secrets: [T, T] } }", false),
        // Numbers and booleans are read as text where text is expected,
        // never where a duration or size is.
        ("name: 2024\ndescription: 1\nsteps: { a: { run: 5, outputs: [7], junit: 8 } }", true),
        ("name: j\nsteps: { a: { command: [sleep, 1], description: true } }", true),
        ("name: j\nsteps: { a: { image: 3 } }", true),
        ("name: j\nsteps: { a: { run: x, timeout: 30 } }", false),
        ("name: j\nsteps: { a: { run: x, resources: { memory: 512 } } }", false),
    ];
    let mut wrong = Vec::new();
    for (yaml, expected) in cases {
        let (loader, schema) = judge(yaml);
        if loader != expected {
            wrong.push(format!("loader {loader}, expected {expected}: {yaml}"));
        }
        if schema != loader {
            wrong.push(format!("schema {schema}, loader {loader}: {yaml}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn schemas_have_their_ids_and_meta_validate() {
    let job = schema("job.schema.json");
    assert_eq!(job["$id"], JOB_SCHEMA_ID);
    assert_eq!(
        schema("report.schema.json")["$id"],
        REPORT_SCHEMA_ID,
        "{:?}",
        report_schema()["$id"]
    );
    let events = schema("events.schema.json");
    assert_eq!(
        events["$id"],
        "https://sbxrun.dev/schemas/events.schema.json"
    );
    for (name, s) in [
        ("job", &job),
        ("report", &schema("report.schema.json")),
        ("events", &events),
    ] {
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        if let Err(e) = jsonschema::meta::validate(s) {
            panic!("{name} schema is not a valid JSON Schema: {e}");
        }
    }
}
