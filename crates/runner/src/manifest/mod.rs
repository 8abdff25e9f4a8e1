//! Job manifests: YAML or KDL text → the typed [`Job`], with every problem
//! reported as a diagnostic that points into the file.
//!
//! Pure: reads the manifest (and checks that host input paths exist), never
//! runs anything. Imports nothing else of sbxrun.

mod cache;
mod de;
mod egress;
mod error;
mod interpolate;
mod kdl;
mod model;
mod node;
mod resolve;
mod schema;
mod source;
mod units;
mod validate;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cache::CacheSetting;
pub use de::Spanned;
pub use egress::{Egress, EgressError, EgressRule, EgressSetting, HostPattern, OnViolation};
pub use error::{did_you_mean, render, ManifestError, Problem, ProblemData, Problems};
pub use interpolate::{expressions, substitute, Expr};
pub use model::{
    Compare, Condition, Defaults, EnvName, Expect, Input, InputSource, Job, Limits, MatrixKey,
    Resources, RetryOn, Step, StepId, User,
};
pub use node::Node;
pub use resolve::{ImageRef, Settings};
pub use schema::{job_schema, JOB_SCHEMA_ID};
pub use source::{SourceFile, Span, Syntax};
pub use units::{ByteSize, Duration, UnitError};
pub use validate::{output_covers, MAX_MATRIX_INSTANCES};

/// Reads, parses and validates a manifest file (`.yaml`, `.yml`, `.kdl`).
/// Host input paths are resolved against the file's directory.
pub fn load(path: &Path) -> Result<Job, ManifestError> {
    load_as(path, None)
}

/// [`load`] with the syntax given (`--syntax`) instead of taken from the
/// file name.
pub fn load_as(path: &Path, syntax: Option<Syntax>) -> Result<Job, ManifestError> {
    if path.is_dir() {
        return Err(ManifestError::IsDirectory {
            path: path.to_owned(),
            manifests: manifests_in(path),
        });
    }
    let syntax =
        syntax
            .or_else(|| Syntax::from_path(path))
            .ok_or_else(|| ManifestError::UnknownFormat {
                path: path.to_owned(),
            })?;
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => ".".into(),
    };
    let source = SourceFile::new(path.display().to_string(), text, dir, syntax);
    load_source(source)
}

/// The files directly in `dir` that `load` would read, sorted; unreadable
/// entries are passed over (this only feeds a hint).
fn manifests_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && Syntax::from_path(p).is_some())
        .collect();
    found.sort();
    found
}

/// Parses and validates manifest text already in memory.
pub fn load_source(source: SourceFile) -> Result<Job, ManifestError> {
    let source = Arc::new(source);
    let mut node = parse_tree(&source).map_err(|p| ManifestError::invalid(&source, p))?;
    drop_extension_keys(&mut node);
    if node.kind == node::Kind::Scalar(node::Scalar::Null) {
        let p = Problem::new(
            "manifest::empty",
            "the manifest is empty",
            node.span,
            "nothing here",
        )
        .with_help("a job needs at least `name` and `steps`");
        return Err(ManifestError::invalid(&source, vec![p]));
    }
    let mut job: Job = de::from_node(&node)
        .map_err(|e| ManifestError::invalid(&source, vec![e.into_problem(source.syntax)]))?;
    job.source = Arc::clone(&source);
    normalize(&mut job);
    let mut problems = validate::validate(&job);
    problems.sort_by_key(|p| p.span.offset);
    if problems.is_empty() {
        Ok(job)
    } else {
        Err(ManifestError::invalid(&source, problems))
    }
}

/// The syntax-neutral tree of a manifest, before typing (used to check
/// manifests against the JSON Schema).
pub fn parse_tree(source: &SourceFile) -> Result<Node, Vec<Problem>> {
    match source.syntax {
        Syntax::Yaml => yaml::parse(&source.text).map_err(|p| vec![p]),
        Syntax::Kdl => kdl::parse(&source.text),
    }
}

/// Makes equal what only the syntax made different: a YAML `|` block ends
/// in a newline, a KDL `"""` string does not; the shell does not care.
fn normalize(job: &mut Job) {
    for step in job.steps.values_mut() {
        if let Some(run) = &mut step.run {
            let trimmed = run.value.trim_end_matches('\n').len();
            run.value.truncate(trimmed);
        }
    }
}

/// Top-level keys starting with `x-` are ignored: a place to define YAML
/// anchors that steps merge in with `<<`.
fn drop_extension_keys(root: &mut Node) {
    if let node::Kind::Map(entries) = &mut root.kind {
        entries.retain(|(k, _)| !k.key_text().starts_with("x-"));
    }
}

/// Checks, when a run starts, that every secret the job's steps name is
/// set; `is_set` asks the runner's environment. All missing secrets are
/// reported, each pointing at where it is named.
pub fn check_secrets(job: &Job, is_set: impl Fn(&str) -> bool) -> Result<(), ManifestError> {
    let mut problems = Vec::new();
    for (id, step) in &job.steps {
        for (i, s) in step.secrets.iter().enumerate() {
            if !is_set(s.as_str()) {
                problems.push(
                    Problem::new(
                        "manifest::secret_missing",
                        format!("secret `{s}` is not set in the runner's environment"),
                        s.span,
                        format!("needed by step `{id}`"),
                    )
                    .with_field(format!("steps.{id}.secrets[{i}]"))
                    .with_help(format!("export {s}=... before starting the run")),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ManifestError::invalid(&job.source, problems))
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;
    use miette::Diagnostic;

    #[test]
    fn a_directory_is_refused_naming_the_manifests_in_it() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.kdl", "a.yaml", "notes.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::IsDirectory { .. }), "{err}");
        assert!(err
            .to_string()
            .ends_with("is a directory, not a job manifest"));
        let help = err.help().map(|h| h.to_string()).unwrap_or_default();
        let a = dir.path().join("a.yaml").display().to_string();
        let b = dir.path().join("b.kdl").display().to_string();
        assert_eq!(help, format!("manifests in it: {a}, {b}"));
    }

    #[test]
    fn a_directory_without_manifests_says_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        let help = err.help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains(".yaml, .yml or .kdl"), "{help}");
    }
}
