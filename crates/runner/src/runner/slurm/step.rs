//! One step instance on a compute node, as its Slurm job: decide its `if:`
//! from what its dependencies recorded, run its attempts in fresh VMs here
//! (retrying as the step says), and record each attempt and the end in the
//! shared run directory. The job exits 0 exactly when it recorded the end,
//! which is what its dependents' `afterok` dependency waits for.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::records::{AttemptRecord, Records};
use crate::broker::Overrides;
use crate::manifest::Job;
use crate::plan::{InstanceId, Outcome, Plan};
use crate::report::{SlurmAttempt, StepEnd};
use crate::runner::attempt::{run_attempt, RunShared};
use crate::runner::kill::KillSlot;
use crate::runner::outcome::outcome_of;
use crate::runner::verdict::should_retry;
use crate::runner::{setup, CacheOptions, PoolBase, Pools, RunCache};

/// What a step on a node needs besides the plan.
pub struct StepOptions {
    pub run_dir: PathBuf,
    pub pools: PoolBase,
    pub resolve: Overrides,
    pub cache: CacheOptions,
}

/// How the step's job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepExit {
    /// The end is recorded (whatever the verdict).
    Recorded,
    /// Stopped by a signal before it could record its end.
    Interrupted,
}

/// Records a fault of this node that keeps `instance` from running here
/// (no usable `/dev/kvm`, missing guest assets) as its final attempt: an
/// infrastructure fault with `message`, so the run says what the node
/// lacks instead of only that the job failed.
pub fn record_fault(
    run_dir: &std::path::Path,
    instance: &str,
    message: &str,
) -> Result<(), String> {
    let records = Records::new(run_dir);
    let n = records.attempt_count(instance) + 1;
    records.mark_running(instance, n)?;
    let mut outcome = crate::report::AttemptOutcome::not_run(crate::report::Attempt {
        verdict: crate::report::Verdict::Infra,
        exit_code: None,
        signal: None,
        message: Some(message.to_owned()),
        timings: Default::default(),
        limit: None,
        mismatch: None,
        slurm: None,
    });
    outcome.attempt.slurm = Some(this_job());
    records.write_attempt(
        instance,
        n,
        &AttemptRecord {
            outcome,
            retrying: false,
        },
    )?;
    records.write_end(instance, &StepEnd::Ran(crate::report::Verdict::Infra))
}

/// The Slurm job this process runs in, as Slurm's environment says.
fn this_job() -> SlurmAttempt {
    SlurmAttempt {
        job_id: std::env::var("SLURM_JOB_ID").unwrap_or_default(),
        node: std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        queued_ms: None,
    }
}

/// Every instance `id` depends on, directly or not.
fn ancestors(plan: &Plan, id: InstanceId) -> Vec<InstanceId> {
    let mut seen = HashSet::new();
    let mut work = plan.instance(id).deps.clone();
    while let Some(d) = work.pop() {
        if seen.insert(d) {
            work.extend(plan.instance(d).deps.iter().copied());
        }
    }
    seen.into_iter().collect()
}

/// Runs instance `name` of `plan` here. An error means nothing was
/// recorded (the submitter reports it as an infrastructure fault).
pub fn run_step(job: &Job, plan: Plan, name: &str, opts: StepOptions) -> Result<StepExit, String> {
    let records = Records::new(&opts.run_dir);
    let id = plan
        .find(name)
        .ok_or_else(|| format!("the plan has no step instance `{name}`"))?;
    let mut finished: HashMap<InstanceId, Outcome> = HashMap::new();
    for a in ancestors(&plan, id) {
        let dep = &plan.instance(a).name;
        match records.end(dep)? {
            Some(end) => {
                finished.insert(a, outcome_of(end.verdict()));
            }
            None => {
                return Err(format!(
                    "`{dep}`, which `{name}` depends on, has not recorded how it ended"
                ))
            }
        }
    }
    let ready = plan.ready(&finished);
    if ready.skip.contains(&id) {
        let reason = plan.skip_reason(id, |d| finished.get(&d).copied());
        records.write_end(name, &StepEnd::Skipped(reason))?;
        return Ok(StepExit::Recorded);
    }

    let console_dir = opts
        .run_dir
        .join("logs")
        .join(format!(".vm-{}", crate::runner::file_name(name)));
    setup::create_dirs(&opts.run_dir, &console_dir).map_err(|e| e.to_string())?;
    let pools = PoolBase {
        console_dir: console_dir.clone(),
        warm: 0,
        ..opts.pools
    };
    let shared = Arc::new(RunShared {
        run_dir: opts.run_dir.clone(),
        pools: Pools::new(pools),
        secret_values: setup::secret_values(job),
        cancelled: AtomicBool::new(false),
        resolve: Arc::new(opts.resolve),
        cache: RunCache::open(&opts.cache, job.name.as_str()),
        plan,
    });
    let slot = KillSlot::default();
    let signals = StopOnSignal::start(shared.clone(), slot.clone())?;
    let slurm = this_job();
    let inst = shared.plan.instance(id);
    let result = loop {
        let n = records.attempt_count(name) + 1;
        records.mark_running(name, n)?;
        let mut outcome = run_attempt(&shared, inst, Duration::ZERO, &slot, None);
        if shared.cancelled.load(Ordering::Acquire) {
            // Slurm stopped the job: its submitter records the attempt.
            break Ok(StepExit::Interrupted);
        }
        outcome.attempt.slurm = Some(slurm.clone());
        let verdict = outcome.attempt.verdict;
        let retrying = should_retry(verdict, n, inst.settings.retries, &inst.retry_on);
        records.write_attempt(name, n, &AttemptRecord { outcome, retrying })?;
        if !retrying {
            records.write_end(name, &StepEnd::Ran(verdict))?;
            break Ok(StepExit::Recorded);
        }
    };
    signals.stop();
    shared.pools.close();
    shared.cache.close();
    let _ = std::fs::remove_dir_all(&console_dir);
    result
}

/// SIGTERM (Slurm's cancel, time limit or preemption) and SIGINT stop the
/// running VM at once.
struct StopOnSignal {
    handle: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl StopOnSignal {
    fn start(shared: Arc<RunShared>, slot: KillSlot) -> Result<Self, String> {
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .map_err(|e| format!("cannot install the signal handlers: {e}"))?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for _ in signals.forever() {
                shared.cancelled.store(true, Ordering::Release);
                slot.kill();
            }
        });
        Ok(StopOnSignal { handle, thread })
    }

    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
