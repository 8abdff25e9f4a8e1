//! sbxrun: declarative batch jobs where every step runs in its own KVM microVM.

pub mod artifacts;
pub mod assets;
pub mod cli;
pub mod egress;
pub mod errors;
pub mod host;
pub mod jail;
pub mod manifest;
pub mod plan;
pub mod pool;
pub mod report;
pub mod runner;
pub mod vmm;
