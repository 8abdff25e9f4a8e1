//! The run as a stream of typed events, like nextest's reporter. The runner
//! emits them in order from its scheduling thread; the console (text or
//! JSON lines), `report.json` and `junit.xml` are sinks that build what
//! they show from the events alone. The scheduler keeps no report state,
//! and another output is another sink.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::logs::Stream;
use super::model::{
    Attempt, CacheReport, EgressReport, FileDigest, HostInfo, ImageReport, JobInfo, LogPaths,
    RunStatus, Usage, Verdict,
};

/// A step instance: its index in [`RunEvent::RunStarted`]'s `steps`
/// (manifest order, as in the reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepId(pub usize);

/// What the reports know of a step instance before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Instance name: `build`, `test[case=a]`.
    pub name: String,
    /// The step id.
    pub step: String,
    pub matrix: BTreeMap<String, String>,
    /// A failure does not fail the job.
    pub allow_failure: bool,
    /// The configured egress policy, nothing denied yet.
    pub egress: EgressReport,
    /// Where the step's own JUnit file lands on the host, if it has one.
    pub junit: Option<PathBuf>,
    /// The classname of its JUnit testcase, when the step chose one.
    pub junit_classname: Option<String>,
}

/// Tails of a step's output, for `system-out`/`system-err` and the
/// console's failure view.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tails {
    pub stdout: String,
    pub stderr: String,
    /// The last lines of both streams in the order they arrived (empty in
    /// records from before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub combined: String,
}

impl Tails {
    /// The output's last lines as they appeared: `combined` when kept,
    /// else stderr then stdout.
    pub fn in_order(&self) -> String {
        if self.combined.is_empty() {
            self.stderr.clone() + &self.stdout
        } else {
            self.combined.clone()
        }
    }
}

/// Everything one attempt produced. The Slurm executor records it in the
/// run directory as JSON, so its submitter and `sbxrun report` rebuild the
/// same events.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptOutcome {
    /// Verdict, exit, message and timings.
    pub attempt: Attempt,
    pub usage: Option<Usage>,
    pub artifacts: Vec<FileDigest>,
    pub missing_outputs: Vec<String>,
    /// `None` when the attempt ended before its network was set up: what
    /// was known of the step's network before stands.
    pub egress: Option<EgressReport>,
    /// The logs this attempt wrote; a `None` leaves an earlier attempt's.
    pub logs: LogPaths,
    pub tails: Tails,
    /// The root image, once it was resolved.
    pub image: Option<ImageReport>,
    /// What the step cache did (`None` with `--no-cache`).
    pub cache: Option<CacheReport>,
}

impl AttemptOutcome {
    /// An attempt that ended before its command ran: nothing but its
    /// verdict, message and timings.
    pub fn not_run(attempt: Attempt) -> Self {
        AttemptOutcome {
            attempt,
            usage: None,
            artifacts: Vec::new(),
            missing_outputs: Vec::new(),
            egress: None,
            logs: LogPaths::default(),
            tails: Tails::default(),
            image: None,
            cache: None,
        }
    }

    /// Whether the step did not run because the cache had its result.
    pub fn cache_hit(&self) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.status == super::model::CacheStatus::Hit)
    }
}

/// How a step instance ended for good.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "end", content = "detail")]
pub enum StepEnd {
    /// Its last attempt's verdict is the step's.
    Ran(Verdict),
    /// Not run: its condition did not hold (the reason says why).
    Skipped(String),
    /// Not run, or not run again, because the run stopped (the reason says
    /// why); a step that ran keeps its last attempt's message.
    Cancelled(String),
    /// It could not be started at all (an infrastructure fault).
    NotStarted(String),
}

impl StepEnd {
    /// The step's final verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            StepEnd::Ran(v) => *v,
            StepEnd::Skipped(_) => Verdict::Skipped,
            StepEnd::Cancelled(_) => Verdict::Cancelled,
            StepEnd::NotStarted(_) => Verdict::Infra,
        }
    }
}

/// Something about the run itself worth telling its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A required step failed under `fail_fast`; nothing more starts.
    FailFast { step: String, running: usize },
    /// The first SIGINT/SIGTERM: running steps are stopped.
    Interrupted { signal: i32, running: usize },
    /// The second signal: the runner stops waiting.
    Quitting,
    /// A sink could not do its part (a report file was not written).
    Sink(String),
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::FailFast { step, running } => write!(
                f,
                "fail-fast: `{step}` failed; letting {running} running step(s) finish, starting no more"
            ),
            Notice::Interrupted { signal, running } => write!(
                f,
                "signal {signal}: cancelling (stopping {running} running step(s)); again to quit at once"
            ),
            Notice::Quitting => f.write_str("second signal: quitting now"),
            Notice::Sink(m) => f.write_str(m),
        }
    }
}

/// One thing that happened in a run. In a run: `RunStarted` first, then per
/// attempt `StepStarted`, `StepOutput`s and `AttemptFinished`, one
/// `StepFinished` per step (also for steps that never started), and
/// `RunFinished` last; `Notice`s anywhere in between.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    RunStarted {
        job: JobInfo,
        host: HostInfo,
        /// RFC 3339 UTC.
        started_at: String,
        /// Every step instance, in manifest order; [`StepId`]s index it.
        steps: Vec<StepInfo>,
    },
    /// An attempt started in a fresh VM.
    StepStarted {
        step: StepId,
        /// 1-based.
        attempt: u32,
        /// Attempts running now, this one included.
        running: usize,
        /// Steps waiting for a slot.
        queued: usize,
    },
    /// One line of a step's output, secrets masked. Emitted only when a
    /// sink asks for output ([`EventSink::wants_output`]).
    StepOutput {
        step: StepId,
        stream: Stream,
        line: String,
    },
    /// An attempt ended; `retrying` says another follows.
    AttemptFinished {
        step: StepId,
        outcome: Box<AttemptOutcome>,
        retrying: bool,
    },
    /// A step instance ended for good.
    StepFinished {
        step: StepId,
        end: StepEnd,
    },
    Notice(Notice),
    /// Every step has ended; the run's outcome.
    RunFinished {
        status: RunStatus,
        exit_code: i32,
        duration_ms: f64,
        /// VMs the run restored or booted.
        vms_started: u64,
    },
}

/// A sink could not do its part. The run goes on; the other sinks hear of
/// it as a [`Notice::Sink`].
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {file}: {error}")]
    Write {
        file: &'static str,
        error: std::io::Error,
    },
    #[error("cannot encode {file}: {reason}")]
    Encode { file: &'static str, reason: String },
}

/// Something that follows a run through its events.
pub trait EventSink {
    /// Takes one event.
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError>;

    /// The runner has handled one batch of events (an attempt's end and
    /// what follows from it): a good moment to persist.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The run stops being followed without having finished (a detached
    /// Slurm run): persist everything now, whatever the pacing.
    fn persist(&mut self) -> Result<(), SinkError> {
        self.flush()
    }

    /// Whether this sink wants [`RunEvent::StepOutput`] (each line costs a
    /// message between threads).
    fn wants_output(&self) -> bool {
        false
    }
}

/// The sinks of a run, fed in order.
pub struct Reporter<'a> {
    sinks: Vec<&'a mut dyn EventSink>,
}

impl<'a> Reporter<'a> {
    /// Feeds these sinks, in this order.
    pub fn new(sinks: Vec<&'a mut dyn EventSink>) -> Self {
        Reporter { sinks }
    }

    /// Passes `event` to every sink; a sink's failure becomes a notice.
    pub fn emit(&mut self, event: RunEvent) {
        self.each(|s| s.event(&event));
    }

    /// Lets every sink persist what it has.
    pub fn flush(&mut self) {
        self.each(|s| s.flush());
    }

    /// Makes every sink persist everything now.
    pub fn persist(&mut self) {
        self.each(|s| s.persist());
    }

    /// Whether any sink wants the steps' output lines.
    pub fn wants_output(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_output())
    }

    /// Does `f` to every sink; each failure becomes a notice.
    fn each(&mut self, mut f: impl FnMut(&mut dyn EventSink) -> Result<(), SinkError>) {
        let errors: Vec<SinkError> = self
            .sinks
            .iter_mut()
            .filter_map(|s| f(&mut **s).err())
            .collect();
        self.notify(errors);
    }

    fn notify(&mut self, errors: Vec<SinkError>) {
        for e in errors {
            let notice = RunEvent::Notice(Notice::Sink(e.to_string()));
            // A sink that fails on a notice has nowhere left to say so.
            for s in &mut self.sinks {
                let _ = s.event(&notice);
            }
        }
    }
}
