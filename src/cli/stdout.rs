//! What commands print on stdout. `println!` panics when the reader has
//! gone (`sbxrun graph job.yaml | head -1`); a command-line tool should
//! stop quietly instead, as the shell's own tools do when SIGPIPE ends
//! them. SIGPIPE itself stays ignored: the runner's sockets to its VMMs
//! must see EPIPE as an error, not kill the process.

use std::io::{self, Write};

use crate::errors::{EXIT_INFRA, EXIT_OK};

/// Writes `text` to stdout; ends the process quietly (exit 0) when the
/// reader has closed the pipe, and with a message and the infrastructure
/// exit code on any other write error.
pub fn write(text: &str) {
    let result = {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(EXIT_OK),
        Err(e) => {
            eprintln!("sbxrun: cannot write to stdout: {e}");
            std::process::exit(EXIT_INFRA)
        }
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::stdout::write(&format!($($arg)*))
    };
}

/// `println!` through [`write`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::stdout::write(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
