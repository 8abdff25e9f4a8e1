//! The JSON report: what `report.json` holds. The schema checked in at
//! `schemas/report.schema.json` is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::artifacts::FileDigest;

/// Version of the report format; bumped on incompatible change.
pub const REPORT_VERSION: u32 = 2;

/// How a step instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Exited 0 and its outputs were valid.
    Passed,
    /// Exited non-zero, or produced invalid outputs.
    Failed,
    /// Ran out of time: wall clock (`timeout`) or CPU (`limits.cpu_time`);
    /// the attempt's `limit` says which.
    Tle,
    /// Reached its `limits.memory`, or killed by the guest's out-of-memory
    /// killer.
    Mle,
    /// Wrote more output than its limit allows.
    Ole,
    /// Exited 0, but its stdout is not the `expect`ed output (wrong
    /// answer).
    Wrong,
    /// Killed by a signal.
    Sig,
    /// Infrastructure: the VM failed to start or died, snapshot or host
    /// trouble.
    Infra,
    /// Not run: its `if:` condition did not hold (usually a dependency
    /// failed).
    Skipped,
    /// Not run, or stopped, because the run was interrupted or failed fast.
    Cancelled,
}

impl Verdict {
    /// Whether the step counts as failed (before `allow_failure`).
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            Verdict::Passed | Verdict::Skipped | Verdict::Cancelled
        )
    }

    /// The name used in reports and JUnit `type` attributes.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Tle => "TLE",
            Verdict::Mle => "MLE",
            Verdict::Ole => "OLE",
            Verdict::Wrong => "wrong",
            Verdict::Sig => "SIG",
            Verdict::Infra => "INFRA",
            Verdict::Skipped => "skipped",
            Verdict::Cancelled => "cancelled",
        }
    }
}

/// How the whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (a report written mid-run).
    Running,
    /// Every required step passed.
    Passed,
    /// A required step failed.
    Failed,
    /// Only infrastructure faults failed required steps.
    Infra,
    /// Stopped by a signal.
    Interrupted,
}

/// Where each phase's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    /// From becoming ready to starting (waiting for a slot).
    pub queued_ms: f64,
    /// Getting a restored VM from the pool.
    pub vm_acquire_ms: f64,
    /// Packing the inputs onto the input disk.
    pub inputs_ms: f64,
    /// From sending the command to its exit report (guest-side unpack and
    /// pack included).
    pub run_ms: f64,
    /// Validating and unpacking the output disk.
    pub outputs_ms: f64,
    /// All of the above.
    pub total_ms: f64,
    /// How `run_ms` divides inside the guest, by guest-init's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestTimings>,
}

/// Guest-init's own account of one request, in milliseconds. What `run_ms`
/// has beyond `total_ms` is the channel between host and guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GuestTimings {
    /// Setting the clock and RNG and configuring the network.
    pub prepare_ms: f64,
    /// Unpacking the inputs into the working directory.
    pub inputs_ms: f64,
    /// Preparing the sandbox and spawning the command.
    pub spawn_ms: f64,
    /// The command, from spawn until it exited and its output was drained.
    pub command_ms: f64,
    /// Packing the outputs onto the output disk.
    pub outputs_ms: f64,
    /// From reading the request to sending the exit report.
    pub total_ms: f64,
}

impl From<guest_init::proto::GuestPhases> for GuestTimings {
    fn from(p: guest_init::proto::GuestPhases) -> Self {
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        GuestTimings {
            prepare_ms: ms(0, p.prepared_us),
            inputs_ms: ms(p.prepared_us, p.inputs_us),
            spawn_ms: ms(p.inputs_us, p.spawned_us),
            command_ms: ms(p.spawned_us, p.exited_us),
            outputs_ms: ms(p.exited_us, p.outputs_us),
            total_ms: ms(0, p.reply_us),
        }
    }
}

/// Resource usage the guest reported for the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
    /// Wall time in the guest, spawn to exit.
    pub wall_us: u64,
}

/// One attempt at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The limit a `tle`, `mle` or `ole` attempt ran into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    /// Where a `wrong` attempt's output first differs from the expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
    pub timings: Timings,
    /// Where the Slurm executor ran it (absent for local runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmAttempt>,
}

/// Which limit ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The wall-clock `timeout` (verdict `tle`).
    WallTime,
    /// `limits.cpu_time` (verdict `tle`).
    CpuTime,
    /// `limits.memory` (verdict `mle`; an out-of-memory VM has no limit).
    Memory,
    /// `limits.output` (verdict `ole`).
    Output,
}

/// The first difference between a step's stdout and its expected output.
/// Texts are cut to a few dozen characters, secrets masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Mismatch {
    /// The comparison: `exact`, `trim` or `tokens`.
    pub compare: String,
    /// 1-based line of the output where it differs.
    pub line: u64,
    /// With `tokens`: the 1-based number of the token that differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The expected line or token; absent where the expected output ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The printed line or token; absent where the output ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
}

/// A Slurm job that ran (or was to run) one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SlurmAttempt {
    /// The Slurm job id.
    pub job_id: String,
    /// The node it ran on (empty if it never started).
    #[serde(default)]
    pub node: String,
    /// Milliseconds from submission to start, by Slurm's clock (1 s
    /// resolution), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<f64>,
}

/// A network egress event: something the step's policy denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EgressEvent {
    /// Milliseconds since the step's network was set up.
    pub at_ms: u64,
    /// `dns-refused`, `dns-rebinding-dropped`, `connect-denied`,
    /// `server-name-mismatch`, `protocol-dropped` or `broker-failed`.
    pub kind: String,
    /// The DNS name, TLS server name or HTTP Host involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub detail: String,
}

impl From<&sbxrun_egress::EgressEvent> for EgressEvent {
    fn from(e: &sbxrun_egress::EgressEvent) -> Self {
        EgressEvent {
            at_ms: e.at_ms,
            kind: e.kind.as_str().to_owned(),
            name: e.name.clone(),
            ip: e.ip.map(|ip| ip.to_string()),
            port: e.port,
            detail: e.detail.clone(),
        }
    }
}

/// A step's network: its policy and what it denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EgressReport {
    /// `none`, `public` or `allow`.
    pub policy: String,
    /// Denials by kind, counting every one (kept in `events` or not).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub denied: BTreeMap<String, u64>,
    /// The first denials, in order.
    pub events: Vec<EgressEvent>,
    /// Denials not kept in `events` (the list is capped).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events_not_kept: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EgressReport {
    /// The report of a step's policy and the broker's event log.
    pub fn new(policy: &sbxrun_egress::EgressPolicy, log: &sbxrun_egress::EventLog) -> Self {
        let counts = log.counts();
        EgressReport {
            policy: match policy {
                sbxrun_egress::EgressPolicy::None => "none",
                sbxrun_egress::EgressPolicy::Public => "public",
                sbxrun_egress::EgressPolicy::Allow(_) => "allow",
            }
            .to_owned(),
            denied: sbxrun_egress::EgressEventKind::ALL
                .iter()
                .filter(|k| counts.get(**k) > 0)
                .map(|k| (k.as_str().to_owned(), counts.get(*k)))
                .collect(),
            events: log.events().iter().map(EgressEvent::from).collect(),
            events_not_kept: log.dropped(),
        }
    }

    /// Every denial, kept or not.
    pub fn total_denied(&self) -> u64 {
        self.denied.values().sum()
    }
}

/// Paths of a step's logs, relative to the run directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogPaths {
    /// stdout and stderr, interleaved, each line tagged `out|` or `err|`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The guest's serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

/// One step instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    /// Instance name: `build`, `test[case=a]`.
    pub name: String,
    /// The step id.
    pub step: String,
    /// Matrix values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
    pub verdict: Verdict,
    /// Exit code of the last attempt's command, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the step failed, was skipped or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A failure does not fail the job.
    pub allow_failure: bool,
    /// Every attempt, in order (empty when never started).
    pub attempts: Vec<Attempt>,
    /// Timings of the last attempt.
    pub timings: Timings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every output file with its size and SHA-256, paths relative to
    /// `artifacts/<name>/`.
    pub artifacts: Vec<FileDigest>,
    /// Declared outputs that matched nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_outputs: Vec<String>,
    /// The network policy and what it denied (last attempt).
    pub egress: EgressReport,
    pub logs: LogPaths,
    /// The root image the step booted, when it was not the built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
    /// The step did not run: its result, outputs and log come from the
    /// step cache (`cache` says from when). The verdict is the original.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cached: bool,
    /// What the step cache did with the step (absent with `--no-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
    /// The classname of its JUnit testcase, when the step chose one
    /// (`junit_classname`; otherwise the step id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_classname: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What the step cache did with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// Not run: reused from the cache.
    Hit,
    /// Ran, and its result was stored for later runs.
    Stored,
    /// Ran; its result was not stored (`reason` says why).
    NotStored,
    /// Not cacheable, or its key could not be computed (`reason` says
    /// why): it ran and nothing was looked up.
    Off,
}

/// A step's key, and what the cache did with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CacheReport {
    pub status: CacheStatus,
    /// Lowercase hex SHA-256 over the parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The SHA-256 of each part of the key: `kernel`, `initramfs`,
    /// `image`, `shape`, `command`, `env`, `inputs`, ….
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, String>,
    /// The parts that differ from this instance's last run on this host:
    /// why it missed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Why nothing was looked up or stored, or why a lookup missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a hit: when the result was stored (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
    /// For a hit: how long the step took when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_ms: Option<f64>,
}

/// A step's root image: what the manifest named and what that resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageReport {
    /// As the manifest wrote it (local sources with absolute paths).
    pub reference: String,
    /// `sha256:<hex>` of a container image's manifest: the image that ran,
    /// whatever its tag points to later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// This run pulled, imported or built it (it was not in the cache).
    pub pulled: bool,
}

/// The job that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobInfo {
    pub name: String,
    /// The manifest file as given.
    pub manifest: String,
}

/// The host the run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostInfo {
    /// `hardware` or `pvm`.
    pub kvm_flavour: String,
    pub cpus: u32,
    pub sbxrun_version: String,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "sbxrun run report")]
pub struct Report {
    pub version: u32,
    pub job: JobInfo,
    pub status: RunStatus,
    /// The exit code sbxrun returns for this run.
    pub exit_code: i32,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub duration_ms: f64,
    /// VMs the run restored from snapshots or booted (warm VMs that were
    /// never used included): 0 when every step was cached.
    #[serde(default)]
    pub vms_started: u64,
    pub host: HostInfo,
    /// One entry per step instance, in manifest order.
    pub steps: Vec<StepReport>,
}

/// The report schema's `$id`.
pub const REPORT_SCHEMA_ID: &str = "https://sbxrun.dev/schemas/report.schema.json";

/// The JSON Schema of the report, as checked in.
pub fn report_schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Report>();
    schema.insert("$id".into(), REPORT_SCHEMA_ID.into());
    schema.to_value()
}

/// A one-job report around `steps`, for tests of the report writers.
#[cfg(test)]
pub(crate) fn test_report(steps: Vec<StepReport>) -> Report {
    Report {
        version: REPORT_VERSION,
        job: JobInfo {
            name: "job".into(),
            manifest: "job.yaml".into(),
        },
        status: RunStatus::Passed,
        exit_code: 0,
        started_at: "2024-01-01T00:00:00Z".into(),
        duration_ms: 1500.0,
        vms_started: 0,
        host: HostInfo {
            kvm_flavour: "hardware".into(),
            cpus: 2,
            sbxrun_version: "0".into(),
        },
        steps,
    }
}

/// An `allow` egress section with these denial counts by kind.
#[cfg(test)]
pub(crate) fn test_denials(kinds: &[(&str, u64)]) -> EgressReport {
    EgressReport {
        policy: "allow".into(),
        denied: kinds.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        ..EgressReport::default()
    }
}

/// A step that passed in one attempt, with this egress section.
#[cfg(test)]
pub(crate) fn test_step(name: &str, egress: EgressReport) -> StepReport {
    StepReport {
        name: name.into(),
        step: name.into(),
        matrix: BTreeMap::new(),
        verdict: Verdict::Passed,
        exit_code: Some(0),
        message: None,
        allow_failure: false,
        attempts: Vec::new(),
        timings: Timings {
            total_ms: 1200.0,
            ..Timings::default()
        },
        usage: None,
        artifacts: Vec::new(),
        missing_outputs: Vec::new(),
        egress,
        logs: LogPaths::default(),
        image: None,
        cached: false,
        cache: None,
        junit_classname: None,
    }
}
