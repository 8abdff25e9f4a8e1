//! The VMM: runs inside the jailed `sbxrun __vmm` child process, one per
//! microVM. The only crate that links `kvm-ioctls`.
//!
//! It hears from the runner only through `sbxrun_proto` messages on its
//! control socket and broker channel. `unsafe` is confined to the KVM and
//! guest-memory code in `vstate`, the virtqueue memory accessors and the
//! descriptor handling of the network thread.

// Only `net` (for the egress benchmark) and `runtime` (for the binary) are
// used from outside; everything else is the crate's own.
#![warn(unreachable_pub)]

mod boot;
mod devices;
pub mod net;
mod netwire;
mod persist;
pub mod runtime;
mod vstate;
