//! `sbxrun graph JOB`: print the planned DAG as text, dot or Mermaid.

use super::stdout::out;
use std::path::PathBuf;

use crate::errors::{CliResult, EXIT_OK};
use sbxrun_runner::plan::{Format, Selection};

/// Arguments of `sbxrun graph`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest (`.yaml`, `.yml` or `.kdl`).
    pub job: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
    /// Only these steps (or instances, `test[case=a]`) and what they need.
    #[arg(long = "only", value_name = "STEP")]
    pub only: Vec<String>,
    /// The manifest's syntax, for `-` (default yaml) or a file whose name
    /// does not say.
    #[arg(long, value_enum)]
    pub syntax: Option<super::validate::ManifestSyntax>,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Instances by depth.
    Text,
    /// Graphviz.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Runs the command.
pub fn run(args: Args) -> CliResult {
    let selection = if args.only.is_empty() {
        Selection::All
    } else {
        Selection::Only(args.only)
    };
    let (_, plan) = super::validate::load_and_plan(&args.job, args.syntax, &selection)?;
    let format = match args.format {
        GraphFormat::Text => Format::Text,
        GraphFormat::Dot => Format::Dot,
        GraphFormat::Mermaid => Format::Mermaid,
    };
    out!("{}", plan.render(format));
    Ok(EXIT_OK)
}
