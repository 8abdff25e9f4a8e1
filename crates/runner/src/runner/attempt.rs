//! One attempt at one step instance: a fresh VM from the pool, inputs packed
//! onto its input disk, the command run with output streamed into the log,
//! outputs validated and unpacked, the VM destroyed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_init::proto::{
    ArtifactsRequest, Command as GuestCommand, ErrorCode, RunRequest, User as GuestUser,
};

use super::kill::KillSlot;
use super::pools::Pools;
use super::verdict::{enforce_egress, judge, oom_evidence, Ended, Observed};
use crate::artifacts::{self, InputItem, OutputLimits};
use crate::broker::{Broker, BrokerConfig, Overrides, CONNECT_TIMEOUT};
use crate::manifest::{output_covers, User};
use crate::plan::{Command, Instance, Plan, PlannedInput};
use crate::pool::{session, OutputStream, RunError};
use crate::report::console::Console;
use crate::report::junit::Tails;
use crate::report::{Attempt, EgressReport, FileDigest, StepLog, Stream, Timings, Usage, Verdict};
use sbxrun_egress::EgressPolicy;

/// uid/gid of the guest's unprivileged step user.
const STEP_UID: u64 = 1000;

/// What all attempts of a run share.
pub struct RunShared {
    pub plan: Plan,
    pub run_dir: PathBuf,
    pub pools: Pools,
    pub console: Console,
    /// Every secret value of the job: masked in every log.
    pub secret_values: Vec<String>,
    /// Set when the run is being cancelled.
    pub cancelled: AtomicBool,
    /// `--resolve name=ip` overrides for the egress broker.
    pub resolve: Arc<Overrides>,
}

/// What an attempt produced.
pub struct AttemptResult {
    pub attempt: Attempt,
    pub usage: Option<Usage>,
    pub artifacts: Vec<FileDigest>,
    pub missing_outputs: Vec<String>,
    pub tails: Tails,
    pub has_console: bool,
    /// `None` when the attempt ended before its network was set up.
    pub egress: Option<EgressReport>,
}

/// A file-system-friendly name for an instance (`test[case=a]` is fine on
/// Linux; only `/` has to go).
pub fn file_name(instance: &str) -> String {
    instance.replace('/', "_")
}

/// Where an instance's artifacts land.
pub fn artifact_dir(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join("artifacts").join(file_name(instance))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn input_items(shared: &RunShared, inst: &Instance) -> Vec<InputItem> {
    let mut items = Vec::new();
    for input in &inst.inputs {
        match input {
            PlannedInput::Host { path, to } => items.push(InputItem {
                root: path.clone(),
                filter: None,
                to: to.clone(),
            }),
            PlannedInput::Step { from, path, to, .. } => {
                for id in from {
                    let dir = artifact_dir(&shared.run_dir, &shared.plan.instance(*id).name);
                    // A producer that failed (allowed) or was skipped has none.
                    if dir.is_dir() {
                        items.push(InputItem {
                            root: dir,
                            filter: path.clone(),
                            to: to.clone(),
                        });
                    }
                }
            }
        }
    }
    items
}

/// The guest's request; `input_bytes` is the length of the packed inputs'
/// archive, when there are inputs.
fn request(inst: &Instance, input_bytes: Option<u64>) -> RunRequest {
    let s = &inst.settings;
    let mut env: Vec<(String, String)> = inst
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for name in &inst.secrets {
        if let Ok(v) = std::env::var(name) {
            env.push((name.clone(), v));
        }
    }
    let mut outputs = inst.outputs.clone();
    if let Some(j) = &inst.junit {
        if !outputs.iter().any(|o| output_covers(o, j)) {
            outputs.push(j.clone());
        }
    }
    RunRequest {
        command: match &inst.command {
            Command::Shell(script) => GuestCommand::Shell(script.clone()),
            Command::Exec(argv) => GuestCommand::Argv(argv.clone()),
            Command::ImageDefault => GuestCommand::Argv(Vec::new()),
        },
        env,
        cwd: guest_init::proto::DEFAULT_CWD.into(),
        user: match s.user {
            User::Root => GuestUser::Root,
            User::Unprivileged => GuestUser::Unprivileged,
        },
        rlimits: guest_init::proto::Rlimits {
            nofile: Some(u64::from(s.open_files)),
            nproc: Some(u64::from(s.pids)),
            fsize: Some(s.file_size.0),
            address_space: None,
        },
        unix_time_ns: session::host_clock_ns(),
        rng_seed: session::fresh_seed(),
        timeout_ms: Some(s.timeout.0.as_millis() as u64),
        stdin: None,
        artifacts: ArtifactsRequest {
            unpack_inputs: input_bytes.is_some(),
            input_bytes,
            outputs,
        },
        network: None,
    }
}

fn failed_early(verdict: Verdict, message: String, timings: Timings) -> AttemptResult {
    AttemptResult {
        attempt: Attempt {
            verdict,
            exit_code: None,
            signal: None,
            message: Some(message),
            timings,
        },
        usage: None,
        artifacts: Vec::new(),
        missing_outputs: Vec::new(),
        tails: Tails::default(),
        has_console: false,
        egress: None,
    }
}

/// Reads the end of a console log (where an OOM report would be).
fn console_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs one attempt. Never panics on guest behaviour; every failure is a
/// verdict.
pub fn run_attempt(
    shared: &Arc<RunShared>,
    inst: &Instance,
    queued: Duration,
    slot: &KillSlot,
) -> AttemptResult {
    let started = Instant::now();
    let mut timings = Timings {
        queued_ms: ms(queued),
        ..Timings::default()
    };
    let name = file_name(&inst.name);
    let logs = shared.run_dir.join("logs");

    let pool = match shared.pools.get(&inst.settings) {
        Ok(p) => p,
        Err(m) => return failed_early(Verdict::Infra, m, timings),
    };
    let lease = pool.acquire();
    timings.vm_acquire_ms = ms(started.elapsed());
    let mut lease = match lease {
        Ok(l) => l,
        Err(e) => {
            let m = format!("cannot start a VM: {}", crate::errors::chain(&e));
            return failed_early(Verdict::Infra, m, timings);
        }
    };
    slot.set(lease.vm.pid());
    if shared.cancelled.load(Ordering::Acquire) {
        slot.clear();
        return failed_early(Verdict::Cancelled, "the run was cancelled".into(), timings);
    }

    let t = Instant::now();
    let items = input_items(shared, inst);
    let owner = match inst.settings.user {
        User::Root => (0, 0),
        User::Unprivileged => (STEP_UID, STEP_UID),
    };
    let disk_bytes = std::fs::metadata(&lease.disks.input)
        .map(|m| m.len())
        .unwrap_or(0);
    let mut input_bytes = None;
    if !items.is_empty() {
        match artifacts::pack_inputs(&items, &lease.disks.input, owner, disk_bytes) {
            Ok(stats) => input_bytes = Some(stats.archive_bytes),
            Err(e) => {
                slot.clear();
                timings.inputs_ms = ms(t.elapsed());
                let verdict = match e {
                    artifacts::ArtifactError::InputTooLarge { .. } => Verdict::Failed,
                    _ => Verdict::Infra,
                };
                return failed_early(
                    verdict,
                    format!("cannot pack the inputs: {}", crate::errors::chain(&e)),
                    timings,
                );
            }
        }
    }
    timings.inputs_ms = ms(t.elapsed());

    let log_path = logs.join(format!("{name}.log"));
    let limit = inst.settings.output.0;
    let mut log = match StepLog::create(Some(&log_path), &shared.secret_values, limit) {
        Ok(l) => l,
        Err(e) => {
            slot.clear();
            return failed_early(
                Verdict::Infra,
                format!("cannot write {}: {e}", log_path.display()),
                timings,
            );
        }
    };
    {
        let shared = shared.clone();
        let iname = inst.name.clone();
        log.on_line(Box::new(move |stream, line| {
            shared.console.line(&iname, stream == Stream::Err, line);
        }));
    }
    let mut req = request(inst, input_bytes);
    let policy = super::policy::egress_policy(&inst.settings.egress);
    let broker = match start_broker(shared, &mut lease.vm, &policy) {
        Ok(broker) => broker,
        Err(m) => {
            slot.clear();
            return failed_early(Verdict::Infra, m, timings);
        }
    };
    if broker.is_some() {
        req.network = Some(network_setup());
    }
    let timeout = inst.settings.timeout.0;
    // Room for guest-side packing of the outputs after the command.
    let host_timeout = timeout + Duration::from_secs(30) + timeout / 10;
    let t = Instant::now();
    let mut exceeded = false;
    let result = session::run(&mut lease.vm, &req, host_timeout, &mut |stream, bytes| {
        let s = match stream {
            OutputStream::Stdout => Stream::Out,
            OutputStream::Stderr => Stream::Err,
        };
        if !log.write(s, bytes) && !exceeded {
            exceeded = true;
            slot.kill();
        }
    });
    timings.run_ms = ms(t.elapsed());
    timings.guest = result
        .as_ref()
        .ok()
        .and_then(|o| o.exited.phases)
        .map(Into::into);
    log.finish();
    let egress_log = broker.map(Broker::finish).unwrap_or_default();
    let egress = EgressReport::new(&policy, &egress_log);

    let console_src = lease.console_log.clone();
    let console = console_src.as_deref().map(console_tail).unwrap_or_default();
    let ended = match &result {
        Ok(o) => Ended::Exited(o.exited),
        Err(RunError::Timeout(_)) => Ended::HostTimeout,
        Err(RunError::Guest(r)) if r.code == ErrorCode::CommandNotFound => {
            Ended::NotFound(r.message.clone())
        }
        Err(e) => Ended::Broken(crate::errors::chain(e)),
    };
    let observed = Observed {
        ended,
        output_exceeded: exceeded,
        cancelled: shared.cancelled.load(Ordering::Acquire),
        oom_in_console: oom_evidence(&console),
        timeout_secs: timeout.as_secs(),
    };
    let mut judged = enforce_egress(judge(&observed), inst.settings.on_violation, &egress);

    let t = Instant::now();
    let mut digests = Vec::new();
    let mut missing = Vec::new();
    let mut usage = None;
    if let Ok(outcome) = &result {
        let e = outcome.exited;
        usage = Some(Usage {
            user_us: e.rusage.user_us,
            system_us: e.rusage.system_us,
            max_rss_kib: e.rusage.max_rss_kib,
            wall_us: e.wall_us,
        });
        if !req.artifacts.outputs.is_empty() && judged.verdict != Verdict::Ole {
            let dest = artifact_dir(&shared.run_dir, &inst.name);
            let packed_ok = e.outputs.is_some_and(|p| !p.failed);
            let unpacked = if packed_ok {
                artifacts::unpack_outputs(
                    &lease.disks.output,
                    &dest,
                    &req.artifacts.outputs,
                    OutputLimits::default(),
                )
                .map_err(|err| format!("output disk rejected: {}", crate::errors::chain(&err)))
            } else {
                Err("the guest could not pack the outputs (see the log)".to_owned())
            };
            match unpacked {
                Ok(u) => {
                    digests = u.files;
                    missing = u.unmatched;
                }
                Err(m) => {
                    if judged.verdict == Verdict::Passed {
                        judged.verdict = Verdict::Failed;
                    }
                    judged.message = Some(match judged.message.take() {
                        Some(prev) => format!("{prev}; {m}"),
                        None => m,
                    });
                }
            }
        }
    }
    timings.outputs_ms = ms(t.elapsed());

    slot.clear();
    drop(lease);
    let mut has_console = false;
    if let Some(src) = console_src {
        has_console = std::fs::rename(&src, logs.join(format!("{name}.console"))).is_ok();
    }
    timings.total_ms = timings.queued_ms + ms(started.elapsed());
    let tails = Tails {
        stdout: log.tail(Stream::Out),
        stderr: log.tail(Stream::Err),
    };
    AttemptResult {
        attempt: Attempt {
            verdict: judged.verdict,
            exit_code: judged.exit_code,
            signal: judged.signal,
            message: judged
                .message
                .map(|m| crate::report::mask_str(&m, &shared.secret_values)),
            timings,
        },
        usage,
        artifacts: digests,
        missing_outputs: missing,
        tails,
        has_console,
        egress: Some(egress),
    }
}

/// Starts the step's egress broker on the VM's broker channel, unless the
/// step has no network (then the VMM keeps its default: deny everything,
/// and the guest's interface stays down).
fn start_broker(
    shared: &RunShared,
    vm: &mut crate::pool::vm::VmHandle,
    policy: &EgressPolicy,
) -> Result<Option<Broker>, String> {
    if *policy == EgressPolicy::None {
        return Ok(None);
    }
    let sock = vm
        .take_net_channel()
        .ok_or("the VM's network channel was already used")?;
    let config = BrokerConfig {
        policy: policy.clone(),
        overrides: shared.resolve.clone(),
        connect_timeout: CONNECT_TIMEOUT,
    };
    Broker::start(sock, config)
        .map(Some)
        .map_err(|e| format!("cannot start the egress broker: {e}"))
}

/// The guest side of the VMM's network, as guest-init configures it.
fn network_setup() -> guest_init::proto::NetworkSetup {
    use sbxrun_proto::guest_net::{GATEWAY_IP, GUEST_IP, PREFIX_LEN};
    guest_init::proto::NetworkSetup {
        address: GUEST_IP,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY_IP,
        dns: GATEWAY_IP,
    }
}
