//! The report as a run's events build it: what `report.json` and
//! `junit.xml` show at any point of the run, and at its end.

use std::time::Instant;

use super::events::{RunEvent, StepEnd, StepInfo, Tails};
use super::model::{
    HostInfo, JobInfo, LogPaths, Report, RunStatus, StepReport, Timings, Verdict, REPORT_VERSION,
};

/// A [`Report`] kept current from events, with each step's output tails.
#[derive(Debug, Clone)]
pub struct ReportState {
    report: Report,
    tails: Vec<Tails>,
    /// When `RunStarted` arrived: a report written mid-run counts from it.
    started: Instant,
}

impl Default for ReportState {
    fn default() -> Self {
        ReportState {
            report: Report {
                version: REPORT_VERSION,
                job: JobInfo {
                    name: String::new(),
                    manifest: String::new(),
                },
                status: RunStatus::Running,
                exit_code: 0,
                started_at: String::new(),
                duration_ms: 0.0,
                vms_started: 0,
                host: HostInfo {
                    kvm_flavour: String::new(),
                    cpus: 0,
                    sbxrun_version: String::new(),
                },
                steps: Vec::new(),
            },
            tails: Vec::new(),
            started: Instant::now(),
        }
    }
}

/// A step as reported before it runs: cancelled until something happens
/// to it, so a report of a run that stops early is still complete.
fn not_run(info: &StepInfo) -> StepReport {
    StepReport {
        name: info.name.clone(),
        step: info.step.clone(),
        matrix: info.matrix.clone(),
        verdict: Verdict::Cancelled,
        exit_code: None,
        message: None,
        allow_failure: info.allow_failure,
        attempts: Vec::new(),
        timings: Timings::default(),
        usage: None,
        artifacts: Vec::new(),
        missing_outputs: Vec::new(),
        egress: info.egress.clone(),
        logs: LogPaths::default(),
        image: None,
        cached: false,
        cache: None,
        junit_classname: info.junit_classname.clone(),
    }
}

impl ReportState {
    /// Applies one event.
    pub fn apply(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted {
                job,
                host,
                started_at,
                steps,
            } => {
                self.started = Instant::now();
                self.report.job = job.clone();
                self.report.host = host.clone();
                self.report.started_at = started_at.clone();
                self.report.steps = steps.iter().map(not_run).collect();
                self.tails = vec![Tails::default(); steps.len()];
            }
            RunEvent::AttemptFinished { step, outcome, .. } => {
                let Some(s) = self.report.steps.get_mut(step.0) else {
                    return;
                };
                let a = &outcome.attempt;
                s.verdict = a.verdict;
                s.exit_code = a.exit_code;
                s.message = a.message.clone();
                s.timings = a.timings;
                s.usage = outcome.usage;
                s.artifacts = outcome.artifacts.clone();
                s.missing_outputs = outcome.missing_outputs.clone();
                if let Some(egress) = &outcome.egress {
                    s.egress = egress.clone();
                }
                if let Some(image) = &outcome.image {
                    s.image = Some(image.clone());
                }
                s.cached = outcome.cache_hit();
                s.cache = outcome.cache.clone();
                if let Some(output) = &outcome.logs.output {
                    s.logs.output = Some(output.clone());
                }
                if let Some(console) = &outcome.logs.console {
                    s.logs.console = Some(console.clone());
                }
                s.attempts.push(a.clone());
                self.tails[step.0] = outcome.tails.clone();
            }
            RunEvent::StepFinished { step, end } => {
                let Some(s) = self.report.steps.get_mut(step.0) else {
                    return;
                };
                s.verdict = end.verdict();
                match end {
                    StepEnd::Ran(_) => {}
                    StepEnd::Skipped(reason) | StepEnd::NotStarted(reason) => {
                        s.message = Some(reason.clone());
                    }
                    // What an attempt said stays; a step that never ran says
                    // why not.
                    StepEnd::Cancelled(why) => {
                        if s.message.is_none() || s.attempts.is_empty() {
                            s.message = Some(format!("not run: {why}"));
                        }
                    }
                }
            }
            RunEvent::RunFinished {
                status,
                exit_code,
                duration_ms,
                vms_started,
            } => {
                self.report.vms_started = *vms_started;
                self.report.status = *status;
                self.report.exit_code = *exit_code;
                self.report.duration_ms = *duration_ms;
            }
            RunEvent::StepStarted { .. } | RunEvent::StepOutput { .. } | RunEvent::Notice(_) => {}
        }
    }

    /// The report now (a running run's duration is brought up to date).
    pub fn report(&mut self) -> &Report {
        if self.report.status == RunStatus::Running {
            self.report.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        }
        &self.report
    }

    /// The last attempt's output tails of step `index`.
    pub fn tails(&self, index: usize) -> Tails {
        self.tails.get(index).cloned().unwrap_or_default()
    }

    /// The report, taken.
    pub fn into_report(self) -> Report {
        self.report
    }
}
