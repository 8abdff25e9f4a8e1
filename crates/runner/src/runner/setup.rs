//! Setting a run up: defaults the CLI offers, the run directory, the
//! secrets to mask, the signal listener, and what the sinks learn of the
//! run before any step starts.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use super::attempt::artifact_dir;
use super::scheduler::Msg;
use super::RunnerError;
use crate::manifest::Job;
use crate::plan::{InstanceId, Plan};
use crate::report::{EgressReport, HostInfo, JobInfo, RunEvent, StepInfo};

/// The default concurrency: twice the CPUs, between 2 and 16.
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 2).clamp(2, 16)
}

/// A default run directory name: `<job>-<UTC timestamp>`.
pub fn default_run_dir(job: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    PathBuf::from("sbxrun-out").join(format!("{job}-{stamp}"))
}

pub(super) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Creates the run directory's parts.
pub fn create_dirs(run_dir: &Path, console_dir: &Path) -> Result<(), RunnerError> {
    for d in [
        run_dir.join("artifacts"),
        run_dir.join("logs"),
        console_dir.to_path_buf(),
    ] {
        std::fs::create_dir_all(&d).map_err(|source| RunnerError::RunDir {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Every secret value of the job that is set: masked in every log.
pub fn secret_values(job: &Job) -> Vec<String> {
    job.steps
        .values()
        .flat_map(|s| s.secrets.iter())
        .filter_map(|n| std::env::var(n.as_str()).ok())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first event: the job, the host, and every step instance.
pub fn run_started(job: &Job, manifest: String, plan: &Plan, run_dir: &Path) -> RunEvent {
    let kvm = crate::host::probe_kvm();
    let steps = (0..plan.len())
        .map(|i| {
            let inst = plan.instance(InstanceId(i));
            StepInfo {
                name: inst.name.clone(),
                step: inst.step.to_string(),
                matrix: inst.matrix.iter().cloned().collect(),
                allow_failure: inst.allow_failure,
                egress: EgressReport::new(
                    &super::policy::egress_policy(&inst.settings.egress),
                    &sbxrun_egress::EventLog::new(),
                ),
                junit: inst
                    .junit
                    .as_ref()
                    .map(|j| artifact_dir(run_dir, &inst.name).join(j)),
                junit_classname: inst.junit_classname.clone(),
            }
        })
        .collect();
    RunEvent::RunStarted {
        job: JobInfo {
            name: job.name.to_string(),
            manifest,
        },
        host: HostInfo {
            kvm_flavour: serde_json::to_value(kvm.flavour)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            sbxrun_version: env!("CARGO_PKG_VERSION").into(),
        },
        started_at: rfc3339(time::OffsetDateTime::now_utc()),
        steps,
    }
}

/// Passes SIGINT and SIGTERM to the scheduler while the run lasts.
pub struct SignalListener {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl SignalListener {
    /// Installs the handlers; signals go to `tx`.
    pub fn start(tx: Sender<Msg>) -> Result<Self, RunnerError> {
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .map_err(RunnerError::Signals)?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        });
        Ok(SignalListener { handle, thread })
    }

    /// Removes the handlers and waits for the listener to end.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
