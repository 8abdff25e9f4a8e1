//! The scheduler: asks the plan what is ready, runs it up to the
//! concurrency limit (one thread per running attempt, each with its own
//! fresh VM), retries, records skips with their reason, reacts to signals
//! and fail-fast, and keeps the reports on disk current after every step.
//!
//! Fail-fast stops *starting* steps; steps already running finish and are
//! reported normally, everything not started is reported `cancelled`.
//! The first SIGINT/SIGTERM cancels: running VMs are killed, reports are
//! written with status `interrupted`. A second one stops waiting at once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::attempt::{run_attempt, AttemptResult, RunShared};
use super::kill::KillSlot;
use super::verdict::should_retry;
use crate::plan::{InstanceId, Outcome, Progress, Ready};
use crate::report::junit::Tails;
use crate::report::{LogPaths, StepReport, Timings, Verdict};

/// What the scheduler hears about.
pub enum Event {
    /// An attempt finished.
    Finished(InstanceId, Box<AttemptResult>),
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
}

/// Per-instance state.
pub struct StepState {
    pub report: StepReport,
    pub tails: Tails,
    ready_at: Option<Instant>,
    slot: Option<KillSlot>,
    pub done: bool,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything ran (or was skipped).
    Completed,
    /// Interrupted by a signal.
    Interrupted,
}

/// Called after every change worth saving (reports are rewritten).
pub type OnChange<'a> = dyn FnMut(&[StepState]) + 'a;

/// The scheduling loop.
pub struct Scheduler {
    shared: Arc<RunShared>,
    concurrency: usize,
    fail_fast: bool,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    pub steps: Vec<StepState>,
    queue: VecDeque<InstanceId>,
    running: usize,
    stopping: Option<String>,
}

fn empty_report(shared: &RunShared, id: InstanceId) -> StepReport {
    let inst = shared.plan.instance(id);
    StepReport {
        name: inst.name.clone(),
        step: inst.step.to_string(),
        matrix: inst.matrix.iter().cloned().collect(),
        verdict: Verdict::Cancelled,
        exit_code: None,
        message: None,
        allow_failure: inst.allow_failure,
        attempts: Vec::new(),
        timings: Timings::default(),
        usage: None,
        artifacts: Vec::new(),
        missing_outputs: Vec::new(),
        egress: crate::report::EgressReport::new(
            &super::policy::egress_policy(&inst.settings.egress),
            &sbxrun_egress::EventLog::new(),
        ),
        logs: LogPaths::default(),
    }
}

impl Scheduler {
    /// A scheduler for `shared.plan`.
    pub fn new(shared: Arc<RunShared>, concurrency: usize, fail_fast: bool) -> Self {
        let (tx, rx) = mpsc::channel();
        let steps = (0..shared.plan.len())
            .map(|i| StepState {
                report: empty_report(&shared, InstanceId(i)),
                tails: Tails::default(),
                ready_at: None,
                slot: None,
                done: false,
            })
            .collect();
        Scheduler {
            shared,
            concurrency: concurrency.max(1),
            fail_fast,
            tx,
            rx,
            steps,
            queue: VecDeque::new(),
            running: 0,
            stopping: None,
        }
    }

    /// A sender for outside events (signals).
    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }

    fn skip_reason(&self, progress: &Progress<'_>, id: InstanceId) -> String {
        let plan = &self.shared.plan;
        for d in &plan.instance(id).deps {
            let name = &plan.instance(*d).name;
            match progress.outcome(*d) {
                Some(Outcome::Failed) if !plan.instance(*d).allow_failure => {
                    return format!("dependency `{name}` failed")
                }
                Some(Outcome::Skipped) => return format!("dependency `{name}` was skipped"),
                Some(Outcome::Cancelled) => return format!("dependency `{name}` was cancelled"),
                _ => {}
            }
        }
        match plan.instance(id).condition {
            crate::manifest::Condition::Failure => {
                "condition `failure()` not met: nothing upstream failed".into()
            }
            _ => "condition not met".into(),
        }
    }

    fn take_ready(&mut self, progress: &Progress<'_>, mut ready: Ready) {
        let now = Instant::now();
        for id in ready.skip {
            let st_reason = self.skip_reason(progress, id);
            let stopping = self.stopping.clone();
            let st = &mut self.steps[id.0];
            // Once the run is stopping, what was never run is cancelled,
            // not skipped: its condition was never really evaluated.
            match stopping {
                Some(why) => {
                    st.report.verdict = Verdict::Cancelled;
                    st.report.message = Some(format!("not run: {why}"));
                }
                None => {
                    st.report.verdict = Verdict::Skipped;
                    st.report.message = Some(st_reason);
                }
            }
            st.done = true;
        }
        // Start in manifest order among what is ready.
        ready.run.sort();
        for id in ready.run {
            self.steps[id.0].ready_at = Some(now);
            self.queue.push_back(id);
        }
    }

    fn dispatch(&mut self) {
        while self.running < self.concurrency && self.stopping.is_none() {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let st = &mut self.steps[id.0];
            let queued = st.ready_at.map(|t| t.elapsed()).unwrap_or_default();
            let slot = KillSlot::default();
            st.slot = Some(slot.clone());
            let attempt_no = st.report.attempts.len() + 1;
            self.running += 1;
            self.shared.console.started(
                &st.report.name,
                attempt_no,
                self.running,
                self.queue.len(),
            );
            let shared = self.shared.clone();
            let tx = self.tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("step-{}", id.0))
                .spawn(move || {
                    let inst = shared.plan.instance(id);
                    let result = run_attempt(&shared, inst, queued, &slot);
                    let _ = tx.send(Event::Finished(id, Box::new(result)));
                });
            if let Err(e) = spawned {
                self.running -= 1;
                let st = &mut self.steps[id.0];
                st.report.verdict = Verdict::Infra;
                st.report.message = Some(format!("cannot start a thread: {e}"));
                st.done = true;
            }
        }
    }

    fn kill_running(&self) {
        for st in &self.steps {
            if let Some(slot) = &st.slot {
                slot.kill();
            }
        }
    }

    /// Records an attempt; returns the outcome when the instance is final.
    fn record(&mut self, id: InstanceId, r: AttemptResult) -> Option<Outcome> {
        let inst = self.shared.plan.instance(id);
        let run_dir_logs = |n: &str| format!("logs/{n}");
        let st = &mut self.steps[id.0];
        st.slot = None;
        let verdict = r.attempt.verdict;
        let attempt_no = st.report.attempts.len() as u32 + 1;
        st.report.verdict = verdict;
        st.report.exit_code = r.attempt.exit_code;
        st.report.message = r.attempt.message.clone();
        st.report.timings = r.attempt.timings;
        st.report.usage = r.usage;
        st.report.artifacts = r.artifacts;
        st.report.missing_outputs = r.missing_outputs;
        // An attempt that ended before its network was set up has no
        // egress section of its own; the configured policy stays.
        if let Some(egress) = r.egress {
            st.report.egress = egress;
        }
        let fname = super::attempt::file_name(&inst.name);
        if verdict != Verdict::Cancelled || r.usage.is_some() {
            st.report.logs.output = Some(run_dir_logs(&format!("{fname}.log")));
        }
        if r.has_console {
            st.report.logs.console = Some(run_dir_logs(&format!("{fname}.console")));
        }
        st.report.attempts.push(r.attempt);
        st.tails = r.tails;
        let retry = self.stopping.is_none()
            && !self.shared.cancelled.load(Ordering::Acquire)
            && should_retry(verdict, attempt_no, inst.settings.retries, &inst.retry_on);
        let tail = st.tails.stderr.clone() + &st.tails.stdout;
        self.shared.console.finished(&st.report, retry, &tail);
        if retry {
            st.ready_at = Some(Instant::now());
            self.queue.push_front(id);
            return None;
        }
        st.done = true;
        Some(match verdict {
            Verdict::Passed => Outcome::Succeeded,
            Verdict::Skipped => Outcome::Skipped,
            Verdict::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed,
        })
    }

    /// Runs the plan to the end (or until interrupted). `on_change` is
    /// called whenever a step finishes, so reports on disk stay current.
    pub fn run(&mut self, on_change: &mut OnChange<'_>) -> Stop {
        let shared = self.shared.clone();
        let mut progress = Progress::new(&shared.plan);
        let ready = progress.start();
        self.take_ready(&progress, ready);
        let mut signals = 0;
        loop {
            self.dispatch();
            if self.running == 0 && (self.queue.is_empty() || self.stopping.is_some()) {
                break;
            }
            // Workers bound their own waits; the timeout here only keeps
            // the loop responsive if a sender is lost.
            let event = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match event {
                Event::Finished(id, result) => {
                    self.running -= 1;
                    if let Some(outcome) = self.record(id, *result) {
                        let failed =
                            outcome == Outcome::Failed && !shared.plan.instance(id).allow_failure;
                        let ready = progress.finish(id, outcome);
                        self.take_ready(&progress, ready);
                        if failed && self.fail_fast && self.stopping.is_none() {
                            let name = &shared.plan.instance(id).name;
                            let why = format!("fail-fast: `{name}` failed");
                            shared.console.notice(&format!(
                                "{why}; letting {} running step(s) finish, starting no more",
                                self.running
                            ));
                            self.stopping = Some(why);
                        }
                    }
                    on_change(&self.steps);
                }
                Event::Signal(sig) => {
                    signals += 1;
                    shared.cancelled.store(true, Ordering::Release);
                    self.stopping = Some("the run was interrupted".into());
                    self.kill_running();
                    if signals == 1 {
                        shared.console.notice(&format!(
                            "signal {sig}: cancelling (stopping {} running step(s)); again to quit at once",
                            self.running
                        ));
                    } else {
                        shared.console.notice("second signal: quitting now");
                        break;
                    }
                }
            }
        }
        let reason = self
            .stopping
            .clone()
            .unwrap_or_else(|| "the run ended first".into());
        for st in &mut self.steps {
            if !st.done {
                st.done = true;
                st.report.verdict = Verdict::Cancelled;
                if st.report.message.is_none() || st.report.attempts.is_empty() {
                    st.report.message = Some(format!("not run: {reason}"));
                }
            }
        }
        on_change(&self.steps);
        if signals > 0 {
            Stop::Interrupted
        } else {
            Stop::Completed
        }
    }
}
