//! The scheduler: asks the plan what is ready, runs it up to the
//! concurrency limit (one thread per running attempt, each with its own
//! fresh VM), retries, decides skips with their reason, reacts to signals
//! and fail-fast, and tells the run's sinks what happened as events. It
//! keeps only what scheduling needs; the reports build their own state.
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

use super::attempt::{run_attempt, RunShared};
use super::kill::KillSlot;
use super::outcome::StepFinal;
use super::verdict::should_retry;
use crate::plan::{InstanceId, Outcome, Progress, Ready};
use crate::report::{
    AttemptOutcome, LineSink, Notice, Reporter, RunEvent, StepEnd, StepId, Stream, Verdict,
};

/// What the scheduling thread hears about.
pub enum Msg {
    /// An attempt finished.
    Finished(InstanceId, Box<AttemptOutcome>),
    /// A line of a running step's output (only when a sink wants them).
    Output(InstanceId, Stream, String),
    /// SIGINT or SIGTERM arrived.
    Signal(i32),
}

/// Per-instance scheduling state.
#[derive(Default)]
struct StepState {
    /// Attempts finished so far.
    attempts: u32,
    ready_at: Option<Instant>,
    slot: Option<KillSlot>,
    /// The final verdict, once the instance has ended.
    end: Option<Verdict>,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything ran (or was skipped).
    Completed,
    /// Interrupted by a signal.
    Interrupted,
}

/// The scheduling loop.
pub struct Scheduler {
    shared: Arc<RunShared>,
    concurrency: usize,
    fail_fast: bool,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    steps: Vec<StepState>,
    queue: VecDeque<InstanceId>,
    running: usize,
    stopping: Option<String>,
}

fn step_id(id: InstanceId) -> StepId {
    StepId(id.0)
}

impl Scheduler {
    /// A scheduler for `shared.plan`.
    pub fn new(shared: Arc<RunShared>, concurrency: usize, fail_fast: bool) -> Self {
        let (tx, rx) = mpsc::channel();
        let steps = (0..shared.plan.len())
            .map(|_| StepState::default())
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
    pub fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Each instance's final verdict and whether its failure is allowed, in
    /// plan order (after [`Scheduler::run`], every instance has ended).
    pub fn ends(&self) -> Vec<StepFinal> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepFinal {
                verdict: s.end.unwrap_or(Verdict::Cancelled),
                allow_failure: self.shared.plan.instance(InstanceId(i)).allow_failure,
            })
            .collect()
    }

    fn end(&mut self, reporter: &mut Reporter<'_>, id: InstanceId, end: StepEnd) {
        self.steps[id.0].end = Some(end.verdict());
        reporter.emit(RunEvent::StepFinished {
            step: step_id(id),
            end,
        });
    }

    fn skip_reason(&self, progress: &Progress<'_>, id: InstanceId) -> String {
        self.shared.plan.skip_reason(id, |d| progress.outcome(d))
    }

    fn take_ready(
        &mut self,
        reporter: &mut Reporter<'_>,
        progress: &Progress<'_>,
        mut ready: Ready,
    ) {
        let now = Instant::now();
        for id in ready.skip {
            // Once the run is stopping, what was never run is cancelled,
            // not skipped: its condition was never really evaluated.
            let end = match self.stopping.clone() {
                Some(why) => StepEnd::Cancelled(why),
                None => StepEnd::Skipped(self.skip_reason(progress, id)),
            };
            self.end(reporter, id, end);
        }
        // Start in manifest order among what is ready.
        ready.run.sort();
        for id in ready.run {
            self.steps[id.0].ready_at = Some(now);
            self.queue.push_back(id);
        }
    }

    /// Forwards a step's output lines to the scheduling thread.
    fn output_forwarder(&self, id: InstanceId) -> LineSink {
        let tx = self.tx.clone();
        Box::new(move |stream, line| {
            let _ = tx.send(Msg::Output(id, stream, line.to_owned()));
        })
    }

    fn dispatch(&mut self, reporter: &mut Reporter<'_>) {
        while self.running < self.concurrency && self.stopping.is_none() {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let on_line = reporter.wants_output().then(|| self.output_forwarder(id));
            let st = &mut self.steps[id.0];
            let queued = st.ready_at.map(|t| t.elapsed()).unwrap_or_default();
            let slot = KillSlot::default();
            st.slot = Some(slot.clone());
            let attempt = st.attempts + 1;
            self.running += 1;
            reporter.emit(RunEvent::StepStarted {
                step: step_id(id),
                attempt,
                running: self.running,
                queued: self.queue.len(),
            });
            let shared = self.shared.clone();
            let tx = self.tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("step-{}", id.0))
                .spawn(move || {
                    let inst = shared.plan.instance(id);
                    let outcome = run_attempt(&shared, inst, queued, &slot, on_line);
                    let _ = tx.send(Msg::Finished(id, Box::new(outcome)));
                });
            if let Err(e) = spawned {
                self.running -= 1;
                // The plan is not told: its dependents end as not run.
                let end = StepEnd::NotStarted(format!("cannot start a thread: {e}"));
                self.end(reporter, id, end);
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

    /// Reports an attempt; returns the outcome when the instance is final.
    fn record(
        &mut self,
        reporter: &mut Reporter<'_>,
        id: InstanceId,
        outcome: Box<AttemptOutcome>,
    ) -> Option<Outcome> {
        let inst = self.shared.plan.instance(id);
        let st = &mut self.steps[id.0];
        st.slot = None;
        st.attempts += 1;
        let verdict = outcome.attempt.verdict;
        let retrying = self.stopping.is_none()
            && !self.shared.cancelled.load(Ordering::Acquire)
            && should_retry(verdict, st.attempts, inst.settings.retries, &inst.retry_on);
        reporter.emit(RunEvent::AttemptFinished {
            step: step_id(id),
            outcome,
            retrying,
        });
        if retrying {
            st.ready_at = Some(Instant::now());
            self.queue.push_front(id);
            return None;
        }
        self.end(reporter, id, StepEnd::Ran(verdict));
        Some(super::outcome::outcome_of(verdict))
    }

    /// Runs the plan to the end (or until interrupted). The reporter's
    /// sinks are flushed whenever a step finishes, so reports on disk stay
    /// current.
    pub fn run(&mut self, reporter: &mut Reporter<'_>) -> Stop {
        let shared = self.shared.clone();
        let mut progress = Progress::new(&shared.plan);
        let ready = progress.start();
        self.take_ready(reporter, &progress, ready);
        let mut signals = 0;
        loop {
            self.dispatch(reporter);
            if self.running == 0 && (self.queue.is_empty() || self.stopping.is_some()) {
                break;
            }
            // The report files are paced: a change they held back is
            // written by a later flush, so every wake-up flushes, and the
            // timeout bounds how late that is (workers bound their own
            // waits, so it is not needed for anything else).
            reporter.flush();
            let msg = match self.rx.recv_timeout(Duration::from_millis(500)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match msg {
                Msg::Finished(id, outcome) => {
                    self.running -= 1;
                    if let Some(outcome) = self.record(reporter, id, outcome) {
                        let failed =
                            outcome == Outcome::Failed && !shared.plan.instance(id).allow_failure;
                        let ready = progress.finish(id, outcome);
                        self.take_ready(reporter, &progress, ready);
                        if failed && self.fail_fast && self.stopping.is_none() {
                            let name = &shared.plan.instance(id).name;
                            self.stopping = Some(format!("fail-fast: `{name}` failed"));
                            reporter.emit(RunEvent::Notice(Notice::FailFast {
                                step: name.clone(),
                                running: self.running,
                            }));
                        }
                    }
                    reporter.flush();
                }
                Msg::Output(id, stream, line) => reporter.emit(RunEvent::StepOutput {
                    step: step_id(id),
                    stream,
                    line,
                }),
                Msg::Signal(signal) => {
                    signals += 1;
                    shared.cancelled.store(true, Ordering::Release);
                    self.stopping = Some("the run was interrupted".into());
                    self.kill_running();
                    if signals == 1 {
                        reporter.emit(RunEvent::Notice(Notice::Interrupted {
                            signal,
                            running: self.running,
                        }));
                    } else {
                        reporter.emit(RunEvent::Notice(Notice::Quitting));
                        break;
                    }
                }
            }
        }
        let reason = self
            .stopping
            .clone()
            .unwrap_or_else(|| "the run ended first".into());
        for i in 0..self.steps.len() {
            if self.steps[i].end.is_none() {
                self.end(reporter, InstanceId(i), StepEnd::Cancelled(reason.clone()));
            }
        }
        reporter.flush();
        if signals > 0 {
            Stop::Interrupted
        } else {
            Stop::Completed
        }
    }
}
