//! What can run now. An instance is decided once all its dependencies have
//! finished; its `if:` condition then says run or skip:
//!
//! - `success()` (default): run if every dependency succeeded (a failure of
//!   an `allow_failure` step counts as success); otherwise skip.
//! - `failure()`: run if something upstream failed: any instance this one
//!   depends on, directly or not, failed (not allowed to) or was cancelled.
//! - `always()`: run.

use std::collections::HashMap;

use super::expand::InstanceId;
use super::graph::Plan;
use crate::manifest::Condition;

/// How a finished instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Exited 0 (after any retries).
    Succeeded,
    /// Failed: non-zero exit, timeout, or an infrastructure fault that
    /// retries did not cure.
    Failed,
    /// Not run because its condition did not hold.
    Skipped,
    /// Stopped or never started because the run was cancelled.
    Cancelled,
}

/// The decision for instances whose dependencies have all finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    /// Start these.
    pub run: Vec<InstanceId>,
    /// Record these as [`Outcome::Skipped`].
    pub skip: Vec<InstanceId>,
}

/// Whether a finished instance counts as failed for its dependents.
fn failed(plan: &Plan, id: InstanceId, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Failed => !plan.instance(id).allow_failure,
        Outcome::Cancelled => true,
        Outcome::Succeeded | Outcome::Skipped => false,
    }
}

fn decide(condition: Condition, all_succeeded: bool, upstream_failed: bool) -> bool {
    match condition {
        Condition::Success => all_succeeded,
        Condition::Failure => upstream_failed,
        Condition::Always => true,
    }
}

impl Plan {
    /// Why `id` is skipped, given how its dependencies ended.
    pub fn skip_reason(
        &self,
        id: InstanceId,
        outcome: impl Fn(InstanceId) -> Option<Outcome>,
    ) -> String {
        for d in &self.instance(id).deps {
            let name = &self.instance(*d).name;
            match outcome(*d) {
                Some(Outcome::Failed) if !self.instance(*d).allow_failure => {
                    return format!("dependency `{name}` failed")
                }
                Some(Outcome::Skipped) => return format!("dependency `{name}` was skipped"),
                Some(Outcome::Cancelled) => return format!("dependency `{name}` was cancelled"),
                _ => {}
            }
        }
        match self.instance(id).condition {
            Condition::Failure => "condition `failure()` not met: nothing upstream failed".into(),
            _ => "condition not met".into(),
        }
    }

    /// Given the instances that have finished and how, the unfinished
    /// instances whose dependencies have all finished, split into those to
    /// start and those to skip. Instances already running are included
    /// (they are unfinished); the caller leaves out what it started. After
    /// recording the skips, call again: their dependents may now be
    /// decidable. [`Progress`] does this bookkeeping incrementally.
    pub fn ready(&self, finished: &HashMap<InstanceId, Outcome>) -> Ready {
        // "Something upstream failed", computed over finished instances in
        // dependency order.
        let mut tainted = vec![false; self.len()];
        for &id in self.topological_order() {
            if let Some(&o) = finished.get(&id) {
                let from_deps = self.instance(id).deps.iter().any(|d| tainted[d.0]);
                tainted[id.0] = failed(self, id, o) || from_deps;
            }
        }
        let mut ready = Ready::default();
        for id in (0..self.len()).map(InstanceId) {
            if finished.contains_key(&id) {
                continue;
            }
            let inst = self.instance(id);
            let mut all_done = true;
            let mut all_ok = true;
            let mut upstream = false;
            for d in &inst.deps {
                match finished.get(d) {
                    None => {
                        all_done = false;
                        break;
                    }
                    Some(&o) => {
                        all_ok &= o == Outcome::Succeeded
                            || (o == Outcome::Failed && !failed(self, *d, o));
                        upstream |= tainted[d.0];
                    }
                }
            }
            if !all_done {
                continue;
            }
            if decide(inst.condition, all_ok, upstream) {
                ready.run.push(id);
            } else {
                ready.skip.push(id);
            }
        }
        ready
    }
}

/// Incremental readiness for a scheduler: O(dependents) per finished
/// instance, and skips propagate on their own.
#[derive(Debug)]
pub struct Progress<'p> {
    plan: &'p Plan,
    waiting_on: Vec<usize>,
    all_ok: Vec<bool>,
    upstream: Vec<bool>,
    outcome: Vec<Option<Outcome>>,
}

impl<'p> Progress<'p> {
    /// Nothing finished yet.
    pub fn new(plan: &'p Plan) -> Self {
        let n = plan.len();
        Progress {
            plan,
            waiting_on: plan.instances().iter().map(|i| i.deps.len()).collect(),
            all_ok: vec![true; n],
            upstream: vec![false; n],
            outcome: vec![None; n],
        }
    }

    /// The instances with no dependencies (every plan's first step).
    pub fn start(&mut self) -> Ready {
        let roots: Vec<InstanceId> = self
            .plan
            .topological_order()
            .iter()
            .copied()
            .filter(|id| self.waiting_on[id.0] == 0)
            .collect();
        let mut ready = Ready::default();
        for id in roots {
            if !self.decide(id, &mut ready) {
                self.record(id, Outcome::Skipped, &mut ready);
            }
        }
        ready
    }

    /// Records that `id` finished; returns what became ready or skipped
    /// because of it (skips already recorded, and propagated).
    pub fn finish(&mut self, id: InstanceId, outcome: Outcome) -> Ready {
        let mut ready = Ready::default();
        self.record(id, outcome, &mut ready);
        ready
    }

    /// How an instance ended, if it has.
    pub fn outcome(&self, id: InstanceId) -> Option<Outcome> {
        self.outcome.get(id.0).copied().flatten()
    }

    /// Whether every instance has finished.
    pub fn is_done(&self) -> bool {
        self.outcome.iter().all(Option::is_some)
    }

    fn record(&mut self, id: InstanceId, outcome: Outcome, ready: &mut Ready) {
        // A worklist, not recursion: a skip can cascade down a chain of
        // thousands of instances.
        let plan = self.plan;
        let mut work = vec![(id, outcome)];
        while let Some((id, outcome)) = work.pop() {
            let Some(slot) = self.outcome.get_mut(id.0) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            *slot = Some(outcome);
            let is_failed = failed(plan, id, outcome);
            let ok = outcome == Outcome::Succeeded || (outcome == Outcome::Failed && !is_failed);
            let tainted = is_failed || self.upstream[id.0];
            for &d in plan.dependents(id) {
                self.all_ok[d.0] &= ok;
                self.upstream[d.0] |= tainted;
                self.waiting_on[d.0] -= 1;
                if self.waiting_on[d.0] == 0 && !self.decide(d, ready) {
                    work.push((d, Outcome::Skipped));
                }
            }
        }
    }

    /// Adds `id` to `ready.run` or `ready.skip`; returns whether it runs.
    fn decide(&mut self, id: InstanceId, ready: &mut Ready) -> bool {
        let cond = self.plan.instance(id).condition;
        let run = decide(cond, self.all_ok[id.0], self.upstream[id.0]);
        if run {
            ready.run.push(id);
        } else {
            ready.skip.push(id);
        }
        run
    }
}
