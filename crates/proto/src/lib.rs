//! What the runner and the VMM process say to each other, and the facts of
//! the guest platform both sides must agree on: the control messages and
//! their framing, the broker channel of the network thread, the jail
//! configuration, the snapshot file envelope, the guest memory and device
//! layout, and the kernel command line.
//!
//! Pure data and framing, no policy: the runner links this crate without
//! linking the VMM, so the only way it can drive a VM is by these messages.
//! The snapshot key covers the command line built here, which is why it
//! lives on this side of the boundary.

#![forbid(unsafe_code)]

pub mod cmdline;
pub mod control;
pub mod guest_net;
pub mod jail;
pub mod layout;
pub mod netchan;
pub mod snapshot_file;

/// An error and its sources joined with ": ", for one-line messages: the
/// VMM reports its failures this way and the runner prints them this way.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
