//! Composition root: parse the CLI, run the command, map errors to exit codes.

fn main() {
    std::process::exit(sbxrun::cli::main());
}
