//! [`Persist`] for the KVM pieces: the vCPU (every register file the guest
//! can observe) and the VM (the interrupt controllers, PIT and clock).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::vcpu::{Vcpu, VcpuError};
use super::vm::{Vm, VmError};
use crate::persist::Persist;
use sbxrun_proto::control::KvmFlavour;

/// Errors saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    /// Creating the VM to restore into failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Creating the vCPU to restore into failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot read the {1}")]
    Get(#[source] kvm_ioctls::Error, &'static str),
    #[error("cannot restore the {1}")]
    Set(#[source] kvm_ioctls::Error, &'static str),
    #[error("KVM accepted only {accepted} of {total} MSRs")]
    PartialMsrs { accepted: usize, total: usize },
    #[error("too many MSRs")]
    MsrList,
    #[error("the snapshot's TSC ran at {1} kHz, this host's at {2} kHz, and KVM cannot scale it")]
    TscScaling(#[source] kvm_ioctls::Error, u32, u32),
}

/// A vCPU's complete architectural state.
#[derive(Serialize, Deserialize)]
pub(crate) struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// (index, value) of every MSR KVM lets us read. IA32_TSC is among
    /// them: on hardware KVM writing it back sets the TSC offset, so the
    /// guest's TSC continues from the snapshot instead of the host's.
    pub msrs: Vec<(u32, u64)>,
    /// The guest TSC's frequency; `None` where KVM cannot tell.
    #[serde(default)]
    pub tsc_khz: Option<u32>,
}

/// How far a host's TSC frequency may be from the snapshot's before the
/// guest's is scaled to the saved one: NTP's tolerance, the same one
/// Firecracker uses. Closer than that, scaling would cost more than it fixes.
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// Whether a guest whose TSC ran at `saved` kHz needs KVM_SET_TSC_KHZ on a
/// vCPU that starts at `current` kHz.
fn tsc_needs_scaling(saved: u32, current: u32) -> bool {
    let diff = u64::from(saved.abs_diff(current));
    diff * 1_000_000 > u64::from(saved) * TSC_KHZ_TOLERANCE_PPM
}

/// Reads every MSR in KVM's index list that this host lets us read. Some
/// indexes in the list fail on some hosts (kvm-pvm among them); those are
/// left out rather than failing the snapshot.
fn read_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<(u32, u64)>, PersistError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| PersistError::Get(e, "MSR index list"))?;
    let mut indexes: Vec<u32> = list.as_slice().to_vec();
    let mut out = Vec::with_capacity(indexes.len());
    while !indexes.is_empty() {
        let entries: Vec<kvm_msr_entry> = indexes
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| PersistError::MsrList)?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|e| PersistError::Get(e, "MSRs"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it cannot read: skip it and go on.
        let skip = (read + 1).min(indexes.len());
        indexes.drain(..skip);
    }
    Ok(out)
}

/// What a restored vCPU is created with besides its state: the same
/// CPUID inputs as at cold boot, since KVM_SET_XSAVE and the MSRs assume
/// the CPUID the state was saved under.
pub(crate) struct VcpuArgs<'a> {
    /// The VM the vCPU belongs to.
    pub vm: &'a Vm,
    /// The vCPU's index.
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// Which kind of KVM the CPUID is adjusted for.
    pub flavour: KvmFlavour,
}

impl Persist for Vcpu {
    type State = VcpuState;
    type RestoreArgs<'a> = VcpuArgs<'a>;
    type Error = PersistError;

    /// Saves a paused vCPU. Its last exit must have been completed (see
    /// `Vcpu::finish_pending_exit`) so no half-done I/O is lost.
    fn save(&self) -> Result<VcpuState, PersistError> {
        let vcpu = self.fd();
        let get = |what| move |e| PersistError::Get(e, what);
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(get("registers"))?,
            sregs: vcpu.get_sregs().map_err(get("segment registers"))?,
            xsave: vcpu.get_xsave().map_err(get("XSAVE area"))?,
            xcrs: vcpu.get_xcrs().map_err(get("XCRs"))?,
            debugregs: vcpu.get_debug_regs().map_err(get("debug registers"))?,
            lapic: vcpu.get_lapic().map_err(get("LAPIC"))?,
            mp_state: vcpu.get_mp_state().map_err(get("MP state"))?,
            events: vcpu.get_vcpu_events().map_err(get("pending events"))?,
            msrs: read_msrs(self.kvm(), vcpu)?,
            tsc_khz: vcpu.get_tsc_khz().ok(),
        })
    }

    /// Creates the vCPU with the same CPUID as the saved one and loads it.
    fn restore(args: VcpuArgs<'_>, state: &VcpuState) -> Result<Self, PersistError> {
        let vcpu = Vcpu::new(args.vm, args.index, args.count, args.flavour)?;
        load_vcpu(vcpu.fd(), state)?;
        Ok(vcpu)
    }
}

/// Loads `state` into a vCPU created with the same CPUID as the saved one.
fn load_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), PersistError> {
    let set = |what| move |e| PersistError::Set(e, what);
    vcpu.set_sregs(&state.sregs)
        .map_err(set("segment registers"))?;
    vcpu.set_regs(&state.regs).map_err(set("registers"))?;
    // SAFETY: `state.xsave` was produced by KVM_GET_XSAVE on a vCPU with the
    // same CPUID, so its size and layout are what KVM_SET_XSAVE expects.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(set("XSAVE area"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(set("XCRs"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(set("debug registers"))?;
    // The LAPIC goes before the MSRs: KVM ignores a write to
    // IA32_TSC_DEADLINE unless the LAPIC timer is already in TSC-deadline
    // mode, so in the other order the guest's armed timer is lost and a
    // restored guest never wakes from sleep(1) or a poll timeout.
    vcpu.set_lapic(&state.lapic).map_err(set("LAPIC"))?;
    // The frequency before the TSC value: KVM converts the written TSC with
    // the vCPU's current frequency.
    if let Some(saved) = state.tsc_khz {
        let current = vcpu
            .get_tsc_khz()
            .map_err(|e| PersistError::Get(e, "TSC frequency"))?;
        if tsc_needs_scaling(saved, current) {
            vcpu.set_tsc_khz(saved)
                .map_err(|e| PersistError::TscScaling(e, saved, current))?;
        }
    }
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| PersistError::MsrList)?;
    let accepted = vcpu.set_msrs(&msrs).map_err(set("MSRs"))?;
    if accepted != entries.len() {
        return Err(PersistError::PartialMsrs {
            accepted,
            total: entries.len(),
        });
    }
    vcpu.set_mp_state(state.mp_state).map_err(set("MP state"))?;
    vcpu.set_vcpu_events(&state.events)
        .map_err(set("pending events"))?;
    Ok(())
}

/// VM-wide interrupt and timer state.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl Persist for Vm {
    type State = VmState;
    /// The guest memory the VM is built on (mapped from the snapshot's
    /// memory file).
    type RestoreArgs<'a> = &'a GuestMemoryMmap;
    type Error = PersistError;

    /// Saves the irqchips, PIT and kvmclock of a VM whose vCPUs are paused.
    fn save(&self) -> Result<VmState, PersistError> {
        let vm = self.fd();
        let chip = |id| -> Result<kvm_irqchip, PersistError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map_err(|e| PersistError::Get(e, "irqchip"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(|e| PersistError::Get(e, "PIT"))?,
            clock: vm
                .get_clock()
                .map_err(|e| PersistError::Get(e, "kvmclock"))?,
        })
    }

    /// Creates a VM on `memory` (irqchip and PIT included) and loads the
    /// VM-wide state into it.
    fn restore(memory: &GuestMemoryMmap, state: &VmState) -> Result<Self, PersistError> {
        let vm = Vm::new(memory)?;
        let fd = vm.fd();
        let set = |what| move |e| PersistError::Set(e, what);
        fd.set_irqchip(&state.pic_master)
            .map_err(set("PIC master"))?;
        fd.set_irqchip(&state.pic_slave).map_err(set("PIC slave"))?;
        fd.set_irqchip(&state.ioapic).map_err(set("IOAPIC"))?;
        fd.set_pit2(&state.pit).map_err(set("PIT"))?;
        // Only the clock value can be set; the flags describe the host's clock.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock).map_err(set("kvmclock"))?;
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_is_scaled_only_beyond_ntp_tolerance() {
        assert!(!tsc_needs_scaling(2_000_000, 2_000_000));
        // 250 ppm of 2 GHz is 500 kHz.
        assert!(!tsc_needs_scaling(2_000_000, 2_000_500));
        assert!(!tsc_needs_scaling(2_000_000, 1_999_500));
        assert!(tsc_needs_scaling(2_000_000, 2_000_501));
        assert!(tsc_needs_scaling(2_000_000, 1_999_499));
        assert!(tsc_needs_scaling(2_000_000, 3_000_000));
    }

    #[test]
    fn old_vcpu_states_without_a_tsc_frequency_still_load() {
        let mut json = serde_json::to_value(VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
            msrs: vec![(0x10, 42)],
            tsc_khz: Some(1),
        })
        .unwrap();
        json.as_object_mut().unwrap().remove("tsc_khz");
        let state: VcpuState = serde_json::from_value(json).unwrap();
        assert_eq!(state.tsc_khz, None);
        assert_eq!(state.msrs, [(0x10, 42)]);
    }
}
