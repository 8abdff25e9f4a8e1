//! `sbxrun run JOB` (or just `sbxrun JOB`): run a job and write its reports.

use std::path::{Path, PathBuf};

use crate::errors::{CliError, CliResult, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, EXIT_STEP_FAILED};
use sbxrun_runner::assets::{self, Asset};
use sbxrun_runner::plan::{Plan, Selection};
use sbxrun_runner::pool::warm::clean_scratch;
use sbxrun_runner::report::console::{Console, LogFormat, Verbosity};
use sbxrun_runner::report::RunStatus;
use sbxrun_runner::runner::{self, CacheOptions, PoolBase, RunOptions};

/// Arguments of `sbxrun run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest (`.yaml`, `.yml` or `.kdl`), or `-` for standard
    /// input (host inputs are then relative to the current directory).
    pub job: PathBuf,
    /// The manifest's syntax, for `-` (default yaml) or a file whose name
    /// does not say.
    #[arg(long, value_enum, alias = "format")]
    pub syntax: Option<super::validate::ManifestSyntax>,
    /// Run directory for reports, logs and artifacts
    /// (default: `sbxrun-out/<job>-<timestamp>/`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the previous run in a non-empty `--out` directory (one that
    /// holds a `report.json`); without it such a directory is refused, so
    /// two runs' artifacts never mix.
    #[arg(long)]
    pub force: bool,
    /// Most steps running at once (default: the job's `concurrency`, else
    /// twice the CPUs, 2 to 16).
    #[arg(long, short = 'j', value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Run only these steps (ids or instance names) and what they need.
    #[arg(long, value_name = "STEP")]
    pub only: Vec<String>,
    /// Show every output line, prefixed with its step.
    #[arg(long, short = 'v', conflicts_with = "quiet")]
    pub verbose: bool,
    /// Show only failures and the summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Console output format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Restored VMs kept ready per VM shape (default: the job's width,
    /// capped by the concurrency).
    #[arg(long)]
    pub warm: Option<usize>,
    /// Answer DNS for NAME with these addresses instead of asking the
    /// host's resolver, like curl's `--resolve`. The step's policy must
    /// still allow NAME; the addresses may be private or loopback, since
    /// you named them. Repeatable.
    #[arg(long, value_name = "NAME=IP[,IP...]", value_parser = parse_resolve)]
    pub resolve: Vec<(String, Vec<std::net::IpAddr>)>,
    #[command(flatten)]
    pub pull: super::image::PullArgs,
    #[command(flatten)]
    pub cache: StepCacheArgs,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// Where the steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Executor {
    /// On this host.
    #[default]
    Local,
    /// As Slurm jobs, one per step instance, on the cluster's nodes.
    Slurm,
}

/// The Slurm executor's options.
#[derive(Debug, clap::Args)]
pub struct SlurmArgs {
    /// Where the steps run. With `slurm`, `--out` must be on a filesystem
    /// every node mounts.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Slurm partition for the steps' jobs.
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Slurm account charged for the steps' jobs.
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// One more `sbatch` option for every step's job (`--slurm-arg=--qos=long`).
    /// Repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
    /// Submit the jobs and return; `sbxrun report RUN_DIR --wait` follows
    /// them later.
    #[arg(long)]
    pub detach: bool,
    /// Trust that `--out` is shared by every node even where sbxrun sees a
    /// local filesystem.
    #[arg(long)]
    pub slurm_assume_shared: bool,
}

/// How a run uses the step cache.
#[derive(Debug, clap::Args)]
pub struct StepCacheArgs {
    /// Run every step: look nothing up in the step cache and store nothing.
    #[arg(
        long,
        env = "SBXRUN_NO_CACHE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub no_cache: bool,
    /// Run this step (id or instance name) even if its result is cached,
    /// and store the new result. Repeatable.
    #[arg(long, value_name = "STEP", conflicts_with = "no_cache")]
    pub rebuild: Vec<String>,
    /// Where the step cache lives (default: `steps/` in the cache
    /// directory).
    #[arg(long, value_name = "DIR", env = "SBXRUN_STEP_CACHE_DIR")]
    pub step_cache: Option<PathBuf>,
    /// Most space the step cache keeps; least recently used results go
    /// first (`10GiB`).
    #[arg(long, value_name = "SIZE", env = "SBXRUN_STEP_CACHE_MAX", value_parser = super::units::parse_size)]
    pub step_cache_max: Option<u64>,
}

/// The step cache's directory: `--step-cache`, `$SBXRUN_STEP_CACHE_DIR`,
/// else `steps/` in the cache directory.
pub fn step_cache_dir(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("SBXRUN_STEP_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| assets::cache_dir().join("steps"))
}

impl StepCacheArgs {
    /// The cache options; every `--rebuild` name must be in `plan`.
    pub fn options(&self, plan: &Plan, cache_dir: &Path) -> Result<CacheOptions, CliError> {
        for name in &self.rebuild {
            let known = plan
                .instances()
                .iter()
                .any(|i| i.name == *name || i.step.as_str() == name);
            if !known {
                let names = plan.instances().iter().map(|i| i.step.as_str());
                let hint = sbxrun_runner::manifest::did_you_mean(name, names)
                    .map(|m| format!("; did you mean `{m}`?"))
                    .unwrap_or_default();
                return Err(CliError::usage(format!(
                    "--rebuild {name}: no such step in this run{hint}"
                )));
            }
        }
        Ok(CacheOptions {
            dir: (!self.no_cache).then(|| match &self.step_cache {
                Some(d) => d.clone(),
                None => cache_dir.join("steps"),
            }),
            rebuild: self.rebuild.clone(),
            max_bytes: self.step_cache_max.unwrap_or(runner::DEFAULT_MAX_BYTES),
        })
    }
}

fn parse_resolve(text: &str) -> Result<(String, Vec<std::net::IpAddr>), String> {
    sbxrun_runner::broker::parse_override(text)
}

impl Args {
    /// The steps `--only` selects.
    pub fn selection(&self) -> Selection {
        if self.only.is_empty() {
            Selection::All
        } else {
            Selection::Only(self.only.clone())
        }
    }

    /// What every VM shape of a run on this host shares: KVM and the guest
    /// assets must be usable here.
    pub fn pool_base(&self, run_dir: &Path, warm: usize) -> Result<PoolBase, CliError> {
        let kvm = super::require_kvm()?;
        let require =
            |asset| assets::require(asset, None).map_err(|e| CliError::Infra(e.to_string()));
        let (kernel, initramfs, image) = (
            require(Asset::Kernel)?,
            require(Asset::Initramfs)?,
            require(Asset::Image)?,
        );
        let cache = assets::cache_dir();
        let scratch = cache.join("run");
        clean_scratch(&scratch);
        Ok(PoolBase {
            cache,
            scratch,
            kernel,
            initramfs,
            default_image: image,
            flavour: kvm.flavour,
            console_dir: run_dir.join("logs").join(".vm"),
            warm,
            images: self.pull.options(),
            progress: super::prep::progress(self.log_format, super::prep::JsonTo::Stdout),
        })
    }

    /// How much the console shows.
    pub fn verbosity(&self) -> Verbosity {
        match (self.verbose, self.quiet) {
            (true, _) => Verbosity::Verbose,
            (_, true) => Verbosity::Quiet,
            _ => Verbosity::Normal,
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> CliResult {
    let (job, plan) = super::validate::load_and_plan(&args.job, args.syntax, &args.selection())?;
    sbxrun_runner::manifest::check_secrets(&job, |n| std::env::var_os(n).is_some())
        .map_err(|e| CliError::Manifest(sbxrun_runner::manifest::render(&e, true)))?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| runner::default_run_dir(job.name.as_str()));
    prepare_run_dir(&run_dir, args.force).map_err(CliError::usage)?;
    if args.slurm.executor == Executor::Slurm {
        if super::validate::is_stdin(&args.job) {
            return Err(CliError::usage(
                "--executor slurm needs the manifest in a file the nodes can read, not `-`",
            ));
        }
        return super::slurm::submit(args, job, plan, run_dir);
    }
    if args.slurm.detach {
        return Err(CliError::usage("--detach needs --executor slurm"));
    }
    let concurrency = args
        .concurrency
        .map(|c| c as usize)
        .or(job.concurrency.as_ref().map(|c| c.value as usize))
        .unwrap_or_else(runner::default_concurrency);
    let step_cache = args.cache.options(&plan, &assets::cache_dir())?;
    let warm = args.warm.unwrap_or_else(|| plan.width().min(concurrency));
    let verbosity = args.verbosity();
    let console = Console::new(verbosity, args.log_format);
    let opts = RunOptions {
        manifest: args.job.display().to_string(),
        run_dir: run_dir.clone(),
        concurrency,
        pools: args.pool_base(&run_dir, warm)?,
        console,
        resolve: args.resolve.iter().cloned().collect(),
        cache: step_cache,
    };
    let console = Console::new(verbosity, args.log_format);
    let summary = runner::run(&job, plan, opts).map_err(|e| CliError::infra(&e))?;
    console.summary(&summary.report, &run_dir.display().to_string());
    Ok(exit_code(summary.report.status))
}

/// The exit code of a run that finished, from its status.
pub fn exit_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Passed => EXIT_OK,
        RunStatus::Failed => EXIT_STEP_FAILED,
        // A report of a run that ended is never still running; should one
        // be, it did not succeed.
        RunStatus::Infra | RunStatus::Running => EXIT_INFRA,
        RunStatus::Interrupted => EXIT_INTERRUPTED,
    }
}

/// Why a run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("run directory {} is not empty; pass --force to replace the run in it", .0.display())]
    NotEmpty(PathBuf),
    #[error(
        "run directory {} is not empty and holds no report.json: it is not a run of ours, \
         so --force does not remove it",
        .0.display()
    )]
    NotARun(PathBuf),
    #[error("run directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `dir` ready for a new run: absent or empty is fine; a previous run
/// (it has a `report.json`) is removed with `force`; anything else is left
/// alone and refused.
pub fn prepare_run_dir(dir: &Path, force: bool) -> Result<(), RunDirError> {
    let io = |source| RunDirError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !force {
        return Err(RunDirError::NotEmpty(dir.to_owned()));
    }
    if !dir.join("report.json").is_file() {
        return Err(RunDirError::NotARun(dir.to_owned()));
    }
    std::fs::remove_dir_all(dir).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_empty_run_dirs_are_used_as_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        prepare_run_dir(&tmp.path().join("new"), false).unwrap();
        prepare_run_dir(tmp.path(), false).unwrap();
        assert!(tmp.path().is_dir());
    }

    #[test]
    fn a_previous_run_is_refused_unless_forced_then_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        std::fs::create_dir_all(dir.join("artifacts/build")).unwrap();
        std::fs::write(dir.join("report.json"), "{}").unwrap();
        std::fs::write(dir.join("artifacts/build/old.bin"), "old").unwrap();
        let err = prepare_run_dir(&dir, false).unwrap_err();
        assert!(matches!(err, RunDirError::NotEmpty(_)), "{err}");
        assert!(err.to_string().contains("--force"));
        assert!(dir.join("artifacts/build/old.bin").exists());
        prepare_run_dir(&dir, true).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn force_never_removes_a_directory_that_is_not_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("thesis.tex"), "precious").unwrap();
        let err = prepare_run_dir(tmp.path(), true).unwrap_err();
        assert!(matches!(err, RunDirError::NotARun(_)), "{err}");
        assert!(tmp.path().join("thesis.tex").exists());
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            prepare_run_dir(&file, true),
            Err(RunDirError::Io { .. })
        ));
    }
}
