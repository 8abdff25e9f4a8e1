//! The Slurm executor's commands: `run --executor slurm` submits and
//! follows, `report RUN_DIR [--wait]` rebuilds the reports or takes the
//! following up again, and `__slurm-step` runs one instance on a compute
//! node with the options the run was submitted with.

use std::path::{Path, PathBuf};

use super::run::{exit_code, Args};
use super::{Cli, Command};
use crate::errors::{CliError, CliResult, EXIT_INTERRUPTED, EXIT_OK};
use clap::Parser;
use sbxrun_runner::assets;
use sbxrun_runner::manifest::Job;
use sbxrun_runner::plan::Plan;
use sbxrun_runner::report::console::{Console, LogFormat, Verbosity};
use sbxrun_runner::report::RunStatus;
use sbxrun_runner::runner::slurm::{
    self, record_fault, Records, SlurmOptions, StepExit, StepOptions, Submit, SubmitOptions,
};

/// Submits `plan` as Slurm jobs and (unless `--detach`) follows them.
pub fn submit(args: Args, job: Job, plan: Plan, run_dir: PathBuf) -> CliResult {
    // The nodes read the same options: refuse bad ones here, once.
    args.cache.options(&plan, &assets::cache_dir())?;
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .map_err(|e| CliError::Infra(format!("cannot find the sbxrun executable: {e}")))?;
    let argv = super::with_run_shorthand(std::env::args_os().collect())
        .into_iter()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| CliError::usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect::<Result<Vec<String>, CliError>>()?;
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::Infra(format!("cannot read the working directory: {e}")))?;
    let s = &args.slurm;
    let opts = SubmitOptions {
        manifest: args.job.display().to_string(),
        run_dir: run_dir.clone(),
        console: Console::new(args.verbosity(), args.log_format),
        slurm: SlurmOptions {
            partition: s.partition.clone(),
            account: s.account.clone(),
            extra: s.slurm_arg.clone(),
            detach: s.detach,
            assume_shared: s.slurm_assume_shared,
        },
        submit: Submit { argv, cwd, exe },
    };
    let summary = slurm::run_slurm(&job, plan, opts).map_err(|e| CliError::infra(&e))?;
    if args.slurm.detach {
        return Ok(EXIT_OK);
    }
    Console::new(args.verbosity(), args.log_format)
        .summary(&summary.report, &run_dir.display().to_string());
    Ok(exit_code(summary.report.status))
}

/// The run's options as it was submitted, read where it was submitted.
fn replay(run_dir: &Path) -> Result<Args, CliError> {
    let submit = Records::new(run_dir).submit().map_err(CliError::Infra)?;
    std::env::set_current_dir(&submit.cwd).map_err(|e| {
        CliError::Infra(format!(
            "cannot enter {}, where the run was submitted (it must be on a filesystem this node \
             mounts): {e}",
            submit.cwd.display()
        ))
    })?;
    let argv = std::iter::once("sbxrun".to_owned()).chain(submit.argv);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(args),
        }) => Ok(args),
        Ok(_) => Err(CliError::Infra(
            "the recorded command is not `sbxrun run`".into(),
        )),
        Err(e) => Err(CliError::Infra(format!(
            "cannot read the run's options: {e}"
        ))),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, CliError> {
    dir.canonicalize()
        .map_err(|e| CliError::usage(format!("run directory {}: {e}", dir.display())))
}

/// Arguments of `__slurm-step`.
#[derive(Debug, clap::Args)]
pub struct StepArgs {
    /// The run directory (shared by every node).
    pub run_dir: PathBuf,
    /// The step instance to run (`build`, `test[case=a]`).
    pub instance: String,
}

/// `__slurm-step RUN_DIR INSTANCE`: on a compute node, in a Slurm job.
pub fn step(a: StepArgs) -> CliResult {
    let run_dir = absolute(&a.run_dir)?;
    let args = replay(&run_dir)?;
    let (job, plan) = super::validate::load_and_plan(&args.job, args.syntax, &args.selection())?;
    let pools = match args.pool_base(&run_dir, 0) {
        Ok(p) => p,
        // This node cannot run VMs: the step says why, and the job still
        // records its end so the run goes on.
        Err(CliError::Infra(e) | CliError::Usage(e) | CliError::Manifest(e)) => {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            record_fault(&run_dir, &a.instance, &format!("node {host}: {e}"))
                .map_err(CliError::Infra)?;
            return Ok(EXIT_OK);
        }
    };
    let opts = StepOptions {
        run_dir,
        pools,
        resolve: args.resolve.iter().cloned().collect(),
        cache: args.cache.options(&plan, &assets::cache_dir())?,
    };
    match slurm::run_step(&job, plan, &a.instance, opts) {
        Ok(StepExit::Recorded) => Ok(EXIT_OK),
        Ok(StepExit::Interrupted) => Ok(EXIT_INTERRUPTED),
        Err(e) => Err(CliError::Infra(e)),
    }
}

/// Arguments of `sbxrun report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run directory of a run made with `--executor slurm`.
    pub run_dir: PathBuf,
    /// Follow the run's jobs until every step has ended (retrying lost
    /// jobs, cancelling them all on Ctrl-C), as the submitting `sbxrun`
    /// would have.
    #[arg(long)]
    pub wait: bool,
    /// Show every output line, prefixed with its step (with --wait).
    #[arg(long, short = 'v', conflicts_with = "quiet")]
    pub verbose: bool,
    /// Show only failures and the summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Console output format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `sbxrun report RUN_DIR [--wait]`.
pub fn report(a: ReportArgs) -> CliResult {
    let run_dir = absolute(&a.run_dir)?;
    // A local run writes its reports as it goes: there is nothing to
    // rebuild, and naming one is a usage error, not a fault.
    Records::new(&run_dir).submit().map_err(CliError::Usage)?;
    let args = replay(&run_dir)?;
    let (job, plan) = super::validate::load_and_plan(&args.job, args.syntax, &args.selection())?;
    let verbosity = match (a.verbose, a.quiet) {
        (true, _) => Verbosity::Verbose,
        (_, true) => Verbosity::Quiet,
        _ => Verbosity::Normal,
    };
    let console = Console::new(verbosity, a.log_format);
    let manifest = args.job.display().to_string();
    let summary = slurm::attach(&job, plan, &run_dir, manifest, console, a.wait)
        .map_err(|e| CliError::infra(&e))?;
    let report = &summary.report;
    Console::new(verbosity, a.log_format).summary(report, &run_dir.display().to_string());
    if report.status == RunStatus::Running {
        eprintln!(
            "sbxrun: the run has not ended; `sbxrun report {} --wait` follows it",
            run_dir.display()
        );
        return Ok(EXIT_OK);
    }
    Ok(exit_code(report.status))
}
