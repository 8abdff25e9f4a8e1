//! Turning what happened to an attempt into a verdict, and deciding whether
//! to try again. Pure, so every rule is unit-tested.

use guest_init::proto::{ExitStatus, Exited};

use crate::manifest::{ByteSize, Duration, OnViolation, RetryOn};
use crate::report::{EgressReport, Limit, Mismatch, Verdict};

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
    /// The guest refused to start the command for a reason the step owns
    /// (its stdin file is missing or unreadable).
    Refused(String),
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
    /// The step's `limits.cpu_time`.
    pub cpu_time: Option<Duration>,
    /// The step's `limits.memory`.
    pub memory: Option<ByteSize>,
}

/// The verdict of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    /// The limit a `tle`, `mle` or `ole` ran into.
    pub limit: Option<Limit>,
    /// Where a `wrong` output differs.
    pub mismatch: Option<Mismatch>,
}

const SIGKILL: i32 = 9;
const SIGXCPU: i32 = 24;

/// The exit status of an attempt as `Judged` fields.
fn status_fields(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    match status {
        ExitStatus::Code(c) => (Some(c), None),
        ExitStatus::Signal(s) => (None, Some(s)),
    }
}

/// `limits.memory` was reached: the OOM killer ended a process of the step,
/// or (for a step that did not exit 0) an allocation failed at the limit.
/// The guest allows overcommit for such steps, so one huge allocation
/// reaches the limit as it is used instead of failing up front.
fn memory_limit_hit(o: &Observed, e: &Exited) -> Option<Judged> {
    let limit = o.memory?;
    let ev = e.memory?;
    let failed = e.status != ExitStatus::Code(0);
    if ev.oom_kill == 0 && !(failed && ev.oom > 0) {
        return None;
    }
    let how = match ev.oom_kill {
        0 => "an allocation failed at the limit".to_owned(),
        1 => "a process was killed".to_owned(),
        n => format!("{n} processes were killed"),
    };
    let (exit_code, signal) = status_fields(e.status);
    Some(Judged {
        verdict: Verdict::Mle,
        exit_code,
        signal,
        message: Some(format!("memory limit of {limit} exceeded ({how})")),
        limit: Some(Limit::Memory),
        mismatch: None,
    })
}

/// `limits.cpu_time` was used up: by the guest's accounting of the step's
/// process and the children it waited for, or as RLIMIT_CPU's SIGXCPU
/// says (which fires at the limit rounded up to whole seconds).
fn cpu_limit_hit(o: &Observed, e: &Exited) -> Option<Judged> {
    let limit = o.cpu_time?;
    let used_us = e.rusage.user_us.saturating_add(e.rusage.system_us);
    let over = u128::from(used_us) > limit.0.as_micros();
    if !over && e.status != ExitStatus::Signal(SIGXCPU) {
        return None;
    }
    let (exit_code, signal) = status_fields(e.status);
    Some(Judged {
        verdict: Verdict::Tle,
        exit_code,
        signal,
        message: Some(format!(
            "CPU time limit of {limit} exceeded ({:.2}s CPU)",
            used_us as f64 / 1e6
        )),
        limit: Some(Limit::CpuTime),
        mismatch: None,
    })
}

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
        limit: None,
        mismatch: None,
    };
    let limited = |verdict, message: String, limit| Judged {
        limit: Some(limit),
        ..j(verdict, message)
    };
    if o.cancelled {
        return j(Verdict::Cancelled, "stopped: the run was cancelled".into());
    }
    if o.output_exceeded {
        return limited(
            Verdict::Ole,
            "output limit exceeded; the step was stopped".into(),
            Limit::Output,
        );
    }
    if let Ended::Exited(e) = &o.ended {
        if let Some(hit) = memory_limit_hit(o, e).or_else(|| cpu_limit_hit(o, e)) {
            return hit;
        }
    }
    match &o.ended {
        Ended::Exited(e) if e.timed_out => limited(
            Verdict::Tle,
            format!("timed out after {}s", o.timeout_secs),
            Limit::WallTime,
        ),
        Ended::Exited(e) => match e.status {
            ExitStatus::Code(0) => Judged {
                exit_code: Some(0),
                message: None,
                ..j(Verdict::Passed, String::new())
            },
            ExitStatus::Code(c) => Judged {
                exit_code: Some(c),
                ..j(Verdict::Failed, format!("exited with code {c}"))
            },
            ExitStatus::Signal(s) if s == SIGKILL && o.oom_in_console => Judged {
                signal: Some(s),
                ..j(Verdict::Mle, "killed by the out-of-memory killer".into())
            },
            ExitStatus::Signal(s) => Judged {
                signal: Some(s),
                ..j(Verdict::Sig, format!("killed by signal {s}"))
            },
        },
        Ended::HostTimeout => limited(
            Verdict::Tle,
            format!("timed out after {}s (the VM was stopped)", o.timeout_secs),
            Limit::WallTime,
        ),
        Ended::NotFound(m) => Judged {
            exit_code: Some(127),
            ..j(Verdict::Failed, m.clone())
        },
        Ended::Refused(m) => j(Verdict::Failed, m.clone()),
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

/// Applies the step's `expect`: an attempt that passed but printed
/// something else is `wrong`. Any other verdict already says what went
/// wrong first (a truncated output is `ole`, never compared).
pub fn enforce_expect(judged: Judged, mismatch: Option<Mismatch>) -> Judged {
    match mismatch {
        Some(m) if judged.verdict == Verdict::Passed => Judged {
            verdict: Verdict::Wrong,
            message: Some(super::expect::describe(&m)),
            mismatch: Some(m),
            ..judged
        },
        _ => judged,
    }
}

/// Whether attempt number `attempt` (1-based) that ended in `verdict` is
/// followed by another.
pub fn should_retry(verdict: Verdict, attempt: u32, retries: u32, retry_on: &[RetryOn]) -> bool {
    match verdict {
        Verdict::Infra => attempt <= retries.max(MIN_INFRA_RETRIES),
        Verdict::Tle => retry_on.contains(&RetryOn::Timeout) && attempt <= retries,
        Verdict::Failed | Verdict::Wrong | Verdict::Sig | Verdict::Mle | Verdict::Ole => {
            retry_on.contains(&RetryOn::Failure) && attempt <= retries
        }
        Verdict::Passed | Verdict::Skipped | Verdict::Cancelled => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_denials;
    use guest_init::proto::{MemoryEvents, Rusage};

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
            cpu_time: None,
            memory: None,
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

    fn used(status: ExitStatus, cpu_us: u64, memory: Option<MemoryEvents>) -> Ended {
        Ended::Exited(Exited {
            status,
            rusage: Rusage {
                user_us: cpu_us / 2,
                system_us: cpu_us - cpu_us / 2,
                max_rss_kib: 0,
            },
            wall_us: 1,
            timed_out: false,
            outputs: None,
            memory,
            phases: None,
        })
    }

    fn limited(ended: Ended) -> Observed {
        Observed {
            cpu_time: Some("2s".parse().unwrap()),
            memory: Some("64MiB".parse().unwrap()),
            ..obs(ended)
        }
    }

    #[test]
    fn cpu_time_over_the_limit_is_tle_with_its_own_limit_and_message() {
        let j = judge(&limited(used(ExitStatus::Signal(SIGXCPU), 2_000_000, None)));
        assert_eq!((j.verdict, j.limit), (Verdict::Tle, Some(Limit::CpuTime)));
        assert_eq!(j.signal, Some(SIGXCPU));
        assert_eq!(
            j.message.as_deref(),
            Some("CPU time limit of 2s exceeded (2.00s CPU)")
        );
        // Exited on its own after using too much: still over.
        let j = judge(&limited(used(ExitStatus::Code(0), 2_010_000, None)));
        assert_eq!((j.verdict, j.exit_code), (Verdict::Tle, Some(0)));
        assert!(j.message.is_some_and(|m| m.ends_with("(2.01s CPU)")));
        // Under the limit, and without one, the exit status decides.
        let j = judge(&limited(used(ExitStatus::Code(0), 1_990_000, None)));
        assert_eq!(j.verdict, Verdict::Passed);
        let j = judge(&obs(used(ExitStatus::Code(0), 9_000_000, None)));
        assert_eq!(j.verdict, Verdict::Passed);
    }

    #[test]
    fn the_wall_timeout_is_tle_with_the_wall_time_limit() {
        let j = judge(&limited(exited(ExitStatus::Signal(9), true)));
        assert_eq!((j.verdict, j.limit), (Verdict::Tle, Some(Limit::WallTime)));
        assert_eq!(j.message.as_deref(), Some("timed out after 5s"));
        let j = judge(&limited(Ended::HostTimeout));
        assert_eq!(j.limit, Some(Limit::WallTime));
    }

    #[test]
    fn memory_events_make_mle_when_the_step_has_a_memory_limit() {
        let ev = |oom, oom_kill| {
            Some(MemoryEvents {
                max: 5,
                oom,
                oom_kill,
            })
        };
        // Killed by the cgroup's OOM killer.
        let j = judge(&limited(used(ExitStatus::Signal(9), 0, ev(1, 1))));
        assert_eq!((j.verdict, j.limit), (Verdict::Mle, Some(Limit::Memory)));
        assert_eq!(
            j.message.as_deref(),
            Some("memory limit of 64MiB exceeded (a process was killed)")
        );
        // An allocation failed at the limit and the program gave up.
        let j = judge(&limited(used(ExitStatus::Code(1), 0, ev(1, 0))));
        assert_eq!((j.verdict, j.exit_code), (Verdict::Mle, Some(1)));
        // A kill in a script that carried on and exited 0 is still MLE.
        let j = judge(&limited(used(ExitStatus::Code(0), 0, ev(1, 1))));
        assert_eq!(j.verdict, Verdict::Mle);
        // Reclaim at the limit alone is no failure; nor is an unrelated one.
        let j = judge(&limited(used(ExitStatus::Code(0), 0, ev(1, 0))));
        assert_eq!(j.verdict, Verdict::Passed);
        let j = judge(&limited(used(ExitStatus::Code(3), 0, ev(0, 0))));
        assert_eq!((j.verdict, j.limit), (Verdict::Failed, None));
        // Events without a limit in the manifest are not looked at.
        let j = judge(&obs(used(ExitStatus::Code(1), 0, ev(1, 0))));
        assert_eq!(j.verdict, Verdict::Failed);
    }

    #[test]
    fn a_missing_stdin_file_fails_the_step_without_an_exit_code() {
        let j = judge(&obs(Ended::Refused("cannot open the stdin file".into())));
        assert_eq!((j.verdict, j.exit_code), (Verdict::Failed, None));
    }

    #[test]
    fn a_mismatch_turns_only_a_passed_attempt_wrong() {
        let m = Mismatch {
            compare: "trim".into(),
            line: 2,
            token: None,
            expected: Some("4".into()),
            actual: Some("5".into()),
        };
        let j = enforce_expect(passed(), Some(m.clone()));
        assert_eq!(j.verdict, Verdict::Wrong);
        assert_eq!(j.exit_code, Some(0));
        assert_eq!(
            j.message.as_deref(),
            Some("wrong answer (trim comparison): line 2: expected `4`, got `5`")
        );
        assert_eq!(j.mismatch, Some(m.clone()));
        assert_eq!(enforce_expect(passed(), None), passed());
        let failed = judge(&obs(exited(ExitStatus::Code(3), false)));
        assert_eq!(enforce_expect(failed.clone(), Some(m)), failed);
        assert!(Verdict::Wrong.is_failure());
        assert!(should_retry(Verdict::Wrong, 1, 1, &[RetryOn::Failure]));
        assert!(!should_retry(Verdict::Wrong, 1, 1, &[]));
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
