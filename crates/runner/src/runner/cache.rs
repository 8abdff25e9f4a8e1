//! The step cache in a run: which instances may be cached, a hit that
//! takes no VM (outputs restored byte-exact, the log replayed, the
//! original result reported), and a passed attempt stored for later runs.
//! `docs/cache.md` has the rules and the key's parts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sbxrun_stepcache::{
    capture_tree, restore_tree, CacheKey, DigestMemo, Entry, KeyLock, LocalStore, Store,
    StoreError, ENTRY_FORMAT,
};
use serde::{Deserialize, Serialize};

use super::attempt::{artifact_dir, file_name, RunShared};
use super::cache_key::{compute, FileDigests, KeyContext};
use super::StepImage;
use crate::errors::chain;
use crate::manifest::{CacheSetting, Condition, Egress};
use crate::plan::Instance;
use crate::report::{
    Attempt, AttemptOutcome, CacheReport, CacheStatus, EgressReport, FileDigest, ImageReport,
    Limit, LogPaths, Mismatch, Tails, Timings, Usage, Verdict,
};

/// Default most bytes the step cache keeps.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// How a run uses the step cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The store's directory; `None` turns the cache off (`--no-cache`):
    /// nothing is looked up or stored.
    pub dir: Option<PathBuf>,
    /// Steps (ids or instance names) run again even when cached, and
    /// stored anew (`--rebuild`).
    pub rebuild: Vec<String>,
    /// Most bytes the store keeps; least recently used entries go first.
    pub max_bytes: u64,
}

impl CacheOptions {
    /// No cache at all.
    pub fn off() -> Self {
        CacheOptions {
            dir: None,
            rebuild: Vec::new(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The cache as one run uses it.
pub struct RunCache {
    store: Result<Option<LocalStore>, String>,
    memo: DigestMemo,
    rebuild: Vec<String>,
    max_bytes: u64,
    job: String,
    /// Output file digests of this run, by path: a consumer's key reuses
    /// them instead of reading the files again.
    produced: Mutex<HashMap<PathBuf, String>>,
}

/// What the runner keeps of a result, inside the cache entry.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    verdict: Verdict,
    exit_code: Option<i32>,
    signal: Option<i32>,
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mismatch: Option<Mismatch>,
    /// The attempt's own time (not its queueing).
    took_ms: f64,
    usage: Option<Usage>,
    artifacts: Vec<FileDigest>,
    missing_outputs: Vec<String>,
    egress: Option<EgressReport>,
    stdout_tail: String,
    stderr_tail: String,
    /// Both streams' last lines in arrival order (absent in older entries).
    #[serde(default)]
    combined_tail: String,
    image: Option<ImageReport>,
    stored_at: String,
}

/// One instance's dealings with the cache across an attempt.
pub struct StepCache {
    report: Option<CacheReport>,
    key: Option<CacheKey>,
    lookup: bool,
    failures: bool,
    /// Held from a miss until the result is stored, so a concurrent run
    /// of the same key waits and then hits.
    claim: Option<KeyLock>,
}

/// The key of instance `id` of `plan` exactly as a run computes it, for
/// tools and benchmarks: `run_dir` holds producers' artifacts, `memo`
/// remembers file digests between calls.
#[allow(clippy::too_many_arguments)]
pub fn instance_key(
    plan: &crate::plan::Plan,
    id: crate::plan::InstanceId,
    run_dir: &Path,
    kernel: &Path,
    initramfs: &Path,
    image: &StepImage,
    store: &LocalStore,
    memo: &DigestMemo,
) -> Result<CacheKey, String> {
    let produced = Mutex::new(HashMap::new());
    let ctx = KeyContext {
        plan,
        run_dir,
        kernel,
        initramfs,
        store,
        files: FileDigests {
            memo,
            produced: &produced,
        },
    };
    compute(&ctx, plan.instance(id), image)
}

/// What a lookup found.
pub enum Lookup {
    /// The cached result, restored: the step does not run.
    Hit(Box<AttemptOutcome>),
    /// Run the step.
    Miss,
    /// The run was cancelled while another process held the key.
    Cancelled,
}

/// Why an instance is not cached by default, or `Ok(failures)`.
fn eligible(inst: &Instance) -> Result<bool, String> {
    let s = &inst.settings;
    let explicit = match s.cache {
        Some(CacheSetting::Off) => return Err("`cache: false`".into()),
        Some(CacheSetting::On { failures }) => Some(failures),
        None => None,
    };
    match s.egress {
        Egress::None => {}
        Egress::Public => {
            return Err("`egress: public`: the result depends on the internet".into())
        }
        Egress::Allow(_) if explicit.is_none() => {
            return Err(
                "the step has network (an allow-list); add `cache: true` if its result depends only on its inputs"
                    .into(),
            )
        }
        Egress::Allow(_) => {}
    }
    if explicit.is_none() && inst.condition != Condition::Success {
        return Err(
            "an `if: always()` or `if: failure()` step is run for its effects; add `cache: true` to cache it"
                .into(),
        );
    }
    Ok(explicit.unwrap_or(false))
}

fn off(reason: String) -> CacheReport {
    CacheReport {
        status: CacheStatus::Off,
        key: None,
        parts: Default::default(),
        changed: Vec::new(),
        reason: Some(reason),
        stored_at: None,
        original_ms: None,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl RunCache {
    /// Opens the store for a run of job `job`. A store that cannot be
    /// opened turns the cache off for the run; every step says why.
    pub fn open(opts: &super::CacheOptions, job: &str) -> Self {
        let (store, memo) = match &opts.dir {
            None => (Ok(None), DigestMemo::in_memory()),
            Some(dir) => match LocalStore::open(dir) {
                Ok(s) => (Ok(Some(s)), DigestMemo::load(&dir.join("memo.json"))),
                Err(e) => (
                    Err(format!("the step cache is unavailable: {}", chain(&e))),
                    DigestMemo::in_memory(),
                ),
            },
        };
        RunCache {
            store,
            memo,
            rebuild: opts.rebuild.clone(),
            max_bytes: opts.max_bytes,
            job: job.to_owned(),
            produced: Mutex::new(HashMap::new()),
        }
    }

    /// A cache that is off.
    pub fn off() -> Self {
        RunCache::open(&CacheOptions::off(), "")
    }

    /// The end of the run: the memo is kept, the store trimmed to its cap
    /// (skipped while another process uses it).
    pub fn close(&self) {
        if let Ok(Some(store)) = &self.store {
            if let Err(e) = self.memo.save() {
                tracing::warn!("step cache: {}", chain(&e));
            }
            if let Err(e) = store.evict(self.max_bytes, false) {
                tracing::warn!("step cache: {}", chain(&e));
            }
        }
    }

    /// Remembers the digests of an instance's artifacts.
    pub fn record_outputs(&self, dir: &Path, files: &[FileDigest]) {
        if let Ok(mut m) = self.produced.lock() {
            for f in files {
                m.insert(dir.join(&f.path), f.sha256.clone());
            }
        }
    }

    /// Decides whether `inst` is cacheable and computes its key.
    pub fn prepare(&self, shared: &RunShared, inst: &Instance, image: &StepImage) -> StepCache {
        let mut step = StepCache {
            report: None,
            key: None,
            lookup: false,
            failures: false,
            claim: None,
        };
        let store = match &self.store {
            Ok(None) => return step,
            Ok(Some(s)) => s,
            Err(why) => {
                step.report = Some(off(why.clone()));
                return step;
            }
        };
        step.failures = match eligible(inst) {
            Ok(f) => f,
            Err(why) => {
                step.report = Some(off(format!("not cacheable: {why}")));
                return step;
            }
        };
        let ctx = KeyContext {
            plan: &shared.plan,
            run_dir: &shared.run_dir,
            kernel: &shared.pools.base().kernel,
            initramfs: &shared.pools.base().initramfs,
            store,
            files: FileDigests {
                memo: &self.memo,
                produced: &self.produced,
            },
        };
        let key = match compute(&ctx, inst, image) {
            Ok(k) => k,
            Err(why) => {
                step.report = Some(off(format!("cannot compute the key: {why}")));
                return step;
            }
        };
        let id = format!("{}\n{}", self.job, inst.name);
        let changed = store
            .last_parts(&id)
            .map(|before| sbxrun_stepcache::changed_parts(&before, &key.parts))
            .unwrap_or_default();
        let _ = store.set_last_parts(&id, &key.parts);
        let rebuild = self
            .rebuild
            .iter()
            .any(|r| *r == inst.name || *r == inst.step.as_str());
        step.lookup = !rebuild;
        step.report = Some(CacheReport {
            status: CacheStatus::NotStored,
            key: Some(key.key.clone()),
            parts: key.parts.clone(),
            changed,
            reason: rebuild.then(|| "--rebuild".to_owned()),
            stored_at: None,
            original_ms: None,
        });
        step.key = Some(key);
        step
    }

    /// Looks `step` up; on a miss, claims its key (waiting while another
    /// process runs it, then looking again).
    pub fn lookup(
        &self,
        shared: &RunShared,
        inst: &Instance,
        step: &mut StepCache,
        timings: &mut Timings,
    ) -> Lookup {
        let (Ok(Some(store)), Some(key)) = (&self.store, step.key.clone()) else {
            return Lookup::Miss;
        };
        if !step.lookup {
            return Lookup::Miss;
        }
        if let Some(hit) = self.try_hit(store, shared, inst, step, &key.key, timings) {
            return Lookup::Hit(Box::new(hit));
        }
        let cancelled = || shared.cancelled.load(Ordering::Acquire);
        match store.claim(&key.key, Duration::from_millis(50), &cancelled) {
            Ok(Some(claim)) => step.claim = Some(claim),
            Ok(None) => return Lookup::Cancelled,
            Err(e) => tracing::warn!("step cache: {}", chain(&e)),
        }
        if let Some(hit) = self.try_hit(store, shared, inst, step, &key.key, timings) {
            step.claim = None;
            return Lookup::Hit(Box::new(hit));
        }
        Lookup::Miss
    }

    fn try_hit(
        &self,
        store: &LocalStore,
        shared: &RunShared,
        inst: &Instance,
        step: &mut StepCache,
        key: &str,
        timings: &mut Timings,
    ) -> Option<AttemptOutcome> {
        let t = Instant::now();
        let _reading = store.reading().ok()?;
        let damaged = |step: &mut StepCache, e: StoreError| {
            let why = chain(&e);
            tracing::warn!("step cache: `{}`: {why}; running the step", inst.name);
            if let Some(r) = &mut step.report {
                r.reason = Some(format!(
                    "the cached result was unusable ({why}), so the step ran"
                ));
            }
        };
        let entry = match store.get(key) {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(e) => {
                damaged(step, e);
                return None;
            }
        };
        let record: Record = match serde_json::from_value(entry.record.clone()) {
            Ok(r) => r,
            Err(e) => {
                let _ = store.remove(key);
                damaged(
                    step,
                    StoreError::Corrupt {
                        what: format!("entry {key}"),
                        detail: e.to_string(),
                    },
                );
                return None;
            }
        };
        let dest = artifact_dir(&shared.run_dir, &inst.name);
        let log = shared
            .run_dir
            .join("logs")
            .join(format!("{}.log", file_name(&inst.name)));
        if let Err(e) = restore(store, &entry, &dest, &log) {
            let _ = std::fs::remove_dir_all(&dest);
            let _ = std::fs::remove_file(&log);
            if e.is_corruption() {
                let _ = store.remove(key);
            }
            damaged(step, e);
            return None;
        }
        self.record_outputs(&dest, &record.artifacts);
        timings.outputs_ms = ms(t.elapsed());
        timings.total_ms = timings.queued_ms + timings.outputs_ms;
        let mut report = step.report.take()?;
        report.status = CacheStatus::Hit;
        report.reason = None;
        report.stored_at = Some(record.stored_at.clone());
        report.original_ms = Some(record.took_ms);
        Some(AttemptOutcome {
            attempt: Attempt {
                verdict: record.verdict,
                exit_code: record.exit_code,
                signal: record.signal,
                message: record.message,
                limit: record.limit,
                mismatch: record.mismatch,
                timings: *timings,
                slurm: None,
            },
            usage: record.usage,
            artifacts: record.artifacts,
            missing_outputs: record.missing_outputs,
            egress: record.egress,
            logs: LogPaths {
                output: entry
                    .log
                    .is_some()
                    .then(|| format!("logs/{}.log", file_name(&inst.name))),
                console: None,
            },
            tails: Tails {
                stdout: record.stdout_tail,
                stderr: record.stderr_tail,
                combined: record.combined_tail,
            },
            image: record.image,
            cache: Some(report),
        })
    }

    /// After an attempt ran: stores its result when it may be kept, and
    /// says what was done.
    pub fn finish(
        &self,
        shared: &RunShared,
        inst: &Instance,
        mut step: StepCache,
        outcome: &AttemptOutcome,
    ) -> Option<CacheReport> {
        let dest = artifact_dir(&shared.run_dir, &inst.name);
        self.record_outputs(&dest, &outcome.artifacts);
        let mut report = step.report.take()?;
        let (Ok(Some(store)), Some(key)) = (&self.store, &step.key) else {
            return Some(report);
        };
        let verdict = outcome.attempt.verdict;
        let keep = match verdict {
            Verdict::Passed => Ok(()),
            Verdict::Failed
            | Verdict::Wrong
            | Verdict::Tle
            | Verdict::Mle
            | Verdict::Ole
            | Verdict::Sig
                if step.failures =>
            {
                Ok(())
            }
            Verdict::Failed
            | Verdict::Wrong
            | Verdict::Tle
            | Verdict::Mle
            | Verdict::Ole
            | Verdict::Sig => Err(format!(
                "a {} result is not kept (add `cache: {{ failures: true }}` to keep it)",
                verdict.label()
            )),
            Verdict::Infra | Verdict::Skipped | Verdict::Cancelled => Err(format!(
                "a {} result says nothing about the step",
                verdict.label()
            )),
        };
        if let Err(why) = keep {
            report.reason = Some(why);
            return Some(report);
        }
        let log = outcome.logs.output.as_ref().map(|l| shared.run_dir.join(l));
        let record = Record {
            verdict,
            exit_code: outcome.attempt.exit_code,
            signal: outcome.attempt.signal,
            message: outcome.attempt.message.clone(),
            limit: outcome.attempt.limit,
            mismatch: outcome.attempt.mismatch.clone(),
            took_ms: outcome.attempt.timings.total_ms - outcome.attempt.timings.queued_ms,
            usage: outcome.usage,
            artifacts: outcome.artifacts.clone(),
            missing_outputs: outcome.missing_outputs.clone(),
            egress: outcome.egress.clone(),
            stdout_tail: outcome.tails.stdout.clone(),
            stderr_tail: outcome.tails.stderr.clone(),
            combined_tail: outcome.tails.combined.clone(),
            image: outcome.image.clone(),
            stored_at: super::setup::rfc3339(time::OffsetDateTime::now_utc()),
        };
        match save(store, key, &dest, log.as_deref(), &record) {
            Ok(()) => {
                report.status = CacheStatus::Stored;
            }
            Err(e) => {
                tracing::warn!("step cache: cannot store `{}`: {}", inst.name, chain(&e));
                report.reason = Some(format!("cannot store the result: {}", chain(&e)));
            }
        }
        drop(step.claim.take());
        Some(report)
    }
}

/// Puts the outputs, the log and the record into the store.
fn save(
    store: &LocalStore,
    key: &CacheKey,
    outputs: &Path,
    log: Option<&Path>,
    record: &Record,
) -> Result<(), StoreError> {
    let _writing = store.reading()?;
    let tree = capture_tree(store, outputs)?;
    let log = match log.filter(|l| l.is_file()) {
        Some(l) => Some(store.put_blob(l)?),
        None => None,
    };
    let entry = Entry {
        format: ENTRY_FORMAT,
        key: key.key.clone(),
        parts: key.parts.clone(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        outputs: tree,
        log,
        record: serde_json::to_value(record).map_err(|e| StoreError::Corrupt {
            what: "record".into(),
            detail: e.to_string(),
        })?,
    };
    store.put(&entry)
}

/// Recreates an entry's outputs at `dest` and its log at `log`.
fn restore(store: &LocalStore, entry: &Entry, dest: &Path, log: &Path) -> Result<(), StoreError> {
    // Nothing of an earlier attempt may mix with the restored tree.
    let _ = std::fs::remove_dir_all(dest);
    if !entry.outputs.entries.is_empty() {
        restore_tree(store, &entry.outputs, dest)?;
    }
    if let Some(blob) = &entry.log {
        let _ = std::fs::remove_file(log);
        store.get_blob(blob, log)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
