//! The sinks fed by hand-made event streams: what the reports show after
//! retries, skips, cancels and a step's own JUnit file, and that a sink's
//! failure reaches the others.

use std::collections::BTreeMap;
use std::path::Path;

use super::console::{Console, LogFormat, Verbosity};
use super::model::test_denials;
use super::state::ReportState;
use super::*;

fn info(name: &str, junit: Option<&Path>) -> StepInfo {
    StepInfo {
        name: name.into(),
        step: name.into(),
        matrix: BTreeMap::new(),
        allow_failure: false,
        egress: EgressReport {
            policy: "none".into(),
            ..EgressReport::default()
        },
        junit: junit.map(Path::to_path_buf),
        junit_classname: None,
    }
}

fn started(steps: Vec<StepInfo>) -> RunEvent {
    RunEvent::RunStarted {
        job: JobInfo {
            name: "job".into(),
            manifest: "job.yaml".into(),
        },
        host: HostInfo {
            kvm_flavour: "hardware".into(),
            cpus: 2,
            sbxrun_version: "0".into(),
        },
        started_at: "2024-01-01T00:00:00Z".into(),
        steps,
    }
}

fn attempt(step: usize, verdict: Verdict, message: &str, retrying: bool) -> RunEvent {
    RunEvent::AttemptFinished {
        step: StepId(step),
        outcome: Box::new(AttemptOutcome::not_run(Attempt {
            verdict,
            exit_code: None,
            signal: None,
            message: (!message.is_empty()).then(|| message.to_owned()),
            timings: Timings::default(),
            limit: None,
            mismatch: None,
            slurm: None,
        })),
        retrying,
    }
}

fn finished(step: usize, end: StepEnd) -> RunEvent {
    RunEvent::StepFinished {
        step: StepId(step),
        end,
    }
}

fn fold(events: &[RunEvent]) -> Report {
    let mut state = ReportState::default();
    for e in events {
        state.apply(e);
    }
    state.into_report()
}

#[test]
fn a_retried_attempt_keeps_its_network_and_logs_when_the_next_ends_early() {
    let mut first = attempt(0, Verdict::Infra, "vm died", true);
    if let RunEvent::AttemptFinished { outcome, .. } = &mut first {
        outcome.egress = Some(test_denials(&[("connect-denied", 2)]));
        outcome.logs.output = Some("logs/a.log".into());
    }
    let r = fold(&[
        started(vec![info("a", None)]),
        first,
        attempt(0, Verdict::Cancelled, "the run was cancelled", false),
        finished(0, StepEnd::Ran(Verdict::Cancelled)),
    ]);
    let s = &r.steps[0];
    assert_eq!(s.verdict, Verdict::Cancelled);
    assert_eq!(s.attempts.len(), 2);
    assert_eq!(s.message.as_deref(), Some("the run was cancelled"));
    assert_eq!(s.egress.total_denied(), 2);
    assert_eq!(s.logs.output.as_deref(), Some("logs/a.log"));
}

#[test]
fn steps_that_never_ran_say_why_and_ran_steps_keep_their_message() {
    let r = fold(&[
        started(vec![
            info("a", None),
            info("b", None),
            info("c", None),
            info("d", None),
        ]),
        attempt(0, Verdict::Failed, "exited with code 1", true),
        finished(0, StepEnd::Cancelled("the run was interrupted".into())),
        finished(1, StepEnd::Cancelled("the run was interrupted".into())),
        finished(2, StepEnd::Skipped("dependency `a` failed".into())),
        finished(3, StepEnd::NotStarted("cannot start a thread: no".into())),
    ]);
    let got: Vec<(Verdict, Option<&str>)> = r
        .steps
        .iter()
        .map(|s| (s.verdict, s.message.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Verdict::Cancelled, Some("exited with code 1")),
            (Verdict::Cancelled, Some("not run: the run was interrupted")),
            (Verdict::Skipped, Some("dependency `a` failed")),
            (Verdict::Infra, Some("cannot start a thread: no")),
        ]
    );
    assert_eq!(r.steps[1].egress.policy, "none");
}

#[test]
fn report_files_are_written_from_events_with_a_steps_own_junit_merged() {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("own.xml");
    std::fs::write(
        &own,
        r#"<testsuite name="s"><testcase name="inner"/></testsuite>"#,
    )
    .unwrap();
    let mut json = JsonReportFile::new(dir.path());
    let mut junit = JunitFile::new(dir.path());
    let mut reporter = Reporter::new(vec![&mut json, &mut junit]);
    reporter.emit(started(vec![info("unit", Some(&own))]));
    reporter.emit(attempt(0, Verdict::Passed, "", false));
    reporter.emit(finished(0, StepEnd::Ran(Verdict::Passed)));
    reporter.flush();
    let mid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(mid["status"], "running");
    reporter.emit(RunEvent::RunFinished {
        status: RunStatus::Passed,
        exit_code: 0,
        duration_ms: 1500.0,
        vms_started: 2,
    });
    drop(reporter);
    let report = json.into_report();
    assert_eq!(report.duration_ms, 1500.0);
    let on_disk: Report =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk, report);
    assert_eq!(on_disk.steps[0].verdict, Verdict::Passed);
    let xml = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(xml.contains(r#"name="unit""#), "{xml}");
    assert!(xml.contains(r#"name="unit / inner""#), "{xml}");
}

/// Remembers the notices it hears.
#[derive(Default)]
struct Notices(Vec<Notice>);

impl EventSink for Notices {
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        if let RunEvent::Notice(n) = event {
            self.0.push(n.clone());
        }
        Ok(())
    }
}

#[test]
fn a_report_that_cannot_be_written_is_a_notice_to_the_other_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let mut json = JsonReportFile::new(&dir.path().join("gone"));
    let mut notices = Notices::default();
    let mut reporter = Reporter::new(vec![&mut json, &mut notices]);
    reporter.emit(started(vec![info("a", None)]));
    reporter.flush();
    drop(reporter);
    assert_eq!(notices.0.len(), 1, "{:?}", notices.0);
    assert!(
        notices.0[0]
            .to_string()
            .starts_with("cannot write report.json: "),
        "{}",
        notices.0[0]
    );
}

#[test]
fn notices_read_as_the_console_always_showed_them() {
    let fail_fast = Notice::FailFast {
        step: "build".into(),
        running: 2,
    };
    assert_eq!(
        fail_fast.to_string(),
        "fail-fast: `build` failed; letting 2 running step(s) finish, starting no more"
    );
    let signal = Notice::Interrupted {
        signal: 2,
        running: 1,
    };
    assert_eq!(
        signal.to_string(),
        "signal 2: cancelling (stopping 1 running step(s)); again to quit at once"
    );
}

#[test]
fn only_a_verbose_console_asks_for_output_lines() {
    let verbose = Console::new(Verbosity::Verbose, LogFormat::Text);
    let normal = Console::new(Verbosity::Normal, LogFormat::Json);
    assert!(verbose.wants_output());
    assert!(!normal.wants_output());
}
