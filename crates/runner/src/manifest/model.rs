//! The typed job model both syntaxes load into. Field docs become the JSON
//! Schema's descriptions, so they are written for manifest authors.

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cache::CacheSetting;
use super::de::Spanned;
use super::egress::EgressSetting;
use super::schema::{self, MatrixValues, NonBlank, WorkPath};
use super::source::SourceFile;
use super::units::{ByteSize, Duration};
use super::validate::{
    CONCURRENCY_RANGE, OPEN_FILES_RANGE, PIDS_RANGE, RETRIES_RANGE, VCPUS_RANGE,
};

/// A job: a named DAG of steps, each run in its own microVM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "sbxrun job",
    extend("patternProperties" = { "^x-": {} }),
    transform = schema::job_rules
)]
pub struct Job {
    /// The job's name, shown in reports.
    #[schemars(with = "NonBlank")]
    pub name: Spanned<String>,
    /// What the job is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ScalarText>")]
    pub description: Option<String>,
    /// Settings applied to every step that does not set its own.
    #[serde(default, skip_serializing_if = "Defaults::is_empty")]
    pub defaults: Defaults,
    /// Environment variables for every step.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(with = "IndexMap<EnvName, ScalarText>")]
    pub env: IndexMap<EnvName, Spanned<String>>,
    /// Most steps running at once (default: from the host's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = CONCURRENCY_RANGE.0, max = CONCURRENCY_RANGE.1))]
    pub concurrency: Option<Spanned<u32>>,
    /// Cancel the remaining steps as soon as one fails (default: false).
    #[serde(default)]
    pub fail_fast: bool,
    /// The steps, by id (`[a-z0-9_-]+`).
    #[schemars(extend("minProperties" = 1))]
    pub steps: IndexMap<Spanned<StepId>, Step>,
    /// Where the job was read from (not part of the format).
    #[serde(skip)]
    #[schemars(skip)]
    pub source: Arc<SourceFile>,
}

/// Settings applied to every step unless the step sets them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Root image: a name (`default`) or a path to a directory or ext4 file,
    /// relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    /// Time limit per attempt (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Duration>>,
    /// VM size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Network egress policy (default: none) and what a denial does
    /// (default: recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSetting>,
    /// In-guest limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The user steps run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// Retries after a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = RETRIES_RANGE.0, max = RETRIES_RANGE.1))]
    pub retries: Option<Spanned<u32>>,
    /// Whether steps' results are reused by later runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Spanned<CacheSetting>>,
}

impl Defaults {
    fn is_empty(&self) -> bool {
        *self == Defaults::default()
    }
}

/// One step: a script or command run in a fresh microVM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ScalarText>")]
    pub description: Option<String>,
    /// A shell script, run with `/bin/sh -eu`. Exactly one of `run` and
    /// `command` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Spanned<String>>,
    /// A program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub command: Option<Vec<Spanned<String>>>,
    /// Steps that must finish first (inputs from a step imply it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<Spanned<StepId>>,
    /// Files copied into the work dir before the step runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Spanned<Input>>,
    /// Paths or globs under the work dir kept after the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<WorkPath>")]
    pub outputs: Vec<Spanned<String>>,
    /// Fan-out: one instance per combination of values; use the values
    /// as `${{ matrix.KEY }}`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(with = "IndexMap<MatrixKey, MatrixValues>")]
    pub matrix: IndexMap<Spanned<MatrixKey>, Vec<Spanned<String>>>,
    /// Root image (overrides `defaults.image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    /// VM size (overrides `defaults.resources` field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables (added to the job's).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(with = "IndexMap<EnvName, ScalarText>")]
    pub env: IndexMap<EnvName, Spanned<String>>,
    /// Variables taken from the runner's environment and masked in all
    /// output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("uniqueItems" = true))]
    pub secrets: Vec<Spanned<EnvName>>,
    /// Time limit per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Duration>>,
    /// Retries: infrastructure faults are always retried; failures of the
    /// step itself only when listed in `retry_on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = RETRIES_RANGE.0, max = RETRIES_RANGE.1))]
    pub retries: Option<Spanned<u32>>,
    /// Which step outcomes are retried besides infrastructure faults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<RetryOn>,
    /// A failure of this step does not fail the job, and dependents run.
    #[serde(default)]
    pub allow_failure: bool,
    /// The user the step runs as (default: unprivileged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// When the step runs, given how its dependencies ended.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// Network egress policy and what a denial does (each overrides
    /// `defaults.egress` on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSetting>,
    /// A JUnit XML file the step writes, merged into the job's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<WorkPath>")]
    pub junit: Option<Spanned<String>>,
    /// The `classname` of this step's testcase in the job's JUnit report
    /// (default: the step id); takes `${{ matrix.KEY }}`, so a matrix can
    /// group by one of its values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_classname: Option<Spanned<String>>,
    /// In-guest limits (override `defaults.limits` field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// A file in the working directory, usually from `inputs`, fed to the
    /// command's stdin (default: empty stdin); takes `${{ matrix.KEY }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<WorkPath>")]
    pub stdin: Option<Spanned<String>>,
    /// The output the step must print: a step that exits 0 with other
    /// output gets the verdict `wrong`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Spanned<Expect>>,
    /// Whether the step's result is reused by later runs when nothing it
    /// depends on changed (overrides `defaults.cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Spanned<CacheSetting>>,
}

/// One input: a host path, or outputs of another step. Exactly one of
/// `host` and `step` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = schema::input_rules)]
pub struct Input {
    /// A host file or directory, relative to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Spanned<String>>,
    /// A step whose outputs are copied in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Spanned<StepId>>,
    /// With `step`: only this declared output (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// Destination under the work dir (default `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Spanned<String>>,
}

/// Where an input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSource<'a> {
    /// A host path as written (relative to the manifest's directory).
    Host(&'a str),
    /// Outputs of a step: all, or one path.
    Step {
        /// The producing step.
        step: &'a StepId,
        /// The one output taken, if any.
        path: Option<&'a str>,
    },
}

impl Input {
    /// Where the input comes from (validated manifests always have one).
    pub fn source(&self) -> Option<InputSource<'_>> {
        match (&self.host, &self.step) {
            (Some(h), None) => Some(InputSource::Host(h)),
            (None, Some(s)) => Some(InputSource::Step {
                step: s,
                path: self.path.as_deref().map(String::as_str),
            }),
            _ => None,
        }
    }

    /// The destination under the work dir.
    pub fn destination(&self) -> &str {
        self.to.as_deref().map_or(".", String::as_str)
    }
}

/// VM size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = VCPUS_RANGE.0, max = VCPUS_RANGE.1))]
    pub vcpus: Option<Spanned<u32>>,
    /// Guest memory (default 512MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Spanned<ByteSize>>,
    /// Writable disk space in the guest (default 1GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Spanned<ByteSize>>,
}

/// Limits enforced inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most processes at once (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = PIDS_RANGE.0, max = PIDS_RANGE.1))]
    pub pids: Option<Spanned<u32>>,
    /// Stdout and stderr kept; the rest is dropped (default 10MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Spanned<ByteSize>>,
    /// Largest file a process may write (default 1GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<Spanned<ByteSize>>,
    /// Most open files per process (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = OPEN_FILES_RANGE.0, max = OPEN_FILES_RANGE.1))]
    pub open_files: Option<Spanned<u32>>,
    /// CPU time (user + system) of the step's process and the children it
    /// waited for, per attempt (`2s`, `500ms`); over it the verdict is
    /// `tle` with `limit: cpu_time`. The wall-clock `timeout` still
    /// applies. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<Spanned<Duration>>,
    /// Memory the step's processes may use together, files it writes in
    /// the guest included (`64MiB`); must be below the VM's
    /// `resources.memory`. Reaching it is verdict `mle` with `limit:
    /// memory`, also when an allocation fails rather than a process being
    /// killed. Default: none (the VM's size bounds the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Spanned<ByteSize>>,
}

/// An expected output, compared on the host with what the step printed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// A host file holding the expected stdout, relative to the manifest's
    /// directory like a `host` input; takes `${{ matrix.KEY }}`. It never
    /// enters the VM, so the step can neither read nor change it.
    pub stdout: Spanned<String>,
    /// How output and file are compared (default `trim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Compare>,
}

/// How a step's output is compared with the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// Line by line, ignoring whitespace at the end of each line (`\r`
    /// included) and blank lines at the end of the output.
    #[default]
    Trim,
    /// The whitespace-separated tokens must be the same, however they are
    /// spaced or split into lines.
    Tokens,
}

impl Compare {
    /// The name used in manifests and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Compare::Exact => "exact",
            Compare::Trim => "trim",
            Compare::Tokens => "tokens",
        }
    }
}

/// What, besides infrastructure faults, is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// The step exited non-zero.
    Failure,
    /// The step ran out of time.
    Timeout,
}

/// The user a step runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum User {
    /// An unprivileged user (the default).
    #[default]
    Unprivileged,
    /// root inside the guest.
    Root,
}

/// When a step runs, given how its dependencies ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum Condition {
    /// Every dependency succeeded (the default).
    #[default]
    #[serde(rename = "success()")]
    Success,
    /// Some step this one depends on, directly or not, failed.
    #[serde(rename = "failure()")]
    Failure,
    /// Always, once the dependencies have finished.
    #[serde(rename = "always()")]
    Always,
}

/// Schema of text fields that also take numbers and booleans, as written
/// (`SEED: 1`, `opt: [0, 2]`).
pub struct ScalarText;

impl JsonSchema for ScalarText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScalarText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $pattern:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// Checks and wraps a name.
            pub fn new(s: &str) -> Result<$ty, String> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok($ty(s.to_owned()))
                } else {
                    Err(format!(concat!("invalid ", $what, " `{}`: ", $rule), s))
                }
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl indexmap::Equivalent<Spanned<$ty>> for str {
            fn equivalent(&self, key: &Spanned<$ty>) -> bool {
                self == key.value.0
            }
        }

        impl indexmap::Equivalent<$ty> for str {
            fn equivalent(&self, key: &$ty) -> bool {
                self == key.0
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $ty::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "pattern": $pattern })
            }
        }
    };
}

name_type!(
    /// A step id: `[a-z0-9_-]+`, at most 64 characters.
    StepId,
    "step id",
    "^[a-z0-9_-]{1,64}$",
    "step ids use only a-z, 0-9, `_` and `-` (at most 64 characters)",
    |s| !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
);

name_type!(
    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    EnvName,
    "variable name",
    "^[A-Za-z_][A-Za-z0-9_]*$",
    "names start with a letter or `_` and hold only letters, digits and `_`",
    |s| s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
);

name_type!(
    /// A matrix key: `[A-Za-z_][A-Za-z0-9_-]*`.
    MatrixKey,
    "matrix key",
    "^[A-Za-z_][A-Za-z0-9_-]*$",
    "keys start with a letter or `_` and hold only letters, digits, `_` and `-`",
    |s| s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
);

impl Job {
    /// A step by id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.get(id)
    }

    /// The model without spans or source, as JSON (two manifests that mean
    /// the same thing give equal values).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl Step {
    /// The ids of the steps this one waits for: `needs` plus the producers
    /// of its inputs, in order, without repeats.
    pub fn dependencies(&self) -> Vec<&Spanned<StepId>> {
        let mut out: Vec<&Spanned<StepId>> = Vec::new();
        let from_inputs = self.inputs.iter().filter_map(|i| i.step.as_ref());
        for dep in self.needs.iter().chain(from_inputs) {
            if !out.iter().any(|d| d.value == dep.value) {
                out.push(dep);
            }
        }
        out
    }
}
