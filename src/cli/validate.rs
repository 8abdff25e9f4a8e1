//! `sbxrun validate JOB`: load and plan a manifest, report every problem.

use super::stdout::outln;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use sbxrun_runner::errors::{EXIT_OK, EXIT_USAGE};
use sbxrun_runner::manifest::{self, Job};
use sbxrun_runner::plan::{Plan, Selection};

/// Arguments of `sbxrun validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest (`.yaml`, `.yml` or `.kdl`).
    pub job: PathBuf,
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    match load_and_plan(&args.job, &Selection::All) {
        Ok((job, plan)) => {
            outln!(
                "{}: ok: job `{}`, {} step{}, {} instance{}",
                args.job.display(),
                job.name.as_str(),
                job.steps.len(),
                if job.steps.len() == 1 { "" } else { "s" },
                plan.len(),
                if plan.len() == 1 { "" } else { "s" },
            );
            EXIT_OK
        }
        Err(code) => code,
    }
}

/// Loads and plans a manifest; on failure prints the diagnostic to stderr
/// and returns the exit code.
pub(crate) fn load_and_plan(path: &Path, selection: &Selection) -> Result<(Job, Plan), i32> {
    let job = manifest::load(path).map_err(|e| report(&e))?;
    let plan = Plan::new(&job, selection).map_err(|e| report(&e))?;
    Ok((job, plan))
}

fn report(e: &dyn miette::Diagnostic) -> i32 {
    let stderr = std::io::stderr();
    let plain = !stderr.is_terminal() || std::env::var_os("NO_COLOR").is_some();
    eprint!("{}", manifest::render(e, plain));
    EXIT_USAGE
}
