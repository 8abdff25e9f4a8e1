//! Reports: step results → `report.json` (schema in
//! `schemas/report.schema.json`), `junit.xml`, per-step logs with secrets
//! masked, and the console view.

pub mod console;
pub mod junit;
mod logs;
mod mask;
mod model;
mod write;

pub use logs::{LineSink, StepLog, Stream, TAIL_LINES};
pub use mask::{mask_str, Masker, MASK};
#[cfg(test)]
pub(crate) use model::test_denials;
pub use model::{
    report_schema, Attempt, EgressEvent, EgressReport, FileDigest, GuestTimings, HostInfo, JobInfo,
    LogPaths, Report, RunStatus, StepReport, Timings, Usage, Verdict, REPORT_VERSION,
};
pub use write::atomic_write;
