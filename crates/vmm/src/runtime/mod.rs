//! The body of a `__vmm` process: build the VM from the runner's
//! [`VmConfig`](sbxrun_proto::control::VmConfig) (cold boot or snapshot
//! restore), run it, and report how it ended — or pause it and write its
//! snapshot.
//!
//! - [`process`]: the process around the VM: the config, the jail, how the
//!   process reports its end, and the jail self-test.
//! - [`control`]: the running VM: its threads, the runner's requests, and
//!   waiting for the first of them to end the VM.
//! - [`build`]: a runnable VM, by cold boot or by restore.
//! - [`snapshot`]: pausing the VM and writing its snapshot.
//!
//! Threads: the vCPU thread (guest execution, device emulation on exits),
//! the network thread (the guest's frames, under its own filter), the
//! guest-input pump (runner bytes -> virtio-console), the broker reader
//! and the control reader (runner requests). The main thread waits for the
//! first of them to end the VM, reports, and returns; the process exit
//! tears everything down.
//!
//! Jail (see `sbxrun_jail`): entered right after the config arrives (the
//! process forks there; the parent only relays how the VMM ended), locked
//! once every file is open, and each thread applies its seccomp filter
//! before it handles anything the guest controls.

mod build;
mod control;
mod error;
mod process;
mod snapshot;

pub use process::{run, run_jail_selftest, Channels};
