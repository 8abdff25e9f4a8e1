//! The VMM: runs inside the `sbxrun __vmm` child process, one per microVM.

pub mod api;
pub mod boot;
pub mod devices;
pub mod layout;
pub mod net;
pub mod netchan;
pub mod netwire;
pub mod runtime;
pub mod snapshot;
pub mod vstate;
