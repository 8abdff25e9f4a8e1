//! The run's status and exit code from how its steps ended.

use crate::errors::{EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, EXIT_STEP_FAILED};
use crate::plan::Outcome;
use crate::report::{RunStatus, Verdict};

/// How a final verdict counts for the plan (dependents' conditions).
pub fn outcome_of(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Passed => Outcome::Succeeded,
        Verdict::Skipped => Outcome::Skipped,
        Verdict::Cancelled => Outcome::Cancelled,
        _ => Outcome::Failed,
    }
}

/// How a step instance ended, as far as the run's outcome cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFinal {
    pub verdict: Verdict,
    /// Its failure does not fail the job.
    pub allow_failure: bool,
}

/// The run's status and exit code from its steps.
pub fn conclude(steps: &[StepFinal], interrupted: bool) -> (RunStatus, i32) {
    if interrupted {
        return (RunStatus::Interrupted, EXIT_INTERRUPTED);
    }
    let failed: Vec<Verdict> = steps
        .iter()
        .filter(|s| !s.allow_failure && (s.verdict.is_failure() || s.verdict == Verdict::Cancelled))
        .map(|s| s.verdict)
        .collect();
    if failed.is_empty() {
        (RunStatus::Passed, EXIT_OK)
    } else if failed
        .iter()
        .all(|v| matches!(v, Verdict::Infra | Verdict::Cancelled))
        && failed.contains(&Verdict::Infra)
    {
        (RunStatus::Infra, EXIT_INFRA)
    } else {
        (RunStatus::Failed, EXIT_STEP_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(verdict: Verdict, allow_failure: bool) -> StepFinal {
        StepFinal {
            verdict,
            allow_failure,
        }
    }

    #[test]
    fn exit_code_follows_required_steps_only() {
        let ok = [step(Verdict::Passed, false), step(Verdict::Failed, true)];
        assert_eq!(conclude(&ok, false), (RunStatus::Passed, 0));
        let skipped = [step(Verdict::Passed, false), step(Verdict::Skipped, false)];
        assert_eq!(conclude(&skipped, false).1, 0);
        let failed = [step(Verdict::Tle, false), step(Verdict::Infra, false)];
        assert_eq!(conclude(&failed, false), (RunStatus::Failed, 1));
        let infra = [step(Verdict::Infra, false), step(Verdict::Cancelled, false)];
        assert_eq!(conclude(&infra, false), (RunStatus::Infra, 3));
        assert_eq!(conclude(&ok, true), (RunStatus::Interrupted, 130));
    }
}
