//! KVM state: the VM, its guest memory and its vCPUs. All of the VMM's
//! KVM and mmap `unsafe` lives in this module.

pub(crate) mod cpuid;
pub(crate) mod memory;
pub(crate) mod persist;
pub(crate) mod vcpu;
pub(crate) mod vm;

#[cfg(test)]
#[path = "tsc_tests.rs"]
mod tsc_tests;
