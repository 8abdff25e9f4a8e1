//! The Slurm executor: each step instance is one Slurm job whose batch
//! script runs this sbxrun on a compute node, in a microVM there, for
//! exactly that instance. `needs` become job dependencies, so Slurm starts
//! each job once its dependencies have recorded how they ended, and each
//! instance decides its own `if:` from those records. The run directory
//! (`--out`) is on a filesystem every node mounts: artifacts, logs and the
//! records pass through it exactly as they do locally. The submitter
//! follows the jobs and produces the same console, `report.json` and
//! `junit.xml` as a local run. `docs/slurm.md` has the whole story.

mod commands;
mod follow;
mod records;
mod step;
mod submit;
mod tail;

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

pub use follow::Followed;
pub use records::{Records, Submit};
pub use step::{record_fault, run_step, StepExit, StepOptions};
pub use submit::{time_limit, SlurmOptions};

use self::follow::{job_range, Follower};
use super::outcome::conclude;
use super::{setup, RunSummary, RunnerError};
use crate::manifest::Job;
use crate::plan::Plan;
use crate::report::console::Console;
use crate::report::{JsonReportFile, JunitFile, Reporter, RunEvent};

/// Whether `addr` (a node's NodeAddr) is this host.
fn is_this_host(addr: &str) -> bool {
    if matches!(addr, "127.0.0.1" | "::1" | "localhost") || addr.starts_with("127.") {
        return true;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .is_some_and(|h| h == addr || h.split('.').next() == Some(addr))
}

/// Filesystems only the host that mounts them sees.
fn local_filesystem(dir: &Path) -> Option<&'static str> {
    use nix::sys::statfs::{
        statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC,
        XFS_SUPER_MAGIC,
    };
    let fs = statfs(dir).ok()?;
    let t = fs.filesystem_type();
    [
        (EXT4_SUPER_MAGIC, "ext4"),
        (XFS_SUPER_MAGIC, "xfs"),
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (TMPFS_MAGIC, "tmpfs"),
        (OVERLAYFS_SUPER_MAGIC, "overlayfs"),
    ]
    .into_iter()
    .find(|(m, _)| *m == t)
    .map(|(_, name)| name)
}

/// Refuses a run directory the compute nodes cannot see: a local
/// filesystem, unless every node of the partition is this host.
pub fn check_shared(dir: &Path, partition: Option<&str>) -> Result<(), String> {
    let nodes = commands::node_addresses(partition)?;
    if nodes.is_empty() {
        return Err(format!(
            "Slurm lists no nodes{}",
            partition
                .map(|p| format!(" in partition `{p}`"))
                .unwrap_or_default()
        ));
    }
    if nodes.iter().all(|n| is_this_host(n)) {
        return Ok(());
    }
    match local_filesystem(dir) {
        Some(fs) => Err(format!(
            "the run directory {} is on {fs}, which only this host sees, but the steps run on \
             other nodes ({}); pass --out on a filesystem every node mounts (NFS, Lustre, GPFS, \
             CephFS, BeeGFS), or --slurm-assume-shared if it is shared in a way sbxrun cannot tell",
            dir.display(),
            nodes.join(", ")
        )),
        None => Ok(()),
    }
}

/// The events' sinks and the signal listener of a followed run.
fn listen() -> Result<(mpsc::Receiver<i32>, signal_hook::iterator::Handle), RunnerError> {
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(RunnerError::Signals)?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    Ok((rx, handle))
}

/// What the submitting side of a Slurm run needs.
pub struct SubmitOptions {
    /// The manifest as given (for reports).
    pub manifest: String,
    /// The run directory (created), on a filesystem the nodes share.
    pub run_dir: std::path::PathBuf,
    /// The live view.
    pub console: Console,
    pub slurm: SlurmOptions,
    /// The invocation the nodes replay.
    pub submit: Submit,
}

/// Runs `plan` of `job` as Slurm jobs; reports are written into
/// `opts.run_dir` as for a local run. With `slurm.detach`, returns once
/// everything is submitted.
pub fn run_slurm(job: &Job, plan: Plan, opts: SubmitOptions) -> Result<RunSummary, RunnerError> {
    let SubmitOptions {
        manifest,
        run_dir,
        console,
        slurm,
        submit,
    } = opts;
    setup::create_dirs(&run_dir, &run_dir.join("logs"))?;
    let run_dir = run_dir
        .canonicalize()
        .map_err(|source| RunnerError::RunDir {
            path: run_dir.display().to_string(),
            source,
        })?;
    if !slurm.assume_shared {
        check_shared(&run_dir, slurm.partition.as_deref()).map_err(RunnerError::Slurm)?;
    }
    let records = Records::new(&run_dir);
    records
        .prepare(plan.instances().iter().map(|i| i.name.as_str()))
        .and_then(|()| records.write_submit(&submit))
        .map_err(RunnerError::Slurm)?;
    let started_event = setup::run_started(job, manifest, &plan, &run_dir);
    let mut console = console;
    let mut json = JsonReportFile::new(&run_dir);
    let mut junit = JunitFile::new(&run_dir);
    let started = Instant::now();
    let mut reporter = Reporter::new(vec![&mut json, &mut junit, &mut console]);
    reporter.emit(started_event);

    let detach = slurm.detach;
    let mut follower = Follower::new(
        &plan,
        records.clone(),
        job.name.as_str(),
        submit,
        slurm,
        job.fail_fast,
    );
    follower.submit_all().map_err(RunnerError::Slurm)?;
    if detach {
        reporter.persist();
        let jobs = records.jobs().map_err(RunnerError::Slurm)?;
        eprintln!(
            "submitted {} Slurm jobs ({}); follow with `sbxrun report {} --wait`",
            plan.len(),
            job_range(&jobs),
            run_dir.display()
        );
        drop(reporter);
        return Ok(RunSummary {
            report: json.into_report(),
            exit_code: 0,
        });
    }
    let (rx, handle) = listen()?;
    let followed = follower.follow(&mut reporter, &rx);
    handle.close();
    finish_run(&mut reporter, &follower, followed, started);
    drop(reporter);
    let exit_code = json.into_report();
    Ok(RunSummary {
        exit_code: exit_code.exit_code,
        report: exit_code,
    })
}

fn finish_run(
    reporter: &mut Reporter<'_>,
    follower: &Follower<'_>,
    followed: Followed,
    started: Instant,
) {
    let interrupted = matches!(followed, Followed::Interrupted { .. });
    let (status, exit_code) = conclude(&follower.ends(), interrupted);
    reporter.emit(RunEvent::RunFinished {
        status,
        exit_code,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        vms_started: follower.attempts_run(),
    });
}

/// `sbxrun report RUN_DIR`: the reports of a Slurm run rebuilt from what
/// its steps recorded; with `wait`, its jobs followed (and retried, and
/// cancelled on a signal) until every step has ended.
pub fn attach(
    job: &Job,
    plan: Plan,
    run_dir: &Path,
    manifest: String,
    console: Console,
    wait: bool,
) -> Result<RunSummary, RunnerError> {
    let records = Records::new(run_dir);
    let submit = records.submit().map_err(RunnerError::Slurm)?;
    let started_event = setup::run_started(job, manifest, &plan, run_dir);
    let mut console = console;
    let mut json = JsonReportFile::new(run_dir);
    let mut junit = JunitFile::new(run_dir);
    let started = Instant::now();
    let mut reporter = Reporter::new(vec![&mut json, &mut junit, &mut console]);
    reporter.emit(started_event);
    let mut follower = Follower::new(
        &plan,
        records,
        job.name.as_str(),
        submit,
        SlurmOptions::default(),
        job.fail_fast,
    );
    follower.resume().map_err(RunnerError::Slurm)?;
    let done = follower.replay(&mut reporter).map_err(RunnerError::Slurm)?;
    if done || wait {
        let followed = if done {
            Followed::Completed
        } else {
            let (rx, handle) = listen()?;
            let f = follower.follow(&mut reporter, &rx);
            handle.close();
            f
        };
        finish_run(&mut reporter, &follower, followed, started);
    }
    reporter.persist();
    drop(reporter);
    let report = json.into_report();
    Ok(RunSummary {
        exit_code: report.exit_code,
        report,
    })
}
