//! The CPUID the guest sees: what KVM supports, with the topology of our
//! single-socket VM and, on kvm-pvm hosts, the features its instruction
//! emulator cannot run in kernel mode masked out.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use sbxrun_proto::control::KvmFlavour;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
#[cfg(test)]
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;

const ECX_CX16: u32 = 1 << 13;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x40000001 EAX: "the clocksource is stable". Left as KVM reports it
/// on both flavours: without it the guest's kvmclock has no vDSO, and every
/// `clock_gettime` becomes a syscall (measured on kvm-pvm: 0.9 ms per call
/// instead of 40 ns). The guest then marks sched_clock stable, which is a
/// static-key flip; our kernel is built without JUMP_LABEL, so that flip
/// patches no code with `int3` (which the kvm-pvm emulator cannot run).
#[cfg(test)]
const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;

/// Adjusts KVM's supported CPUID for vCPU `cpu_index` of a `vcpu_count` VM.
pub(crate) fn adjust(cpuid: &mut CpuId, cpu_index: u8, vcpu_count: u8, flavour: KvmFlavour) {
    for entry in cpuid.as_mut_slice() {
        adjust_entry(entry, cpu_index, vcpu_count, flavour);
    }
}

fn adjust_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, vcpu_count: u8, flavour: KvmFlavour) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC id [31:24], logical processors [23:16],
            // CLFLUSH line size in qwords [15:8].
            entry.ebx = (u32::from(cpu_index) << 24) | (u32::from(vcpu_count) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if flavour == KvmFlavour::Pvm {
                // SLUB's `lock cmpxchg16b` is not emulated in kernel mode.
                entry.ecx &= !ECX_CX16;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1. One core per vCPU, one package.
            entry.eax &= !(0x3f << 26);
            entry.eax |= u32::from(vcpu_count.saturating_sub(1)) << 26;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            // EDX is the x2APIC id of the asking CPU.
            entry.edx = u32::from(cpu_index);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn pvm_hides_cx16_but_both_keep_the_stable_clock() {
        let mut leaf1 = entry(LEAF_FEATURES);
        let mut kvm = entry(LEAF_KVM_FEATURES);
        adjust_entry(&mut leaf1, 0, 1, KvmFlavour::Pvm);
        adjust_entry(&mut kvm, 0, 1, KvmFlavour::Pvm);
        assert_eq!(leaf1.ecx & ECX_CX16, 0);
        assert_ne!(kvm.eax & KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, 0);

        let mut leaf1 = entry(LEAF_FEATURES);
        let mut kvm = entry(LEAF_KVM_FEATURES);
        adjust_entry(&mut leaf1, 0, 1, KvmFlavour::Hardware);
        adjust_entry(&mut kvm, 0, 1, KvmFlavour::Hardware);
        assert_ne!(leaf1.ecx & ECX_CX16, 0);
        assert_ne!(kvm.eax & KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, 0);
    }

    #[test]
    fn leaf1_reports_apic_id_and_logical_count() {
        let mut leaf1 = entry(LEAF_FEATURES);
        adjust_entry(&mut leaf1, 1, 2, KvmFlavour::Hardware);
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 2);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
    }
}
