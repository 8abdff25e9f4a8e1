//! How a command ends, as the user and their scripts see it: every exit
//! code sbxrun uses is defined and documented here and nowhere else, and
//! every error a command meets is one [`CliError`], printed once by `main`.
//!
//! | code  | meaning |
//! |-------|---------|
//! | 0     | success: every required step passed (`run`), the manifest is valid (`validate`), the host is ready (`doctor`) |
//! | 1     | `run`: a required step failed (its verdict was not `passed`) |
//! | 2     | usage: the command line, the manifest, or a path the user named is invalid; nothing was run |
//! | 3     | infrastructure: no KVM, guest assets missing, a VM could not start or died, the cache could not be read or written |
//! | 124   | `exec`: the command outlived `--timeout` (as timeout(1)) |
//! | 127   | `exec`: the command was not found in the guest (as a shell) |
//! | 128+N | `exec`: the command was killed by signal N (as a shell) |
//! | 130   | interrupted (SIGINT/SIGTERM); the reports were still written |
//!
//! `exec` otherwise exits with the guest command's own exit code, so a
//! command exiting 1, 2 or 3 is indistinguishable from sbxrun's own codes;
//! scripts that must tell them apart use `run`, whose report says which.

use std::fmt;

/// Every required step passed; or the command did what it was asked.
pub const EXIT_OK: i32 = 0;
/// A required step failed.
pub const EXIT_STEP_FAILED: i32 = 1;
/// The manifest or the command line was invalid.
pub const EXIT_USAGE: i32 = 2;
/// Infrastructure: no KVM, assets missing, a VM could not start.
pub const EXIT_INFRA: i32 = 3;
/// `exec`: the command timed out.
pub const EXIT_TIMEOUT: i32 = 124;
/// `exec`: the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// `exec`: added to the number of the signal that killed the command.
pub const EXIT_SIGNAL_BASE: i32 = 128;
/// Interrupted (reports are still written).
pub const EXIT_INTERRUPTED: i32 = 130;

/// What stops a command before it can finish its work.
#[derive(Debug)]
pub enum CliError {
    /// The command line or a file the user named is wrong; nothing ran.
    Usage(String),
    /// A manifest diagnostic, already rendered with its source excerpt:
    /// printed as it is, without a prefix.
    Manifest(String),
    /// The host, the cache or a VM failed.
    Infra(String),
}

impl CliError {
    /// A usage error from anything printable.
    pub fn usage(message: impl fmt::Display) -> Self {
        CliError::Usage(message.to_string())
    }

    /// An infrastructure error with its whole cause chain in the message.
    pub fn infra(error: &dyn std::error::Error) -> Self {
        CliError::Infra(sbxrun_runner::errors::chain(error))
    }

    /// The process exit code this error ends with.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Manifest(_) => EXIT_USAGE,
            CliError::Infra(_) => EXIT_INFRA,
        }
    }

    /// Prints the error to stderr the one way sbxrun prints errors.
    pub fn print(&self) {
        match self {
            CliError::Manifest(rendered) => eprint!("{rendered}"),
            CliError::Usage(message) | CliError::Infra(message) => {
                eprintln!("sbxrun: {message}")
            }
        }
    }
}

/// A command's result: the exit code of a command that ran to its end
/// (which may still say that steps failed), or the error that stopped it.
pub type CliResult = Result<i32, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_has_its_documented_code() {
        assert_eq!(CliError::usage("x").exit_code(), 2);
        assert_eq!(CliError::Manifest("x".into()).exit_code(), 2);
        let io = std::io::Error::other("disk gone");
        let e = CliError::infra(&io);
        assert_eq!(e.exit_code(), 3);
        assert!(matches!(e, CliError::Infra(ref m) if m == "disk gone"));
    }
}
