//! sbxrun's runner: everything on the host side of a run except the VMM.
//!
//! The data flow, module by module: `manifest` (YAML/KDL → typed job,
//! pure) → `plan` (job → DAG, pure) → `runner` (scheduling, retries,
//! timeouts, signals) → `pool` (snapshots, warm VMs; talks to VMM processes
//! only through `sbxrun_proto` messages) → `artifacts` (tar streams on
//! block images) → `report` (console, JUnit, JSON). `broker` opens the
//! host sockets a guest's egress policy allows.
//!
//! No `unsafe` here: what needs the kernel's raw interfaces lives in the
//! VMM and jail crates.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod assets;
pub mod broker;
pub mod errors;
pub mod host;
pub mod manifest;
pub mod plan;
pub mod pool;
pub mod report;
pub mod runner;
