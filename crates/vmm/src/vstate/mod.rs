//! KVM state: the VM, its guest memory and its vCPUs. All of the VMM's
//! KVM and mmap `unsafe` lives in this module.

pub mod cpuid;
pub mod memory;
pub mod persist;
pub mod vcpu;
pub mod vm;

#[cfg(test)]
#[path = "tsc_tests.rs"]
mod tsc_tests;
