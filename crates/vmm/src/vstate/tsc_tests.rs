//! The guest TSC across a snapshot, on this host's real KVM: a vCPU restored
//! from a state saved at another TSC frequency runs at the saved frequency,
//! or the restore fails naming both (a host that cannot scale its TSC must
//! not silently give the guest a clock that runs fast or slow).

use sbxrun_proto::control::{detect_flavour, KvmFlavour};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::persist::{PersistError, VcpuArgs};
use super::vcpu::Vcpu;
use super::vm::Vm;
use crate::persist::Persist;

/// These tests need the host's real KVM; without it they fail and say so.
fn require_kvm() -> KvmFlavour {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need read-write /dev/kvm ({e}); run them on a KVM host");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    detect_flavour(
        std::path::Path::new("/sys/module/kvm_pvm").exists(),
        &cpuinfo,
    )
}

/// A fresh VM; the memory is returned to outlive the VM's slot.
fn fresh_vm() -> (Vm, GuestMemoryMmap, KvmFlavour) {
    let flavour = require_kvm();
    let memory: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let vm = Vm::new(&memory).expect("VM");
    (vm, memory, flavour)
}

/// A vCPU of a fresh VM; the VM and memory are returned to outlive it.
fn fresh_vcpu() -> (Vcpu, Vm, GuestMemoryMmap) {
    let (vm, memory, flavour) = fresh_vm();
    let vcpu = Vcpu::new(&vm, 0, 1, flavour).expect("vCPU");
    (vcpu, vm, memory)
}

/// Restores `state` as vCPU 0 of a fresh VM, returned with its memory to
/// outlive the vCPU.
fn restore_in_fresh_vm(
    state: &super::persist::VcpuState,
) -> (Result<Vcpu, PersistError>, Vm, GuestMemoryMmap) {
    let (vm, memory, flavour) = fresh_vm();
    let args = VcpuArgs {
        vm: &vm,
        index: 0,
        count: 1,
        flavour,
    };
    let vcpu = Vcpu::restore(args, state);
    (vcpu, vm, memory)
}

#[test]
fn a_restored_vcpu_runs_at_the_saved_tsc_frequency_or_the_restore_says_why_not() {
    let (vcpu, _vm, _memory) = fresh_vcpu();
    let mut state = vcpu.save().expect("save");
    let host_khz = state.tsc_khz.expect("KVM_GET_TSC_KHZ answers on this host");
    // A snapshot taken on a host whose TSC ran 10 % faster.
    let saved_khz = host_khz + host_khz / 10;
    state.tsc_khz = Some(saved_khz);
    let (target, _vm2, _memory2) = restore_in_fresh_vm(&state);
    match target {
        Ok(target) => {
            let now = target.fd().get_tsc_khz().expect("TSC frequency");
            assert!(
                now.abs_diff(saved_khz) <= saved_khz / 1000,
                "restored at {now} kHz, saved {saved_khz} kHz"
            );
        }
        Err(e @ PersistError::TscScaling(..)) => {
            let text = e.to_string();
            assert!(
                text.contains(&saved_khz.to_string()) && text.contains(&host_khz.to_string()),
                "{text}"
            );
        }
        Err(e) => panic!("restore failed otherwise: {e}"),
    }
}

#[test]
fn a_tsc_frequency_within_tolerance_is_left_alone() {
    let (vcpu, _vm, _memory) = fresh_vcpu();
    let mut state = vcpu.save().expect("save");
    let host_khz = state.tsc_khz.expect("KVM_GET_TSC_KHZ answers on this host");
    state.tsc_khz = Some(host_khz + 1);
    let (target, _vm2, _memory2) = restore_in_fresh_vm(&state);
    let target = target.expect("restore within tolerance");
    assert_eq!(target.fd().get_tsc_khz().expect("TSC frequency"), host_khz);
}
