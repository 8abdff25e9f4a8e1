//! Matrix expansion: each step becomes one instance per combination of its
//! matrix values, with `${{ matrix.KEY }}` substituted everywhere.

use std::path::PathBuf;

use indexmap::IndexMap;

use crate::manifest::{
    substitute, Compare, Condition, InputSource, Job, RetryOn, Settings, Step, StepId,
};

/// An instance's index in its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub usize);

/// What an instance executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A script for `/bin/sh -eu`.
    Shell(String),
    /// A program and its arguments.
    Exec(Vec<String>),
    /// Neither: the container image's Entrypoint and Cmd.
    ImageDefault,
}

/// An input, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedInput {
    /// A host path (absolute or relative to the current directory:
    /// the manifest's directory joined with the path written).
    Host {
        /// The path on the host.
        path: PathBuf,
        /// Destination under the work dir.
        to: String,
    },
    /// Outputs of every instance of a step.
    Step {
        /// The producing step.
        step: StepId,
        /// Its instances.
        from: Vec<InstanceId>,
        /// The one output taken, or all.
        path: Option<String>,
        /// Destination under the work dir.
        to: String,
    },
}

/// An instance's expected stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedExpect {
    /// The host file (the manifest's directory joined with the path).
    pub path: PathBuf,
    /// The path as written, matrix values substituted, for messages.
    pub shown: String,
    /// How the output is compared with it.
    pub compare: Compare,
}

/// One runnable unit: a step, or one matrix combination of it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable name: `build`, `test[case=a]`, `test[case=a,os=x]`.
    pub name: String,
    /// The step it comes from.
    pub step: StepId,
    /// Its matrix values, in the order the keys were declared.
    pub matrix: Vec<(String, String)>,
    /// What to execute.
    pub command: Command,
    /// Environment: the job's, then the step's.
    pub env: IndexMap<String, String>,
    /// Secret names, read from the runner's environment.
    pub secrets: Vec<String>,
    /// Inputs in declaration order.
    pub inputs: Vec<PlannedInput>,
    /// Declared outputs (paths/globs under the work dir).
    pub outputs: Vec<String>,
    /// A JUnit file the step writes.
    pub junit: Option<String>,
    /// The classname of its JUnit testcase, when the step chose one.
    pub junit_classname: Option<String>,
    /// A file in the work dir fed to stdin.
    pub stdin: Option<String>,
    /// The stdout it must print.
    pub expect: Option<PlannedExpect>,
    /// Image, size, limits, egress, user, timeout, retries.
    pub settings: Settings,
    /// Failures of the step itself that are retried.
    pub retry_on: Vec<RetryOn>,
    /// A failure does not fail the job and counts as success for dependents.
    pub allow_failure: bool,
    /// When it runs, given its dependencies' outcomes.
    pub condition: Condition,
    /// Direct dependencies.
    pub deps: Vec<InstanceId>,
}

/// All matrix combinations of a step, first key varying slowest.
pub(crate) fn combinations(step: &Step) -> Vec<Vec<(String, String)>> {
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in &step.matrix {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for c in &combos {
            for v in values {
                let mut c = c.clone();
                c.push((key.to_string(), v.to_string()));
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

/// `step` or `step[k=v,k2=v2]`.
pub(crate) fn instance_name(step: &str, matrix: &[(String, String)]) -> String {
    if matrix.is_empty() {
        return step.to_owned();
    }
    let parts: Vec<String> = matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{step}[{}]", parts.join(","))
}

/// Builds one instance; `deps` and step inputs' `from` are filled in by the
/// caller, which knows every step's instances.
pub(crate) fn instance(
    job: &Job,
    id: &StepId,
    step: &Step,
    matrix: Vec<(String, String)>,
    settings: &Settings,
) -> Instance {
    let lookup = |k: &str| {
        matrix
            .iter()
            .find(|(mk, _)| mk == k)
            .map(|(_, v)| v.as_str())
    };
    let sub = |s: &str| substitute(s, lookup);
    let command = match (&step.run, &step.command) {
        (Some(run), _) => Command::Shell(sub(run)),
        (None, Some(argv)) => Command::Exec(argv.iter().map(|a| sub(a)).collect()),
        (None, None) => Command::ImageDefault,
    };
    let mut env: IndexMap<String, String> = job
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &step.env {
        env.insert(k.to_string(), sub(v));
    }
    let inputs = step
        .inputs
        .iter()
        .filter_map(|i| {
            let to = sub(i.destination());
            Some(match i.source()? {
                InputSource::Host(h) => PlannedInput::Host {
                    path: job.source.dir.join(sub(h)),
                    to,
                },
                InputSource::Step { step, path } => PlannedInput::Step {
                    step: step.clone(),
                    from: Vec::new(),
                    path: path.map(sub),
                    to,
                },
            })
        })
        .collect();
    Instance {
        name: instance_name(id, &matrix),
        step: id.clone(),
        command,
        env,
        secrets: step.secrets.iter().map(|s| s.to_string()).collect(),
        inputs,
        outputs: step.outputs.iter().map(|o| sub(o)).collect(),
        junit: step.junit.as_ref().map(|j| sub(j)),
        junit_classname: step.junit_classname.as_ref().map(|c| sub(c)),
        stdin: step.stdin.as_ref().map(|f| sub(f)),
        expect: step.expect.as_ref().map(|e| {
            let shown = sub(&e.stdout);
            PlannedExpect {
                path: job.source.dir.join(&shown),
                shown,
                compare: e.compare.unwrap_or_default(),
            }
        }),
        settings: settings.clone(),
        retry_on: step.retry_on.clone(),
        allow_failure: step.allow_failure,
        condition: step.condition.unwrap_or_default(),
        deps: Vec::new(),
        matrix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_list_matrix_values_in_key_order() {
        assert_eq!(instance_name("build", &[]), "build");
        let m = vec![
            ("os".to_owned(), "x".to_owned()),
            ("case".to_owned(), "a".to_owned()),
        ];
        assert_eq!(instance_name("test", &m), "test[os=x,case=a]");
    }
}
