//! sbxrun: declarative batch jobs where every step runs in its own KVM microVM.

pub mod cli;
pub mod errors;
pub mod manifest;
pub mod plan;
