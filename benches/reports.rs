//! What writing `report.json` and `junit.xml` costs a run as it grows:
//! rewriting both after every finished step (quadratic in the job's size)
//! against the paced rewrite the runner uses. Steps "finish" every
//! `SPACING` (what a job of cached or trivial steps does; real VM steps
//! are slower, which only widens the gap). Each step carries a realistic
//! report entry (one attempt, timings, a 40-line output tail).
//!
//! Columns: the time the sinks took in all (event handling + rewrites),
//! and how many times each file was rewritten. Depends on the disk's fsync
//! latency (every rewrite syncs) and on the report's size per step.
//! Run: `cargo bench --bench reports`. Asserts nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sbxrun_runner::report::{
    Attempt, AttemptOutcome, EgressReport, EventSink, HostInfo, JobInfo, JsonReportFile, JunitFile,
    Pacing, Reporter, RunEvent, RunStatus, StepEnd, StepId, StepInfo, Tails, Timings, Verdict,
};

const SPACING: Duration = Duration::from_millis(2);
const SIZES: [usize; 3] = [250, 1000, 4000];

fn started(n: usize) -> RunEvent {
    let steps = (0..n)
        .map(|i| StepInfo {
            name: format!("test[case={i}]"),
            step: "test".into(),
            matrix: BTreeMap::from([("case".into(), i.to_string())]),
            allow_failure: false,
            egress: EgressReport::default(),
            junit: None,
            junit_classname: None,
        })
        .collect();
    RunEvent::RunStarted {
        job: JobInfo {
            name: "bench".into(),
            manifest: "bench.yaml".into(),
        },
        host: HostInfo {
            kvm_flavour: "pvm".into(),
            cpus: 2,
            sbxrun_version: "bench".into(),
        },
        started_at: "2026-12-07T00:00:00Z".into(),
        steps,
    }
}

fn outcome() -> AttemptOutcome {
    let mut o = AttemptOutcome::not_run(Attempt {
        verdict: Verdict::Passed,
        exit_code: Some(0),
        signal: None,
        message: None,
        limit: None,
        mismatch: None,
        timings: Timings {
            total_ms: 812.5,
            run_ms: 700.0,
            ..Timings::default()
        },
        slurm: None,
    });
    let tail: String = (0..40)
        .map(|i| format!("line {i} of the step's output\n"))
        .collect();
    o.tails = Tails {
        stdout: tail.clone(),
        stderr: String::new(),
        combined: tail,
    };
    o
}

/// Counts rewrites by watching the file's modification.
struct Counting<S> {
    inner: S,
    path: std::path::PathBuf,
    seen: Option<std::time::SystemTime>,
    writes: u32,
}

impl<S: EventSink> Counting<S> {
    fn note(&mut self) {
        let m = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if m.is_some() && m != self.seen {
            self.seen = m;
            self.writes += 1;
        }
    }
}

impl<S: EventSink> EventSink for Counting<S> {
    fn event(&mut self, e: &RunEvent) -> Result<(), sbxrun_runner::report::SinkError> {
        let r = self.inner.event(e);
        self.note();
        r
    }
    fn flush(&mut self) -> Result<(), sbxrun_runner::report::SinkError> {
        let r = self.inner.flush();
        self.note();
        r
    }
}

/// (sink time, report.json rewrites, junit.xml rewrites)
fn run(n: usize, pacing: Pacing) -> (Duration, u32, u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut json = Counting {
        inner: JsonReportFile::new(dir.path()).paced(pacing),
        path: dir.path().join("report.json"),
        seen: None,
        writes: 0,
    };
    let mut junit = Counting {
        inner: JunitFile::new(dir.path()).paced(pacing),
        path: dir.path().join("junit.xml"),
        seen: None,
        writes: 0,
    };
    let mut spent = Duration::ZERO;
    {
        let mut reporter = Reporter::new(vec![&mut json, &mut junit]);
        let t = Instant::now();
        reporter.emit(started(n));
        spent += t.elapsed();
        let begin = Instant::now();
        for i in 0..n {
            let due = begin + SPACING * (i as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let t = Instant::now();
            let step = StepId(i);
            reporter.emit(RunEvent::StepStarted {
                step,
                attempt: 1,
                running: 1,
                queued: n - i - 1,
            });
            reporter.emit(RunEvent::AttemptFinished {
                step,
                outcome: Box::new(outcome()),
                retrying: false,
            });
            reporter.emit(RunEvent::StepFinished {
                step,
                end: StepEnd::Ran(Verdict::Passed),
            });
            reporter.flush();
            spent += t.elapsed();
        }
        let t = Instant::now();
        reporter.emit(RunEvent::RunFinished {
            status: RunStatus::Passed,
            exit_code: 0,
            duration_ms: begin.elapsed().as_secs_f64() * 1000.0,
            vms_started: 0,
        });
        spent += t.elapsed();
    }
    (spent, json.writes, junit.writes)
}

fn main() {
    println!(
        "steps finishing every {} ms; sink time = event handling + report rewrites",
        SPACING.as_millis()
    );
    println!(
        "{:>6}  {:<22} {:>11} {:>9} {:>14}",
        "steps", "rewrite", "sink time", "per step", "rewrites j/x"
    );
    for n in SIZES {
        for (label, pacing) in [
            ("after every step", Pacing::EveryFlush),
            ("paced (default)", Pacing::Bounded),
        ] {
            let (spent, json, junit) = run(n, pacing);
            println!(
                "{n:>6}  {label:<22} {:>10.2}s {:>7.2}ms {:>14}",
                spent.as_secs_f64(),
                spent.as_secs_f64() * 1000.0 / n as f64,
                format!("{json}/{junit}")
            );
        }
    }
}
