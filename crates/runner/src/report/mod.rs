//! Reports: the run's events → `report.json` (schema in
//! `schemas/report.schema.json`), `junit.xml` and the console view, each a
//! sink of the events; per-step logs with secrets masked.

pub mod console;
mod events;
mod files;
pub mod json_log;
pub mod junit;
mod logs;
mod mask;
mod model;
mod state;
pub mod term;
mod write;

pub use events::{
    AttemptOutcome, EventSink, Notice, Reporter, RunEvent, SinkError, StepEnd, StepId, StepInfo,
    Tails,
};
pub use files::{JsonReportFile, JunitFile};

pub use logs::{LineSink, StepLog, Stream, TAIL_LINES};
pub use mask::{mask_str, Masker, MASK};
#[cfg(test)]
pub(crate) use model::test_denials;
pub use model::{
    report_schema, Attempt, CacheReport, CacheStatus, EgressEvent, EgressReport, FileDigest,
    GuestTimings, HostInfo, ImageReport, JobInfo, Limit, LogPaths, Mismatch, Report, RunStatus,
    SlurmAttempt, StepReport, Timings, Usage, Verdict, REPORT_SCHEMA_ID, REPORT_VERSION,
};
pub use write::{atomic_write, Pacing, MIN_GAP};

#[cfg(test)]
mod sink_tests;
