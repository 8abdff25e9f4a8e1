//! Turning what happened to an attempt into a verdict, and deciding whether
//! to try again. Pure, so every rule is unit-tested.

use guest_init::proto::{ExitStatus, Exited};

use crate::manifest::{OnViolation, RetryOn};
use crate::report::{EgressReport, Verdict};

/// Retries an infrastructure fault gets even when the step asks for none.
pub const MIN_INFRA_RETRIES: u32 = 1;

/// How a run request ended, without the details the verdict ignores.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// guest-init reported an exit.
    Exited(Exited),
    /// The host deadline passed.
    HostTimeout,
    /// The command does not exist in the image.
    NotFound(String),
    /// The VM died, guest-init failed, or the host failed.
    Broken(String),
}

/// Everything the verdict depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub ended: Ended,
    /// Output passed the step's limit (the VM was stopped).
    pub output_exceeded: bool,
    /// The run was cancelled while this attempt ran.
    pub cancelled: bool,
    /// The guest console shows the OOM killer at work.
    pub oom_in_console: bool,
    /// The step's timeout, for messages.
    pub timeout_secs: u64,
}

/// The verdict of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
}

const SIGKILL: i32 = 9;

/// Whether console text shows the guest kernel's OOM killer.
pub fn oom_evidence(console: &str) -> bool {
    console.contains("Out of memory: Killed process")
        || console.contains("invoked oom-killer")
        || console.contains("oom-kill:")
}

/// Judges one attempt.
pub fn judge(o: &Observed) -> Judged {
    let j = |verdict, message: String| Judged {
        verdict,
        exit_code: None,
        signal: None,
        message: Some(message),
    };
    if o.cancelled {
        return j(Verdict::Cancelled, "stopped: the run was cancelled".into());
    }
    if o.output_exceeded {
        return j(
            Verdict::Ole,
            "output limit exceeded; the step was stopped".into(),
        );
    }
    match &o.ended {
        Ended::Exited(e) if e.timed_out => {
            j(Verdict::Tle, format!("timed out after {}s", o.timeout_secs))
        }
        Ended::Exited(e) => match e.status {
            ExitStatus::Code(0) => Judged {
                verdict: Verdict::Passed,
                exit_code: Some(0),
                signal: None,
                message: None,
            },
            ExitStatus::Code(c) => Judged {
                verdict: Verdict::Failed,
                exit_code: Some(c),
                signal: None,
                message: Some(format!("exited with code {c}")),
            },
            ExitStatus::Signal(s) if s == SIGKILL && o.oom_in_console => Judged {
                verdict: Verdict::Mle,
                exit_code: None,
                signal: Some(s),
                message: Some("killed by the out-of-memory killer".into()),
            },
            ExitStatus::Signal(s) => Judged {
                verdict: Verdict::Sig,
                exit_code: None,
                signal: Some(s),
                message: Some(format!("killed by signal {s}")),
            },
        },
        Ended::HostTimeout => j(
            Verdict::Tle,
            format!("timed out after {}s (the VM was stopped)", o.timeout_secs),
        ),
        Ended::NotFound(m) => Judged {
            verdict: Verdict::Failed,
            exit_code: Some(127),
            signal: None,
            message: Some(m.clone()),
        },
        Ended::Broken(m) if o.oom_in_console => {
            j(Verdict::Mle, format!("the guest ran out of memory ({m})"))
        }
        Ended::Broken(m) => j(Verdict::Infra, m.clone()),
    }
}

/// Applies the step's `on_violation` rule: under `fail`, an attempt that
/// passed but had an egress denial fails. Any other verdict already says
/// what went wrong first, so it stands; the denials are in the report
/// either way.
pub fn enforce_egress(judged: Judged, on_violation: OnViolation, egress: &EgressReport) -> Judged {
    let total = egress.total_denied();
    if on_violation != OnViolation::Fail || judged.verdict != Verdict::Passed || total == 0 {
        return judged;
    }
    let kinds = egress
        .denied
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let denials = if total == 1 { "denial" } else { "denials" };
    Judged {
        verdict: Verdict::Failed,
        message: Some(format!(
            "egress policy violated: {total} {denials} ({kinds}); see the report's egress section"
        )),
        ..judged
    }
}

/// Whether attempt number `attempt` (1-based) that ended in `verdict` is
/// followed by another.
pub fn should_retry(verdict: Verdict, attempt: u32, retries: u32, retry_on: &[RetryOn]) -> bool {
    match verdict {
        Verdict::Infra => attempt <= retries.max(MIN_INFRA_RETRIES),
        Verdict::Tle => retry_on.contains(&RetryOn::Timeout) && attempt <= retries,
        Verdict::Failed | Verdict::Sig | Verdict::Mle | Verdict::Ole => {
            retry_on.contains(&RetryOn::Failure) && attempt <= retries
        }
        Verdict::Passed | Verdict::Skipped | Verdict::Cancelled => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_denials;
    use guest_init::proto::Rusage;

    fn exited(status: ExitStatus, timed_out: bool) -> Ended {
        Ended::Exited(Exited {
            status,
            rusage: Rusage::default(),
            wall_us: 1,
            timed_out,
            outputs: None,
            memory: None,
            phases: None,
        })
    }

    fn obs(ended: Ended) -> Observed {
        Observed {
            ended,
            output_exceeded: false,
            cancelled: false,
            oom_in_console: false,
            timeout_secs: 5,
        }
    }

    #[test]
    fn exit_codes_and_signals_map_to_verdicts() {
        assert_eq!(
            judge(&obs(exited(ExitStatus::Code(0), false))).verdict,
            Verdict::Passed
        );
        let f = judge(&obs(exited(ExitStatus::Code(3), false)));
        assert_eq!((f.verdict, f.exit_code), (Verdict::Failed, Some(3)));
        let s = judge(&obs(exited(ExitStatus::Signal(11), false)));
        assert_eq!((s.verdict, s.signal), (Verdict::Sig, Some(11)));
        assert_eq!(
            judge(&obs(exited(ExitStatus::Signal(9), true))).verdict,
            Verdict::Tle
        );
        assert_eq!(judge(&obs(Ended::HostTimeout)).verdict, Verdict::Tle);
    }

    #[test]
    fn sigkill_with_oom_evidence_is_mle() {
        let mut o = obs(exited(ExitStatus::Signal(9), false));
        assert_eq!(judge(&o).verdict, Verdict::Sig);
        o.oom_in_console = true;
        assert_eq!(judge(&o).verdict, Verdict::Mle);
        assert!(oom_evidence(
            "[ 1.2] Out of memory: Killed process 42 (python3)"
        ));
        assert!(!oom_evidence("all good"));
    }

    #[test]
    fn output_limit_and_cancel_win_over_how_the_vm_ended() {
        let mut o = obs(Ended::Broken("vm exited".into()));
        assert_eq!(judge(&o).verdict, Verdict::Infra);
        o.output_exceeded = true;
        assert_eq!(judge(&o).verdict, Verdict::Ole);
        o.cancelled = true;
        assert_eq!(judge(&o).verdict, Verdict::Cancelled);
    }

    fn passed() -> Judged {
        judge(&obs(exited(ExitStatus::Code(0), false)))
    }

    #[test]
    fn on_violation_fail_fails_a_passed_step_that_had_denials() {
        let egress = test_denials(&[("dns-refused", 1), ("connect-denied", 2)]);
        let j = enforce_egress(passed(), OnViolation::Fail, &egress);
        assert_eq!(j.verdict, Verdict::Failed);
        assert_eq!(j.exit_code, Some(0));
        assert_eq!(
            j.message.as_deref(),
            Some(
                "egress policy violated: 3 denials (connect-denied: 2, dns-refused: 1); \
                 see the report's egress section"
            )
        );
        let one = enforce_egress(
            passed(),
            OnViolation::Fail,
            &test_denials(&[("protocol-dropped", 1)]),
        );
        assert!(one
            .message
            .is_some_and(|m| m.starts_with("egress policy violated: 1 denial (")));
    }

    #[test]
    fn on_violation_leaves_other_verdicts_record_and_clean_runs_alone() {
        let egress = test_denials(&[("connect-denied", 2)]);
        for o in [
            obs(exited(ExitStatus::Code(3), false)),
            obs(exited(ExitStatus::Signal(9), true)),
            obs(Ended::Broken("vm exited".into())),
        ] {
            let j = judge(&o);
            assert_eq!(enforce_egress(j.clone(), OnViolation::Fail, &egress), j);
        }
        assert_eq!(
            enforce_egress(passed(), OnViolation::Record, &egress),
            passed()
        );
        assert_eq!(
            enforce_egress(passed(), OnViolation::Fail, &EgressReport::default()),
            passed()
        );
    }

    #[test]
    fn infra_is_always_retried_but_failures_only_when_asked() {
        assert!(should_retry(Verdict::Infra, 1, 0, &[]));
        assert!(!should_retry(Verdict::Infra, 2, 0, &[]));
        assert!(should_retry(Verdict::Infra, 3, 3, &[]));
        assert!(!should_retry(Verdict::Failed, 1, 2, &[]));
        assert!(should_retry(Verdict::Failed, 2, 2, &[RetryOn::Failure]));
        assert!(!should_retry(Verdict::Failed, 3, 2, &[RetryOn::Failure]));
        assert!(!should_retry(Verdict::Tle, 1, 2, &[RetryOn::Failure]));
        assert!(should_retry(Verdict::Tle, 1, 2, &[RetryOn::Timeout]));
        assert!(!should_retry(Verdict::Passed, 1, 5, &[RetryOn::Failure]));
    }
}
