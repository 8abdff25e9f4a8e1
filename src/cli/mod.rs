//! Command-line interface.

use clap::{Parser, Subcommand};

pub mod graph;
pub mod validate;

/// sbxrun: run a job's steps, each in its own microVM.
#[derive(Debug, Parser)]
#[command(name = "sbxrun", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a job manifest; exit 0 if valid, 2 if not.
    Validate(validate::Args),
    /// Print a job's step graph.
    Graph(graph::Args),
}

/// Entry point used by `main`; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                crate::errors::EXIT_USAGE
            } else {
                crate::errors::EXIT_OK
            };
        }
    };
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Graph(args) => graph::run(args),
    }
}
