//! One attempt at one step instance, one function per phase: lease a fresh
//! VM from the pool, pack the inputs onto its input disk, open the step's
//! log, start its egress broker, run the command with its output streamed
//! into the log, judge what happened, validate and unpack the outputs, and
//! destroy the VM.
//!
//! A phase that fails before the command runs ends the attempt with an
//! [`AttemptError`], which becomes the attempt's verdict and message. Once
//! the command has run, every trouble is part of the verdict instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_init::proto::{ErrorCode, RunRequest};

use super::cache::Lookup;
use super::expect::{self, Capture};
use super::kill::KillSlot;
use super::pools::Pools;
use super::request::{self, input_items, input_owner, network_setup, request};
use super::verdict::{
    enforce_egress, enforce_expect, judge, oom_evidence, Ended, Judged, Observed,
};
use crate::artifacts::{self, ArtifactError, FileDigest, OutputLimits};
use crate::broker::{Broker, BrokerConfig, Overrides, CONNECT_TIMEOUT};
use crate::errors::chain;
use crate::plan::{Instance, Plan};
use crate::pool::warm::{LeasedVm, PoolError};
use crate::pool::{session, OutputStream, RunError, RunOutcome, VmHandle};
use crate::report::{
    Attempt, AttemptOutcome, EgressReport, ImageReport, LineSink, LogPaths, StepLog, Stream, Tails,
    Timings, Usage, Verdict,
};
use sbxrun_egress::EgressPolicy;

/// What all attempts of a run share.
pub struct RunShared {
    pub plan: Plan,
    pub run_dir: PathBuf,
    pub pools: Pools,
    /// Every secret value of the job: masked in every log.
    pub secret_values: Vec<String>,
    /// Set when the run is being cancelled.
    pub cancelled: AtomicBool,
    /// `--resolve name=ip` overrides for the egress broker.
    pub resolve: Arc<Overrides>,
    /// The step cache.
    pub cache: super::RunCache,
}

/// Why an attempt ended before its command ran. The message (with its
/// sources) becomes the attempt's message.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The step's VM shape has no pool (unknown image, a snapshot that
    /// cannot be built); the pool map keeps that as text for every waiter.
    #[error("{0}")]
    Pool(String),
    #[error("cannot start a VM")]
    Lease(#[source] PoolError),
    #[error("the run was cancelled")]
    Cancelled,
    #[error("cannot pack the inputs")]
    Inputs(#[source] ArtifactError),
    #[error("cannot write {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM's network channel was already used")]
    NetChannelUsed,
    #[error("cannot start the egress broker")]
    Broker(#[source] std::io::Error),
    /// The step and its container image do not fit together (no command,
    /// no shell for a script, a user the image does not define).
    #[error("{0}")]
    Image(String),
    /// The step's expected output cannot be used.
    #[error("{0}")]
    Expect(String),
}

impl AttemptError {
    /// The attempt's verdict: inputs larger than the disk are the step's
    /// own doing, a cancel is a cancel, everything else is infrastructure.
    pub fn verdict(&self) -> Verdict {
        match self {
            AttemptError::Cancelled => Verdict::Cancelled,
            AttemptError::Inputs(ArtifactError::InputTooLarge { .. }) => Verdict::Failed,
            // Retrying cannot help: the manifest or the image must change.
            AttemptError::Image(_) | AttemptError::Expect(_) => Verdict::Failed,
            _ => Verdict::Infra,
        }
    }
}

/// A leased VM whose VMM pid is published in the step's kill slot. Dropping
/// it withdraws the pid before the VM handle is dropped, on every path out
/// of the attempt, so another thread never signals a pid that could have
/// been reused (see `kill.rs`).
struct Leased<'a> {
    slot: &'a KillSlot,
    lease: LeasedVm,
}

impl<'a> Leased<'a> {
    fn new(slot: &'a KillSlot, lease: LeasedVm) -> Self {
        slot.set(lease.vm.pid());
        Leased { slot, lease }
    }

    /// Destroys the VM; returns where its console log was written.
    fn release(self) -> Option<PathBuf> {
        self.lease.console_log.clone()
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        // Runs before the fields (the VM handle) are dropped.
        self.slot.clear();
    }
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

/// The logs an attempt leaves, relative to the run directory. An attempt
/// cancelled before its command ran wrote no output log.
fn log_paths(instance: &str, verdict: Verdict, ran: bool, has_console: bool) -> LogPaths {
    let name = file_name(instance);
    LogPaths {
        output: (verdict != Verdict::Cancelled || ran).then(|| format!("logs/{name}.log")),
        console: has_console.then(|| format!("logs/{name}.console")),
    }
}

/// Runs one attempt; `on_line` hears every line of its output. Never
/// panics on guest behaviour; every failure is a verdict.
pub fn run_attempt(
    shared: &RunShared,
    inst: &Instance,
    queued: Duration,
    slot: &KillSlot,
    on_line: Option<LineSink>,
) -> AttemptOutcome {
    let started = Instant::now();
    let mut timings = Timings {
        queued_ms: ms(queued),
        ..Timings::default()
    };
    match attempt(shared, inst, slot, started, &mut timings, on_line) {
        Ok(outcome) => outcome,
        // An attempt that never ran has no total: nothing of it was a step.
        Err(e) => AttemptOutcome {
            attempt: Attempt {
                verdict: e.verdict(),
                exit_code: None,
                signal: None,
                message: Some(chain(&e)),
                timings,
                limit: None,
                mismatch: None,
                slurm: None,
            },
            usage: None,
            artifacts: Vec::new(),
            missing_outputs: Vec::new(),
            egress: None,
            logs: log_paths(&inst.name, e.verdict(), false, false),
            tails: Tails::default(),
            image: None,
            cache: None,
        },
    }
}

/// The phases in order; `timings` keeps what was measured when one fails.
fn attempt(
    shared: &RunShared,
    inst: &Instance,
    slot: &KillSlot,
    started: Instant,
    timings: &mut Timings,
    on_line: Option<LineSink>,
) -> Result<AttemptOutcome, AttemptError> {
    // Resolved before a VM is leased: a step that cannot start on its image
    // takes no VM.
    let image = shared
        .pools
        .image(&inst.settings.image)
        .map_err(AttemptError::Pool)?;
    let start = request::start(inst, &image).map_err(AttemptError::Image)?;
    let expected = expected_output(inst)?;
    let mut cache = shared.cache.prepare(shared, inst, &image);
    match shared.cache.lookup(shared, inst, &mut cache, timings) {
        Lookup::Hit(hit) => return Ok(*hit),
        Lookup::Miss => {}
        Lookup::Cancelled => return Err(AttemptError::Cancelled),
    }
    let mut vm = Leased::new(slot, lease_vm(&shared.pools, inst, started, timings)?);
    if shared.cancelled.load(Ordering::Acquire) {
        return Err(AttemptError::Cancelled);
    }
    let owner = input_owner(start.user);
    let input_bytes = pack_inputs(shared, inst, owner, &vm.lease.disks.input, timings)?;
    let mut log = open_log(shared, inst, on_line)?;
    let mut req = request(inst, start, input_bytes);
    let policy = super::policy::egress_policy(&inst.settings.egress);
    let broker = start_broker(&shared.resolve, &mut vm.lease.vm, &policy)?;
    if broker.is_some() {
        req.network = Some(network_setup());
    }

    let mut capture = expected.as_ref().map(|e| Capture::new(e.len()));
    let ran = run_command(&mut vm, inst, &req, &mut log, capture.as_mut(), timings);
    let egress_log = broker.map(Broker::finish).unwrap_or_default();
    let egress = EgressReport::new(&policy, &egress_log);
    let mut judged = verdict(shared, inst, &vm, &ran, &egress);
    if let (Some(e), Some(c), Some(want)) = (&inst.expect, &capture, &expected) {
        let mismatch = expect::compare(want, c, e.compare).map(|mut m| {
            let mask = |t: &mut Option<String>| {
                if let Some(text) = t.as_mut() {
                    *text = crate::report::mask_str(text, &shared.secret_values);
                }
            };
            mask(&mut m.expected);
            mask(&mut m.actual);
            m
        });
        judged = enforce_expect(judged, mismatch);
    }
    let outputs = collect_outputs(shared, inst, &vm, &req, &ran, &mut judged, timings);

    let console_src = vm.release();
    let mut has_console = false;
    if let Some(src) = console_src {
        let dest = shared
            .run_dir
            .join("logs")
            .join(format!("{}.console", file_name(&inst.name)));
        has_console = std::fs::rename(&src, dest).is_ok();
    }
    timings.total_ms = timings.queued_ms + ms(started.elapsed());
    let mut outcome = AttemptOutcome {
        logs: log_paths(
            &inst.name,
            judged.verdict,
            outputs.usage.is_some(),
            has_console,
        ),
        attempt: Attempt {
            verdict: judged.verdict,
            exit_code: judged.exit_code,
            signal: judged.signal,
            message: judged
                .message
                .map(|m| crate::report::mask_str(&m, &shared.secret_values)),
            limit: judged.limit,
            mismatch: judged.mismatch,
            timings: *timings,
            slurm: None,
        },
        usage: outputs.usage,
        artifacts: outputs.digests,
        missing_outputs: outputs.missing,
        egress: Some(egress),
        tails: Tails {
            stdout: log.tail(Stream::Out),
            stderr: log.tail(Stream::Err),
            combined: log.combined_tail(),
        },
        image: (image.reference != "default").then(|| ImageReport {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            pulled: image.pulled,
        }),
        cache: None,
    };
    outcome.cache = shared.cache.finish(shared, inst, cache, &outcome);
    Ok(outcome)
}

/// The step's expected stdout, read before a VM is leased. It is held in
/// memory, so it may be no larger than the step's output limit (a longer
/// output would be `ole` anyway).
fn expected_output(inst: &Instance) -> Result<Option<Vec<u8>>, AttemptError> {
    let Some(e) = &inst.expect else {
        return Ok(None);
    };
    let limit = inst.settings.output.0;
    let fail = |why: String| AttemptError::Expect(format!("expected output `{}`: {why}", e.shown));
    let len = std::fs::metadata(&e.path)
        .map_err(|err| fail(err.to_string()))?
        .len();
    if len > limit {
        return Err(fail(format!(
            "{len} bytes is more than the step's output limit ({limit} bytes)"
        )));
    }
    std::fs::read(&e.path)
        .map(Some)
        .map_err(|err| fail(err.to_string()))
}

/// A restored VM from the pool of the step's shape (opened on first use).
fn lease_vm(
    pools: &Pools,
    inst: &Instance,
    started: Instant,
    timings: &mut Timings,
) -> Result<LeasedVm, AttemptError> {
    let pool = pools.get(&inst.settings).map_err(AttemptError::Pool)?;
    let lease = pool.acquire();
    timings.vm_acquire_ms = ms(started.elapsed());
    lease.map_err(AttemptError::Lease)
}

/// Packs the step's inputs onto the VM's input disk; returns the archive's
/// length, or `None` when the step has no inputs.
fn pack_inputs(
    shared: &RunShared,
    inst: &Instance,
    owner: (u64, u64),
    disk: &Path,
    timings: &mut Timings,
) -> Result<Option<u64>, AttemptError> {
    let t = Instant::now();
    let items = input_items(&shared.plan, &shared.run_dir, inst);
    let disk_bytes = std::fs::metadata(disk).map(|m| m.len()).unwrap_or(0);
    let packed = if items.is_empty() {
        Ok(None)
    } else {
        artifacts::pack_inputs(&items, disk, owner, disk_bytes)
            .map(|stats| Some(stats.archive_bytes))
            .map_err(AttemptError::Inputs)
    };
    timings.inputs_ms = ms(t.elapsed());
    packed
}

/// The step's output log, masking the job's secrets; `on_line` hears each
/// finished line.
fn open_log(
    shared: &RunShared,
    inst: &Instance,
    on_line: Option<LineSink>,
) -> Result<StepLog, AttemptError> {
    let path = shared
        .run_dir
        .join("logs")
        .join(format!("{}.log", file_name(&inst.name)));
    let limit = inst.settings.output.0;
    let mut log = StepLog::create(Some(&path), &shared.secret_values, limit)
        .map_err(|source| AttemptError::Log { path, source })?;
    if let Some(f) = on_line {
        log.on_line(f);
    }
    Ok(log)
}

/// Starts the step's egress broker on the VM's broker channel, unless the
/// step has no network (then the VMM keeps its default: deny everything,
/// and the guest's interface stays down).
fn start_broker(
    resolve: &Arc<Overrides>,
    vm: &mut VmHandle,
    policy: &EgressPolicy,
) -> Result<Option<Broker>, AttemptError> {
    if *policy == EgressPolicy::None {
        return Ok(None);
    }
    let sock = vm.take_net_channel().ok_or(AttemptError::NetChannelUsed)?;
    let config = BrokerConfig {
        policy: policy.clone(),
        overrides: resolve.clone(),
        connect_timeout: CONNECT_TIMEOUT,
    };
    Broker::start(sock, config)
        .map(Some)
        .map_err(AttemptError::Broker)
}

/// How the command's run ended.
struct Ran {
    result: Result<RunOutcome, RunError>,
    /// The output passed the step's limit and the VM was stopped.
    exceeded: bool,
}

/// Sends the request and streams the output into the log until the guest
/// reports the exit or the host deadline passes. Output past the step's
/// limit stops the VM.
fn run_command(
    vm: &mut Leased<'_>,
    inst: &Instance,
    req: &RunRequest,
    log: &mut StepLog,
    mut capture: Option<&mut Capture>,
    timings: &mut Timings,
) -> Ran {
    let timeout = inst.settings.timeout.0;
    // Room for guest-side packing of the outputs after the command.
    let host_timeout = timeout + Duration::from_secs(30) + timeout / 10;
    let t = Instant::now();
    let mut exceeded = false;
    let slot = vm.slot;
    let result = session::run(&mut vm.lease.vm, req, host_timeout, &mut |stream, bytes| {
        let s = match stream {
            OutputStream::Stdout => Stream::Out,
            OutputStream::Stderr => Stream::Err,
        };
        if let (Stream::Out, Some(c)) = (s, capture.as_deref_mut()) {
            c.push(bytes);
        }
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
    Ran { result, exceeded }
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

/// The verdict on how the command ended, the console's OOM evidence and
/// the step's egress rule.
fn verdict(
    shared: &RunShared,
    inst: &Instance,
    vm: &Leased<'_>,
    ran: &Ran,
    egress: &EgressReport,
) -> Judged {
    let console = vm
        .lease
        .console_log
        .as_deref()
        .map(console_tail)
        .unwrap_or_default();
    let ended = match &ran.result {
        Ok(o) => Ended::Exited(o.exited),
        Err(RunError::Timeout(_)) => Ended::HostTimeout,
        Err(RunError::Guest(r)) if r.code == ErrorCode::CommandNotFound => {
            Ended::NotFound(r.message.clone())
        }
        Err(RunError::Guest(r)) if r.code == ErrorCode::Stdin => Ended::Refused(r.message.clone()),
        Err(e) => Ended::Broken(chain(e)),
    };
    let observed = Observed {
        ended,
        output_exceeded: ran.exceeded,
        cancelled: shared.cancelled.load(Ordering::Acquire),
        oom_in_console: oom_evidence(&console),
        timeout_secs: inst.settings.timeout.0.as_secs(),
        cpu_time: inst.settings.cpu_time,
        memory: inst.settings.memory_limit,
    };
    enforce_egress(judge(&observed), inst.settings.on_violation, egress)
}

/// What the outputs phase produced.
#[derive(Default)]
struct Outputs {
    usage: Option<Usage>,
    digests: Vec<FileDigest>,
    missing: Vec<String>,
}

/// Validates and unpacks the output disk into the run's artifacts, when
/// the command exited and the step declares outputs. A rejected disk fails
/// a step that had passed, and its reason joins the verdict's message.
fn collect_outputs(
    shared: &RunShared,
    inst: &Instance,
    vm: &Leased<'_>,
    req: &RunRequest,
    ran: &Ran,
    judged: &mut Judged,
    timings: &mut Timings,
) -> Outputs {
    let t = Instant::now();
    let mut out = Outputs::default();
    if let Ok(outcome) = &ran.result {
        let e = outcome.exited;
        out.usage = Some(Usage {
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
                    &vm.lease.disks.output,
                    &dest,
                    &req.artifacts.outputs,
                    OutputLimits::default(),
                )
                .map_err(|err| format!("output disk rejected: {}", chain(&err)))
            } else {
                Err("the guest could not pack the outputs (see the log)".to_owned())
            };
            match unpacked {
                Ok(u) => {
                    out.digests = u.files;
                    out.missing = u.unmatched;
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
    out
}
