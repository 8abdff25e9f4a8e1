//! The runner: one job run from plan to reports. The scheduler runs the
//! plan's ready steps, each attempt in a fresh VM, and tells the run's
//! sinks (the console, `report.json`, `junit.xml`) what happens as events;
//! this module wires the run directory, the pools, the signals and the
//! sinks together.

mod attempt;
mod cache;
mod cache_key;
mod expect;
mod kill;
mod outcome;
mod policy;
mod pools;
mod request;
mod scheduler;
mod setup;
pub mod slurm;
mod verdict;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub use attempt::{artifact_dir, file_name, AttemptError};
pub use cache::{instance_key, CacheOptions, RunCache, DEFAULT_MAX_BYTES};
pub use outcome::{conclude, StepFinal};
pub use pools::{Phase, PoolBase, Pools, Prep, PrepProgress, StepImage};
pub use scheduler::{Msg, Scheduler, Stop};
pub use setup::{default_concurrency, default_run_dir};
pub use verdict::{judge, oom_evidence, should_retry, Ended, Judged, Observed};

use self::attempt::RunShared;
use self::setup::SignalListener;
use crate::manifest::Job;
use crate::plan::Plan;
use crate::report::console::Console;
use crate::report::{JsonReportFile, JunitFile, Report, Reporter, RunEvent};

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
    #[error("slurm: {0}")]
    Slurm(String),
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
    /// The live view: a sink of the run's events.
    pub console: Console,
    /// `--resolve` overrides for the steps' egress brokers.
    pub resolve: crate::broker::Overrides,
    /// The step cache.
    pub cache: CacheOptions,
}

/// The end of a run.
pub struct RunSummary {
    pub report: Report,
    pub exit_code: i32,
}

/// Runs `plan` of `job`; reports are written into `opts.run_dir`.
pub fn run(job: &Job, plan: Plan, opts: RunOptions) -> Result<RunSummary, RunnerError> {
    let console_dir = opts.pools.console_dir.clone();
    setup::create_dirs(&opts.run_dir, &console_dir)?;
    let started_event = setup::run_started(job, opts.manifest, &plan, &opts.run_dir);
    let shared = Arc::new(RunShared {
        plan,
        run_dir: opts.run_dir.clone(),
        pools: Pools::new(opts.pools),
        secret_values: setup::secret_values(job),
        cancelled: AtomicBool::new(false),
        resolve: Arc::new(opts.resolve),
        cache: RunCache::open(&opts.cache, job.name.as_str()),
    });
    let mut console = opts.console;
    let mut json = JsonReportFile::new(&opts.run_dir);
    let mut junit = JunitFile::new(&opts.run_dir);
    let started = Instant::now();
    // The files first: a notice about one of them still reaches the console.
    let mut reporter = Reporter::new(vec![&mut json, &mut junit, &mut console]);
    reporter.emit(started_event);

    let mut scheduler = Scheduler::new(shared.clone(), opts.concurrency, job.fail_fast);
    let signals = SignalListener::start(scheduler.sender())?;
    let stop = scheduler.run(&mut reporter);
    signals.stop();
    let vms_started = shared.pools.vms_started();
    shared.pools.close();
    shared.cache.close();

    let (status, exit_code) = conclude(&scheduler.ends(), stop == Stop::Interrupted);
    reporter.emit(RunEvent::RunFinished {
        status,
        exit_code,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        vms_started,
    });
    drop(reporter);
    let _ = std::fs::remove_dir_all(&console_dir);
    Ok(RunSummary {
        report: json.into_report(),
        exit_code,
    })
}
