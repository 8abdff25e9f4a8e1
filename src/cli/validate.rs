//! `sbxrun validate JOB`: load and plan a manifest, report every problem.

use super::stdout::outln;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::errors::{CliError, CliResult, EXIT_OK};
use sbxrun_runner::manifest::{self, Job};
use sbxrun_runner::plan::{Plan, Selection};

/// Arguments of `sbxrun validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest (`.yaml`, `.yml` or `.kdl`).
    pub job: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> CliResult {
    let (job, plan) = load_and_plan(&args.job, &Selection::All)?;
    {
        {
            outln!(
                "{}: ok: job `{}`, {} step{}, {} instance{}",
                args.job.display(),
                job.name.as_str(),
                job.steps.len(),
                if job.steps.len() == 1 { "" } else { "s" },
                plan.len(),
                if plan.len() == 1 { "" } else { "s" },
            );
        }
    }
    Ok(EXIT_OK)
}

/// Loads and plans a manifest; a failure is the rendered diagnostic.
pub(crate) fn load_and_plan(path: &Path, selection: &Selection) -> Result<(Job, Plan), CliError> {
    let job = manifest::load(path).map_err(|e| report(&e))?;
    let plan = Plan::new(&job, selection).map_err(|e| report(&e))?;
    Ok((job, plan))
}

/// A manifest diagnostic rendered for stderr: with colour and source
/// excerpt on a terminal, plain text otherwise.
pub(crate) fn report(e: &dyn miette::Diagnostic) -> CliError {
    let stderr = std::io::stderr();
    let plain = !stderr.is_terminal() || std::env::var_os("NO_COLOR").is_some();
    CliError::Manifest(manifest::render(e, plain))
}
