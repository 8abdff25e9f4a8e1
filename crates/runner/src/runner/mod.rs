//! The runner: one job run from plan to reports. The scheduler runs the
//! plan's ready steps, each attempt in a fresh VM; this module sets up the
//! run directory, the pools and the signal handling, and keeps
//! `report.json` and `junit.xml` current on disk throughout.

mod attempt;
mod kill;
mod policy;
mod pools;
mod request;
mod scheduler;
mod verdict;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub use attempt::{artifact_dir, file_name};
pub use pools::{PoolBase, Pools};
pub use scheduler::{Event, Scheduler, StepState, Stop};
pub use verdict::{judge, oom_evidence, should_retry, Ended, Judged, Observed};

use self::attempt::RunShared;
use crate::errors::{EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, EXIT_STEP_FAILED};
use crate::manifest::Job;
use crate::plan::Plan;
use crate::report::console::Console;
use crate::report::junit;
use crate::report::{
    atomic_write, HostInfo, JobInfo, Report, RunStatus, StepReport, Verdict, REPORT_VERSION,
};

/// Errors setting a run up (a step's own trouble is a verdict, not this).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot create the run directory {path}")]
    RunDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
}

/// How to run a job.
pub struct RunOptions {
    /// The manifest as given (for reports).
    pub manifest: String,
    /// The run directory (created).
    pub run_dir: PathBuf,
    /// Most steps at once.
    pub concurrency: usize,
    /// Pools and assets.
    pub pools: PoolBase,
    pub console: Console,
    /// `--resolve` overrides for the steps' egress brokers.
    pub resolve: crate::broker::Overrides,
}

/// The end of a run.
pub struct RunSummary {
    pub report: Report,
    pub exit_code: i32,
}

/// The default concurrency: twice the CPUs, between 2 and 16.
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 2).clamp(2, 16)
}

/// The run's status and exit code from its steps.
pub fn conclude(steps: &[StepReport], interrupted: bool) -> (RunStatus, i32) {
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

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A default run directory name: `<job>-<UTC timestamp>`.
pub fn default_run_dir(job: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    PathBuf::from("sbxrun-out").join(format!("{job}-{stamp}"))
}

struct Writer<'a> {
    shared: &'a RunShared,
    base: Report,
    started: Instant,
    merged: HashMap<usize, Vec<junit_report::TestCase>>,
}

impl Writer<'_> {
    fn report(&self, steps: &[StepState], status: RunStatus, exit_code: i32) -> Report {
        let mut r = self.base.clone();
        r.status = status;
        r.exit_code = exit_code;
        r.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        r.steps = steps.iter().map(|s| s.report.clone()).collect();
        r
    }

    fn write(&mut self, steps: &[StepState], report: &Report) {
        for (i, st) in steps.iter().enumerate() {
            if !st.done || self.merged.contains_key(&i) {
                continue;
            }
            let inst = self.shared.plan.instance(crate::plan::InstanceId(i));
            let mut cases = Vec::new();
            if let Some(j) = &inst.junit {
                let path = artifact_dir(&self.shared.run_dir, &inst.name).join(j);
                if path.is_file() {
                    match junit::merge_file(&path, &inst.name) {
                        Ok(c) => cases = c,
                        Err(e) => cases.push(junit_report::TestCase::error(
                            &junit::xml_safe(&format!("{} / junit", inst.name)),
                            time::Duration::ZERO,
                            "junit",
                            &junit::xml_safe(&crate::errors::chain(&e)),
                        )),
                    }
                }
            }
            self.merged.insert(i, cases);
        }
        let by_name: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.report.name.as_str(), i))
            .collect();
        let tails = |n: &str| {
            by_name
                .get(n)
                .map(|&i| steps[i].tails.clone())
                .unwrap_or_default()
        };
        let extra = |n: &str| {
            by_name
                .get(n)
                .and_then(|i| self.merged.get(i).cloned())
                .unwrap_or_default()
        };
        let doc = junit::build(report, &tails, &extra);
        let dir = &self.shared.run_dir;
        match serde_json::to_vec_pretty(report) {
            Ok(json) => {
                if let Err(e) = atomic_write(&dir.join("report.json"), &json) {
                    self.shared
                        .console
                        .notice(&format!("cannot write report.json: {e}"));
                }
            }
            Err(e) => self
                .shared
                .console
                .notice(&format!("cannot encode report.json: {e}")),
        }
        match junit::to_bytes(&doc) {
            Ok(xml) => {
                if let Err(e) = atomic_write(&dir.join("junit.xml"), &xml) {
                    self.shared
                        .console
                        .notice(&format!("cannot write junit.xml: {e}"));
                }
            }
            Err(e) => self.shared.console.notice(&format!(
                "cannot encode junit.xml: {}",
                crate::errors::chain(&e)
            )),
        }
    }
}

fn create_dirs(run_dir: &Path, console_dir: &Path) -> Result<(), RunnerError> {
    for d in [
        run_dir.join("artifacts"),
        run_dir.join("logs"),
        console_dir.to_path_buf(),
    ] {
        std::fs::create_dir_all(&d).map_err(|source| RunnerError::RunDir {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Runs `plan` of `job`; reports are written into `opts.run_dir`.
pub fn run(job: &Job, plan: Plan, opts: RunOptions) -> Result<RunSummary, RunnerError> {
    create_dirs(&opts.run_dir, &opts.pools.console_dir)?;
    let secret_values: Vec<String> = job
        .steps
        .values()
        .flat_map(|s| s.secrets.iter())
        .filter_map(|n| std::env::var(n.as_str()).ok())
        .filter(|v| !v.is_empty())
        .collect();
    let console_dir = opts.pools.console_dir.clone();
    let kvm = crate::host::probe_kvm();
    let shared = Arc::new(RunShared {
        plan,
        run_dir: opts.run_dir.clone(),
        pools: Pools::new(opts.pools),
        console: opts.console,
        secret_values,
        cancelled: AtomicBool::new(false),
        resolve: Arc::new(opts.resolve),
    });
    let base = Report {
        version: REPORT_VERSION,
        job: JobInfo {
            name: job.name.to_string(),
            manifest: opts.manifest,
        },
        status: RunStatus::Running,
        exit_code: 0,
        started_at: rfc3339(time::OffsetDateTime::now_utc()),
        duration_ms: 0.0,
        host: HostInfo {
            kvm_flavour: serde_json::to_value(kvm.flavour)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            sbxrun_version: env!("CARGO_PKG_VERSION").into(),
        },
        steps: Vec::new(),
    };
    let mut writer = Writer {
        shared: &shared,
        base,
        started: Instant::now(),
        merged: HashMap::new(),
    };
    let mut scheduler = Scheduler::new(shared.clone(), opts.concurrency, job.fail_fast);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(RunnerError::Signals)?;
    let handle = signals.handle();
    let tx = scheduler.sender();
    let listener = std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    let stop = scheduler.run(&mut |steps| {
        let r = writer.report(steps, RunStatus::Running, 0);
        writer.write(steps, &r);
    });
    handle.close();
    let _ = listener.join();
    shared.pools.close();
    let steps: Vec<StepReport> = scheduler.steps.iter().map(|s| s.report.clone()).collect();
    let (status, exit_code) = conclude(&steps, stop == Stop::Interrupted);
    let report = writer.report(&scheduler.steps, status, exit_code);
    writer.write(&scheduler.steps, &report);
    let _ = std::fs::remove_dir_all(&console_dir);
    Ok(RunSummary { report, exit_code })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LogPaths, Timings};

    fn step(verdict: Verdict, allow_failure: bool) -> StepReport {
        StepReport {
            name: "s".into(),
            step: "s".into(),
            matrix: Default::default(),
            verdict,
            exit_code: None,
            message: None,
            allow_failure,
            attempts: Vec::new(),
            timings: Timings::default(),
            usage: None,
            artifacts: Vec::new(),
            missing_outputs: Vec::new(),
            egress: Default::default(),
            logs: LogPaths::default(),
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
