//! The submitting side: every instance submitted at once, in dependency
//! order, then followed to the end. Each poll asks `squeue` about the
//! unfinished jobs (one call, backing off while nothing changes) and reads
//! what the nodes recorded in the run directory; both become the same
//! events a local run emits, so the console, `report.json` and
//! `junit.xml` are the local ones.
//!
//! A job that ends without its instance recording the end (cancelled from
//! outside, its node died, preempted, over its `--time`) is an
//! infrastructure fault: retried as a local one is, by a new job that the
//! waiting dependents are pointed at.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::commands::{self, JobState};
use super::records::{AttemptRecord, Records, Submit};
use super::submit::{batch_script, dependency, sbatch_args, SlurmOptions};
use crate::plan::{InstanceId, Plan};
use crate::report::{
    Attempt, AttemptOutcome, Notice, Reporter, RunEvent, SlurmAttempt, StepEnd, StepId, Timings,
    Verdict,
};
use crate::runner::outcome::StepFinal;
use crate::runner::verdict::should_retry;

const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(5);

/// What the follower knows of one instance.
#[derive(Debug, Default)]
struct Tracked {
    /// Its Slurm jobs, oldest first; the last is the current one.
    jobs: Vec<String>,
    /// The highest attempt whose start was reported.
    started: u32,
    /// Attempts reported so far.
    reported: u32,
    /// The final verdict, once it ended.
    end: Option<Verdict>,
    /// The submitter cancelled its job, for this reason.
    cancelled: Option<String>,
    /// How far its output log was read (verbose consoles).
    log_offset: u64,
    /// Slurm's last word on its current job.
    state: Option<JobState>,
}

/// How following ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// Every instance ended.
    Completed,
    /// A signal stopped it; `quit` when the second one cut the wait short.
    Interrupted { quit: bool },
}

/// Submits and follows one run's Slurm jobs.
pub struct Follower<'p> {
    plan: &'p Plan,
    records: Records,
    job_name: String,
    submit: Submit,
    opts: SlurmOptions,
    fail_fast: bool,
    tracked: Vec<Tracked>,
    stopping: Option<String>,
    /// Jobs whose queue time was put on an attempt already.
    queue_reported: HashSet<String>,
}

fn step(id: InstanceId) -> StepId {
    StepId(id.0)
}

impl<'p> Follower<'p> {
    pub fn new(
        plan: &'p Plan,
        records: Records,
        job_name: &str,
        submit: Submit,
        opts: SlurmOptions,
        fail_fast: bool,
    ) -> Self {
        Follower {
            plan,
            records,
            job_name: job_name.to_owned(),
            submit,
            opts,
            fail_fast,
            tracked: (0..plan.len()).map(|_| Tracked::default()).collect(),
            stopping: None,
            queue_reported: HashSet::new(),
        }
    }

    fn ledger(&self) -> BTreeMap<String, Vec<String>> {
        self.plan
            .instances()
            .iter()
            .zip(&self.tracked)
            .map(|(i, t)| (i.name.clone(), t.jobs.clone()))
            .collect()
    }

    /// The current jobs of `id`'s unfinished dependencies.
    fn waiting_on(&self, id: InstanceId) -> Vec<String> {
        self.plan
            .instance(id)
            .deps
            .iter()
            .filter(|d| self.tracked[d.0].end.is_none())
            .filter_map(|d| self.tracked[d.0].jobs.last().cloned())
            .collect()
    }

    fn sbatch(&self, id: InstanceId) -> Result<String, String> {
        let inst = self.plan.instance(id);
        let args = sbatch_args(
            inst,
            &self.job_name,
            &self.records,
            &self.opts,
            &dependency(&self.waiting_on(id)),
        );
        let script = batch_script(
            &self.submit.exe,
            self.records.root().parent().unwrap_or(self.records.root()),
            &inst.name,
        );
        commands::sbatch(&args, &script).map_err(|e| format!("cannot submit `{}`: {e}", inst.name))
    }

    /// Submits every instance, dependencies first. On an error, what was
    /// submitted is cancelled again.
    pub fn submit_all(&mut self) -> Result<usize, String> {
        for &id in self.plan.topological_order() {
            match self.sbatch(id) {
                Ok(job) => self.tracked[id.0].jobs.push(job),
                Err(e) => {
                    let _ = commands::scancel(&self.all_jobs());
                    return Err(e);
                }
            }
        }
        self.records.write_jobs(&self.ledger())?;
        Ok(self.plan.len())
    }

    /// Takes up a run submitted earlier (`--detach`), from its ledger.
    pub fn resume(&mut self) -> Result<(), String> {
        let ledger = self.records.jobs()?;
        for (i, inst) in self.plan.instances().iter().enumerate() {
            self.tracked[i].jobs = ledger.get(&inst.name).cloned().unwrap_or_default();
        }
        Ok(())
    }

    fn all_jobs(&self) -> Vec<String> {
        self.tracked
            .iter()
            .flat_map(|t| t.jobs.iter().cloned())
            .collect()
    }

    /// Each instance's final verdict (cancelled if it never ended).
    pub fn ends(&self) -> Vec<StepFinal> {
        self.tracked
            .iter()
            .enumerate()
            .map(|(i, t)| StepFinal {
                verdict: t.end.unwrap_or(Verdict::Cancelled),
                allow_failure: self.plan.instance(InstanceId(i)).allow_failure,
            })
            .collect()
    }

    /// Attempts that ran in a VM on a node.
    pub fn attempts_run(&self) -> u64 {
        self.tracked.iter().map(|t| u64::from(t.reported)).sum()
    }

    /// Reports what is recorded, once, without asking Slurm or acting.
    pub fn replay(&mut self, reporter: &mut Reporter<'_>) -> Result<bool, String> {
        for i in 0..self.plan.len() {
            let id = InstanceId(i);
            self.report_attempts(id, reporter)?;
            if let Some(end) = self.records.end(&self.plan.instance(id).name)? {
                self.finish(id, end, None, reporter);
            }
        }
        Ok(self.tracked.iter().all(|t| t.end.is_some()))
    }

    /// Follows the jobs until every instance has ended, or a second
    /// signal arrives.
    pub fn follow(&mut self, reporter: &mut Reporter<'_>, signals: &Receiver<i32>) -> Followed {
        let mut wait = FIRST_POLL;
        let mut signalled = 0;
        loop {
            let changed = self.poll(reporter);
            reporter.flush();
            if self.tracked.iter().all(|t| t.end.is_some()) {
                break;
            }
            wait = if changed {
                FIRST_POLL
            } else {
                (wait * 3 / 2).min(MAX_POLL)
            };
            match signals.recv_timeout(wait) {
                Ok(signal) => {
                    signalled += 1;
                    let running = self.running_count();
                    if signalled == 1 {
                        reporter.emit(RunEvent::Notice(Notice::Interrupted { signal, running }));
                        self.stopping = Some("the run was interrupted".into());
                        self.cancel(true);
                        wait = FIRST_POLL;
                    } else {
                        reporter.emit(RunEvent::Notice(Notice::Quitting));
                        self.end_the_rest(reporter, "the run was interrupted");
                        return Followed::Interrupted { quit: true };
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
        if signalled > 0 {
            Followed::Interrupted { quit: false }
        } else {
            Followed::Completed
        }
    }

    fn running_count(&self) -> usize {
        self.tracked
            .iter()
            .filter(|t| t.end.is_none() && t.state.as_ref().is_some_and(JobState::is_running))
            .count()
    }

    /// One look at Slurm and the records; whether anything changed.
    fn poll(&mut self, reporter: &mut Reporter<'_>) -> bool {
        let open: Vec<String> = self
            .tracked
            .iter()
            .filter(|t| t.end.is_none())
            .filter_map(|t| t.jobs.last().cloned())
            .collect();
        let states = match commands::squeue(&open) {
            Ok(s) => s,
            Err(e) => {
                // Slurm's controller can be briefly away; ask again later.
                tracing::warn!("slurm: {e}");
                return false;
            }
        };
        let mut changed = false;
        for i in 0..self.plan.len() {
            if self.tracked[i].end.is_some() {
                continue;
            }
            let state = self.tracked[i]
                .jobs
                .last()
                .and_then(|j| states.get(j))
                .cloned();
            if state != self.tracked[i].state {
                changed = true;
            }
            self.tracked[i].state = state.clone();
            // A job still waiting has recorded nothing: no need to read
            // the shared filesystem for it.
            if state.as_ref().is_some_and(|s| s.state == "PENDING") {
                continue;
            }
            match self.observe(InstanceId(i), state, reporter) {
                Ok(c) => changed |= c,
                Err(e) => tracing::warn!("slurm: {e}"),
            }
        }
        changed
    }

    fn report_started(&mut self, id: InstanceId, upto: u32, reporter: &mut Reporter<'_>) {
        while self.tracked[id.0].started < upto {
            self.tracked[id.0].started += 1;
            let running = self.running_count();
            let queued = self
                .tracked
                .iter()
                .filter(|t| {
                    t.end.is_none() && t.state.as_ref().is_some_and(|s| s.state == "PENDING")
                })
                .count();
            reporter.emit(RunEvent::StepStarted {
                step: step(id),
                attempt: self.tracked[id.0].started,
                running: running.max(1),
                queued,
            });
        }
    }

    /// Reports attempts recorded since the last look.
    fn report_attempts(
        &mut self,
        id: InstanceId,
        reporter: &mut Reporter<'_>,
    ) -> Result<bool, String> {
        let name = self.plan.instance(id).name.clone();
        let count = self.records.attempt_count(&name);
        let mut changed = false;
        while self.tracked[id.0].reported < count {
            let n = self.tracked[id.0].reported + 1;
            let Some(AttemptRecord {
                mut outcome,
                retrying,
            }) = self.records.attempt(&name, n)?
            else {
                break;
            };
            self.report_started(id, n, reporter);
            self.add_queue_time(id, &mut outcome);
            self.tracked[id.0].reported = n;
            reporter.emit(RunEvent::AttemptFinished {
                step: step(id),
                outcome: Box::new(outcome),
                retrying,
            });
            changed = true;
        }
        Ok(changed)
    }

    /// The first attempt of each Slurm job carries that job's queue time.
    fn add_queue_time(&mut self, id: InstanceId, outcome: &mut AttemptOutcome) {
        let Some(slurm) = &mut outcome.attempt.slurm else {
            return;
        };
        if self.queue_reported.contains(&slurm.job_id) {
            return;
        }
        if let Some(state) = &self.tracked[id.0].state {
            if state.id == slurm.job_id && state.started.is_some() {
                slurm.queued_ms = state.queued_ms();
                self.queue_reported.insert(slurm.job_id.clone());
            }
        }
    }

    fn tail_log(&mut self, id: InstanceId, reporter: &mut Reporter<'_>) {
        if !reporter.wants_output() {
            return;
        }
        let name = &self.plan.instance(id).name;
        let path = self
            .records
            .root()
            .parent()
            .unwrap_or(self.records.root())
            .join("logs")
            .join(format!("{}.log", crate::runner::file_name(name)));
        for (stream, line) in super::tail::new_lines(&path, &mut self.tracked[id.0].log_offset) {
            reporter.emit(RunEvent::StepOutput {
                step: step(id),
                stream,
                line,
            });
        }
    }

    /// Brings one unfinished instance up to date; whether it changed.
    fn observe(
        &mut self,
        id: InstanceId,
        state: Option<JobState>,
        reporter: &mut Reporter<'_>,
    ) -> Result<bool, String> {
        let name = self.plan.instance(id).name.clone();
        let running = self.records.running(&name);
        let mut changed = running > self.tracked[id.0].started;
        self.report_started(id, running, reporter);
        self.tail_log(id, reporter);
        changed |= self.report_attempts(id, reporter)?;
        if let Some(end) = self.records.end(&name)? {
            let job_state = state.as_ref().map(|s| s.state.clone());
            self.finish(id, end, job_state.as_deref(), reporter);
            return Ok(true);
        }
        let ended = match &state {
            Some(s) if s.is_final() => s.clone(),
            Some(_) => return Ok(changed),
            // Slurm no longer knows the job (it ended long ago), or it
            // was never submitted.
            None => JobState {
                id: self.tracked[id.0].jobs.last().cloned().unwrap_or_default(),
                state: "UNKNOWN".into(),
                node: String::new(),
                submitted: None,
                started: None,
            },
        };
        // The node may have recorded the end just before its job ended.
        self.report_attempts(id, reporter)?;
        if let Some(end) = self.records.end(&name)? {
            self.finish(id, end, Some(&ended.state), reporter);
            return Ok(true);
        }
        if let Some(why) = self.tracked[id.0].cancelled.clone() {
            // An attempt that had started was stopped: it is reported as
            // a local run reports a step stopped mid-attempt.
            let n = self.records.attempt_count(&name) + 1;
            if self.records.running(&name) >= n {
                let outcome = AttemptOutcome::not_run(Attempt {
                    verdict: Verdict::Cancelled,
                    exit_code: None,
                    signal: None,
                    message: Some(why.clone()),
                    timings: Timings::default(),
                    limit: None,
                    mismatch: None,
                    slurm: Some(SlurmAttempt {
                        job_id: ended.id.clone(),
                        node: ended.node.clone(),
                        queued_ms: ended.queued_ms(),
                    }),
                });
                let record = AttemptRecord {
                    outcome,
                    retrying: false,
                };
                self.records.write_attempt(&name, n, &record)?;
                self.report_attempts(id, reporter)?;
            }
            let end = StepEnd::Cancelled(why);
            self.records.write_end(&name, &end)?;
            self.finish(id, end, Some(&ended.state), reporter);
            return Ok(true);
        }
        self.job_lost(id, &ended, reporter)?;
        Ok(true)
    }

    /// The current job ended without the instance's end: an infrastructure
    /// fault, retried by a new job while retries last.
    fn job_lost(
        &mut self,
        id: InstanceId,
        job: &JobState,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), String> {
        let inst = self.plan.instance(id);
        let name = inst.name.clone();
        // The attempt that was running (or about to) when the job ended.
        let n = self.records.attempt_count(&name) + 1;
        let node = if job.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", job.node)
        };
        let message = format!(
            "Slurm job {} ended {}{node} before the step recorded its result",
            job.id, job.state
        );
        let retrying = self.stopping.is_none()
            && should_retry(Verdict::Infra, n, inst.settings.retries, &inst.retry_on);
        let outcome = AttemptOutcome::not_run(Attempt {
            verdict: Verdict::Infra,
            exit_code: None,
            signal: None,
            message: Some(message),
            timings: Timings::default(),
            limit: None,
            mismatch: None,
            slurm: Some(SlurmAttempt {
                job_id: job.id.clone(),
                node: job.node.clone(),
                queued_ms: job.queued_ms(),
            }),
        });
        self.records
            .write_attempt(&name, n, &AttemptRecord { outcome, retrying })?;
        self.report_attempts(id, reporter)?;
        if retrying {
            let job = self.sbatch(id)?;
            self.tracked[id.0].jobs.push(job);
            self.tracked[id.0].state = None;
            self.records.write_jobs(&self.ledger())?;
            self.point_dependents(id);
            return Ok(());
        }
        let end = StepEnd::Ran(Verdict::Infra);
        self.records.write_end(&name, &end)?;
        let state = job.state.clone();
        self.finish(id, end, Some(&state), reporter);
        Ok(())
    }

    /// Points `id`'s waiting dependents at its current job, or lets them
    /// go once it has ended (they decide their `if:` themselves).
    fn point_dependents(&self, id: InstanceId) {
        for &d in self.plan.dependents(id) {
            let t = &self.tracked[d.0];
            if t.end.is_some() || t.cancelled.is_some() {
                continue;
            }
            let Some(job) = t.jobs.last() else {
                continue;
            };
            if let Err(e) = commands::set_dependency(job, &dependency(&self.waiting_on(d))) {
                tracing::warn!("slurm: {e}");
            }
        }
    }

    fn finish(
        &mut self,
        id: InstanceId,
        end: StepEnd,
        job_state: Option<&str>,
        reporter: &mut Reporter<'_>,
    ) {
        let verdict = end.verdict();
        self.tracked[id.0].end = Some(verdict);
        reporter.emit(RunEvent::StepFinished {
            step: step(id),
            end,
        });
        // Only a job that exited 0 satisfies `afterok`: release the
        // dependents of one that did not.
        if job_state.is_some_and(|s| s != "COMPLETED") {
            self.point_dependents(id);
        }
        let inst = self.plan.instance(id);
        if verdict.is_failure() && !inst.allow_failure && self.fail_fast && self.stopping.is_none()
        {
            self.stopping = Some(format!("fail-fast: `{}` failed", inst.name));
            reporter.emit(RunEvent::Notice(Notice::FailFast {
                step: inst.name.clone(),
                running: self.running_count(),
            }));
            self.cancel(false);
        }
    }

    /// Cancels the jobs that have not started (and, with `running`, those
    /// that have) of every unfinished instance.
    fn cancel(&mut self, running: bool) {
        let why = self.stopping.clone().unwrap_or_default();
        let mut ids = Vec::new();
        for t in &mut self.tracked {
            if t.end.is_some() || t.cancelled.is_some() {
                continue;
            }
            let started = t.state.as_ref().is_some_and(JobState::is_running) || t.started > 0;
            if running || !started {
                t.cancelled = Some(why.clone());
                ids.extend(t.jobs.last().cloned());
            }
        }
        if let Err(e) = commands::scancel(&ids) {
            tracing::warn!("slurm: {e}");
        }
    }

    /// Ends every unfinished instance as cancelled without waiting.
    fn end_the_rest(&mut self, reporter: &mut Reporter<'_>, why: &str) {
        let mut ids = Vec::new();
        for i in 0..self.plan.len() {
            if self.tracked[i].end.is_none() {
                ids.extend(self.tracked[i].jobs.last().cloned());
                self.tracked[i].end = Some(Verdict::Cancelled);
                let end = StepEnd::Cancelled(why.to_owned());
                let _ = self
                    .records
                    .write_end(&self.plan.instance(InstanceId(i)).name, &end);
                reporter.emit(RunEvent::StepFinished {
                    step: step(InstanceId(i)),
                    end,
                });
            }
        }
        let _ = commands::scancel(&ids);
    }
}

/// Job ids by instance, for a message.
pub fn job_range(jobs: &BTreeMap<String, Vec<String>>) -> String {
    let ids: Vec<u64> = jobs
        .values()
        .flatten()
        .filter_map(|j| j.parse().ok())
        .collect();
    match (ids.iter().min(), ids.iter().max()) {
        (Some(a), Some(b)) if a != b => format!("{a}..{b}"),
        (Some(a), _) => a.to_string(),
        _ => "none".into(),
    }
}
