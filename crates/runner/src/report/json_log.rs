//! `--log-format json`: every event of a run as one JSON object per line,
//! all on stdout (the human view and errors stay on stderr), so a harness
//! reads one stream in order. Each line names its `event` and carries a
//! `timestamp`; step events carry the step id, instance name and matrix
//! values. The lines' schema (`schemas/events.schema.json`) is generated
//! from these types, so what is written and what is documented agree.

use std::collections::BTreeMap;
use std::io::Write;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::events::{RunEvent, StepEnd, StepInfo};
use super::logs::Stream;
use super::model::{Limit, Mismatch, Report, RunStatus, Verdict};

/// Version of the event lines; bumped on an incompatible change.
pub const EVENTS_VERSION: u32 = 1;

/// The `$id` of `schemas/events.schema.json`.
pub const EVENTS_SCHEMA_ID: &str = "https://sbxrun.dev/schemas/events.schema.json";

/// One line of the JSON log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// When the line was written: RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    #[serde(flatten)]
    pub event: LogEvent,
}

/// Which step instance an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Instance {
    /// The instance's name: `test[case=a]`, or the step id without a matrix.
    pub step: String,
    /// The step id as the manifest has it.
    pub id: String,
    /// The instance's matrix values (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
}

/// A stage of getting a root image or a VM snapshot ready before a step
/// can run: slow on first use, cached afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Started,
    Done,
    Failed,
}

/// What the line says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum LogEvent {
    /// The first line of a run.
    RunStarted {
        /// [`EVENTS_VERSION`].
        version: u32,
        job: String,
        manifest: String,
        /// Every step instance, in manifest order.
        steps: Vec<Instance>,
    },
    /// An attempt of a step started in a fresh VM.
    Started {
        #[serde(flatten)]
        instance: Instance,
        /// 1-based.
        attempt: u32,
        /// Attempts running now, this one included.
        running: usize,
        /// Steps waiting for a slot.
        queued: usize,
    },
    /// One line of a step's output (with `--verbose`), secrets masked.
    Output {
        #[serde(flatten)]
        instance: Instance,
        stream: OutputStream,
        line: String,
    },
    /// An attempt ended.
    Finished {
        #[serde(flatten)]
        instance: Instance,
        attempt: u32,
        verdict: Verdict,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The limit a `tle`, `mle` or `ole` attempt ran into.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<Limit>,
        /// Where a `wrong` attempt's output first differs from the expected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mismatch: Option<Mismatch>,
        /// Another attempt follows.
        retrying: bool,
        /// The step's result came from the step cache; nothing ran.
        cached: bool,
        /// The attempt's time, from leaving the queue to its end.
        duration_ms: f64,
        /// Time spent waiting for a slot first.
        queued_ms: f64,
        /// CPU time the command used in the guest (user + system).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_ms: Option<f64>,
        /// Egress denials by kind.
        egress_denied: BTreeMap<String, u64>,
    },
    /// A step instance ended for good (also one that never started).
    StepFinished {
        #[serde(flatten)]
        instance: Instance,
        verdict: Verdict,
        /// Attempts it made.
        attempts: u32,
        /// Why it did not run (skipped, cancelled, not started).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Something about the run itself (interrupts, fail-fast, a report
    /// file that could not be written).
    Notice { message: String },
    /// Every step has ended.
    RunFinished {
        status: RunStatus,
        exit_code: i32,
        duration_ms: f64,
        /// VMs restored or booted.
        vms_started: u64,
    },
    /// The last line: the outcome and where the reports are.
    Summary {
        status: RunStatus,
        exit_code: i32,
        run_dir: String,
        duration_ms: f64,
        /// Final verdicts, counted.
        verdicts: BTreeMap<String, u32>,
        /// Steps whose result came from the step cache.
        cached: u32,
        /// Egress denials by kind, for each step that had any.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        egress_denied: BTreeMap<String, BTreeMap<String, u64>>,
    },
    /// A registry image's manifest is known.
    ImageManifest {
        image: String,
        digest: String,
        layers: usize,
        /// Bytes to download (0: everything is cached).
        missing_bytes: u64,
    },
    /// A blob download starts (or resumes).
    ImageBlobStart {
        image: String,
        digest: String,
        size: u64,
        resumed_at: u64,
    },
    /// A blob is downloaded and verified.
    ImageBlobDone { image: String, digest: String },
    /// A layer is being applied.
    ImageLayer {
        image: String,
        digest: String,
        /// 0-based.
        index: usize,
        of: usize,
    },
    /// A root image is being built (from layers or from a directory).
    ImageBuild {
        image: String,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<f64>,
    },
    /// A registry image was already cached.
    ImageCached { image: String, digest: String },
    /// A VM shape has no snapshot yet: one VM boots cold and is
    /// snapshotted, once per image, memory size and vCPU count.
    SnapshotBuild {
        image: String,
        memory_mib: u32,
        vcpus: u8,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<f64>,
    },
}

/// The stream of an output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The schema of a line, as `schemas/events.schema.json` holds it.
pub fn events_schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<LogLine>()
        .to_value();
    schema["$id"] = serde_json::Value::from(EVENTS_SCHEMA_ID);
    schema
}

/// Now, as [`LogLine::timestamp`] has it.
pub fn timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Writes one line to stdout. A closed stdout (the reader went away) is
/// not the run's problem: the run goes on and its reports are written.
pub fn write(event: LogEvent) {
    write_to(&mut std::io::stdout().lock(), event);
}

/// Writes one line to stderr, for commands whose stdout is their result.
pub fn write_to_stderr(event: LogEvent) {
    write_to(&mut std::io::stderr().lock(), event);
}

/// Stamps and writes one line; called with the stream locked, so lines
/// from the pools' threads and the scheduler's never go back in time.
fn write_to(out: &mut dyn Write, event: LogEvent) {
    let line = LogLine {
        timestamp: timestamp(),
        event,
    };
    if let Ok(text) = serde_json::to_string(&line) {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Turns run events into lines; it remembers what later lines repeat
/// (instances, attempt numbers).
#[derive(Debug, Default)]
pub struct JsonLog {
    instances: Vec<Instance>,
    attempts: Vec<u32>,
}

impl JsonLog {
    fn instance(&self, index: usize) -> Instance {
        self.instances.get(index).cloned().unwrap_or(Instance {
            step: String::new(),
            id: String::new(),
            matrix: BTreeMap::new(),
        })
    }

    /// The line of `event`, if it has one.
    pub fn line(&mut self, event: &RunEvent) -> Option<LogEvent> {
        Some(match event {
            RunEvent::RunStarted { job, steps, .. } => {
                self.instances = steps.iter().map(instance_of).collect();
                self.attempts = vec![0; steps.len()];
                LogEvent::RunStarted {
                    version: EVENTS_VERSION,
                    job: job.name.clone(),
                    manifest: job.manifest.clone(),
                    steps: self.instances.clone(),
                }
            }
            RunEvent::StepStarted {
                step,
                attempt,
                running,
                queued,
            } => {
                if let Some(a) = self.attempts.get_mut(step.0) {
                    *a = *attempt;
                }
                LogEvent::Started {
                    instance: self.instance(step.0),
                    attempt: *attempt,
                    running: *running,
                    queued: *queued,
                }
            }
            RunEvent::StepOutput { step, stream, line } => LogEvent::Output {
                instance: self.instance(step.0),
                stream: match stream {
                    Stream::Out => OutputStream::Stdout,
                    Stream::Err => OutputStream::Stderr,
                },
                line: line.clone(),
            },
            RunEvent::AttemptFinished {
                step,
                outcome,
                retrying,
            } => {
                // A cache hit starts no attempt; it still counts as one.
                let attempt = self.attempts.get_mut(step.0).map_or(1, |a| {
                    *a = (*a).max(1);
                    *a
                });
                let a = &outcome.attempt;
                LogEvent::Finished {
                    instance: self.instance(step.0),
                    attempt,
                    verdict: a.verdict,
                    exit_code: a.exit_code,
                    signal: a.signal,
                    message: a.message.clone(),
                    limit: a.limit,
                    mismatch: a.mismatch.clone(),
                    retrying: *retrying,
                    cached: outcome.cache_hit(),
                    duration_ms: a.timings.total_ms,
                    queued_ms: a.timings.queued_ms,
                    cpu_ms: outcome
                        .usage
                        .as_ref()
                        .map(|u| (u.user_us + u.system_us) as f64 / 1000.0),
                    egress_denied: outcome
                        .egress
                        .as_ref()
                        .map(|e| e.denied.clone())
                        .unwrap_or_default(),
                }
            }
            RunEvent::StepFinished { step, end } => LogEvent::StepFinished {
                instance: self.instance(step.0),
                verdict: end.verdict(),
                attempts: self.attempts.get(step.0).copied().unwrap_or(0),
                reason: match end {
                    StepEnd::Ran(_) => None,
                    StepEnd::Skipped(r) | StepEnd::Cancelled(r) | StepEnd::NotStarted(r) => {
                        Some(r.clone())
                    }
                },
            },
            RunEvent::Notice(n) => LogEvent::Notice {
                message: n.to_string(),
            },
            RunEvent::RunFinished {
                status,
                exit_code,
                duration_ms,
                vms_started,
            } => LogEvent::RunFinished {
                status: *status,
                exit_code: *exit_code,
                duration_ms: *duration_ms,
                vms_started: *vms_started,
            },
        })
    }
}

fn instance_of(s: &StepInfo) -> Instance {
    Instance {
        step: s.name.clone(),
        id: s.step.clone(),
        matrix: s.matrix.clone(),
    }
}

/// The summary line of a finished run.
pub fn summary(report: &Report, run_dir: &str) -> LogEvent {
    let mut verdicts = BTreeMap::new();
    for s in &report.steps {
        *verdicts.entry(s.verdict.label().to_owned()).or_insert(0) += 1;
    }
    LogEvent::Summary {
        status: report.status,
        exit_code: report.exit_code,
        run_dir: run_dir.to_owned(),
        duration_ms: report.duration_ms,
        verdicts,
        cached: report.steps.iter().filter(|s| s.cached).count() as u32,
        egress_denied: report
            .steps
            .iter()
            .filter(|s| s.egress.total_denied() > 0)
            .map(|s| (s.name.clone(), s.egress.denied.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = timestamp();
        assert_eq!(t.len(), "2026-12-07T03:04:05.678Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).unwrap();
    }

    #[test]
    fn every_kind_of_line_validates_against_the_schema() {
        let schema = events_schema();
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let instance = Instance {
            step: "test[case=a]".into(),
            id: "test".into(),
            matrix: BTreeMap::from([("case".into(), "a".into())]),
        };
        let events = [
            LogEvent::RunStarted {
                version: EVENTS_VERSION,
                job: "j".into(),
                manifest: "j.yaml".into(),
                steps: vec![instance.clone()],
            },
            LogEvent::Started {
                instance: instance.clone(),
                attempt: 1,
                running: 1,
                queued: 0,
            },
            LogEvent::Finished {
                instance: instance.clone(),
                attempt: 1,
                verdict: Verdict::Failed,
                exit_code: Some(1),
                signal: None,
                message: Some("exited with code 1".into()),
                limit: None,
                mismatch: None,
                retrying: false,
                cached: false,
                duration_ms: 12.5,
                queued_ms: 0.0,
                cpu_ms: Some(3.0),
                egress_denied: BTreeMap::new(),
            },
            LogEvent::SnapshotBuild {
                image: "default".into(),
                memory_mib: 512,
                vcpus: 1,
                phase: Phase::Done,
                duration_ms: Some(27_900.0),
            },
        ];
        for event in events {
            let line = serde_json::to_value(LogLine {
                timestamp: timestamp(),
                event,
            })
            .unwrap();
            assert!(validator.is_valid(&line), "{line}");
            let mut broken = line.clone();
            broken["event"] = "no-such-event".into();
            assert!(!validator.is_valid(&broken), "{broken}");
            let mut untimed = line.clone();
            untimed.as_object_mut().unwrap().remove("timestamp");
            assert!(!validator.is_valid(&untimed), "{untimed}");
        }
    }

    #[test]
    fn step_lines_carry_the_instance_and_its_matrix() {
        let mut log = JsonLog {
            instances: vec![Instance {
                step: "t[n=1]".into(),
                id: "t".into(),
                matrix: BTreeMap::from([("n".into(), "1".into())]),
            }],
            attempts: vec![0],
        };
        let line = log
            .line(&RunEvent::StepFinished {
                step: super::super::StepId(0),
                end: StepEnd::Skipped("a dependency failed".into()),
            })
            .unwrap();
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["event"], "step-finished");
        assert_eq!(v["step"], "t[n=1]");
        assert_eq!(v["matrix"]["n"], "1");
        assert_eq!(v["verdict"], "skipped");
        assert_eq!(v["reason"], "a dependency failed");
    }
}
