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

/// An error and its sources, joined with ": ", for one-line messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
