//! `sbxrun schema job|report|events`: print a JSON Schema, as checked in
//! under `schemas/` (tests keep those files equal to what the types
//! generate), so editors and CI can fetch the one that matches this build.

use super::stdout::out;
use crate::errors::{CliResult, EXIT_OK};

/// Arguments of `sbxrun schema`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which schema.
    #[arg(value_enum)]
    pub which: Which,
}

/// The schemas there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Job manifests (YAML or KDL, as their JSON tree).
    Job,
    /// `report.json`.
    Report,
    /// The lines of `--log-format json`.
    Events,
}

impl Which {
    /// The schema's text, as in `schemas/`.
    pub fn text(self) -> &'static str {
        match self {
            Which::Job => include_str!("../../schemas/job.schema.json"),
            Which::Report => include_str!("../../schemas/report.schema.json"),
            Which::Events => include_str!("../../schemas/events.schema.json"),
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> CliResult {
    out!("{}", args.which.text());
    Ok(EXIT_OK)
}
