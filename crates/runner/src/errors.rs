//! User-facing errors and the documented exit codes.

/// Every step that was required passed.
pub const EXIT_OK: i32 = 0;
/// A step failed.
pub const EXIT_STEP_FAILED: i32 = 1;
/// The manifest or the command line was invalid.
pub const EXIT_USAGE: i32 = 2;
/// Infrastructure: no KVM, assets missing, a VM could not start.
pub const EXIT_INFRA: i32 = 3;
/// Interrupted (reports are still written).
pub const EXIT_INTERRUPTED: i32 = 130;

pub use sbxrun_proto::error_chain as chain;
