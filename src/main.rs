//! Composition root: parse the CLI, run the command, map errors to exit codes.

#![forbid(unsafe_code)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
