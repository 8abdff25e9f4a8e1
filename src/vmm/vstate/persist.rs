//! Saving and restoring KVM state: every vCPU register file the guest can
//! observe, and the VM-wide interrupt controllers, PIT and clock.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read the {1}")]
    Get(#[source] kvm_ioctls::Error, &'static str),
    #[error("cannot restore the {1}")]
    Set(#[source] kvm_ioctls::Error, &'static str),
    #[error("KVM accepted only {accepted} of {total} MSRs")]
    PartialMsrs { accepted: usize, total: usize },
    #[error("too many MSRs")]
    MsrList,
}

/// A vCPU's complete architectural state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// (index, value) of every MSR KVM lets us read.
    pub msrs: Vec<(u32, u64)>,
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

/// Saves a paused vCPU. Its last exit must have been completed (see
/// `Vcpu::finish_pending_exit`) so no half-done I/O is lost.
pub fn save_vcpu(kvm: &Kvm, vcpu: &VcpuFd) -> Result<VcpuState, PersistError> {
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
        msrs: read_msrs(kvm, vcpu)?,
    })
}

/// Restores a vCPU created with the same CPUID as the saved one.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), PersistError> {
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
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// Saves the irqchips, PIT and kvmclock of a VM whose vCPUs are paused.
pub fn save_vm(vm: &VmFd) -> Result<VmState, PersistError> {
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

/// Restores VM-wide state into a VM that has its irqchip and PIT created.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), PersistError> {
    let set = |what| move |e| PersistError::Set(e, what);
    vm.set_irqchip(&state.pic_master)
        .map_err(set("PIC master"))?;
    vm.set_irqchip(&state.pic_slave).map_err(set("PIC slave"))?;
    vm.set_irqchip(&state.ioapic).map_err(set("IOAPIC"))?;
    vm.set_pit2(&state.pit).map_err(set("PIT"))?;
    // Only the clock value can be set; the flags describe the host's clock.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(set("kvmclock"))
}
