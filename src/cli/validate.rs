//! `sbxrun validate JOB`: load and plan a manifest, report every problem.

use super::stdout::outln;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::errors::{CliError, CliResult, EXIT_OK};
use sbxrun_runner::manifest::{self, Job, SourceFile, Syntax};
use sbxrun_runner::plan::{Plan, Selection};

/// Arguments of `sbxrun validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest (`.yaml`, `.yml` or `.kdl`), or `-` for standard
    /// input.
    pub job: PathBuf,
    /// The manifest's syntax, for `-` (default yaml) or a file whose
    /// name does not say.
    #[arg(long, value_enum, alias = "format")]
    pub syntax: Option<ManifestSyntax>,
}

/// `--syntax` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestSyntax {
    Yaml,
    Kdl,
}

impl From<ManifestSyntax> for Syntax {
    fn from(s: ManifestSyntax) -> Syntax {
        match s {
            ManifestSyntax::Yaml => Syntax::Yaml,
            ManifestSyntax::Kdl => Syntax::Kdl,
        }
    }
}

/// Whether `path` means standard input.
pub(crate) fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Runs the command.
pub fn run(args: Args) -> CliResult {
    let (job, plan) = load_and_plan(&args.job, args.syntax, &Selection::All)?;
    {
        {
            outln!(
                "{}: ok: job `{}`, {} step{}, {} instance{}",
                if is_stdin(&args.job) {
                    "<stdin>".to_owned()
                } else {
                    args.job.display().to_string()
                },
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
pub(crate) fn load_and_plan(
    path: &Path,
    syntax: Option<ManifestSyntax>,
    selection: &Selection,
) -> Result<(Job, Plan), CliError> {
    let job = if is_stdin(path) {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            CliError::usage(format!("cannot read the manifest from standard input: {e}"))
        })?;
        // Host inputs are relative to where the command runs.
        let source = SourceFile::new(
            "<stdin>".to_owned(),
            text,
            PathBuf::from("."),
            syntax.map_or(Syntax::Yaml, Syntax::from),
        );
        manifest::load_source(source)
    } else {
        manifest::load_as(path, syntax.map(Syntax::from))
    }
    .map_err(|e| report(&e))?;
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
