//! Composition root: parse the CLI, run the command, print the error if
//! there is one, and exit with the code `errors` documents.

#![forbid(unsafe_code)]

mod cli;
mod errors;

fn main() {
    let code = match cli::main() {
        Ok(code) => code,
        Err(e) => {
            e.print();
            e.exit_code()
        }
    };
    std::process::exit(code);
}
