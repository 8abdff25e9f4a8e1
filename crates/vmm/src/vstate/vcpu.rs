//! One vCPU: its boot state and its run loop. Exits that devices handle go
//! to an [`ExitHandler`]; the rest end the VM with a typed [`VmExit`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::cpuid;
use super::vm::Vm;
use sbxrun_proto::control::{KvmFlavour, VmExit};
use sbxrun_proto::layout::{BOOT_GDT_START, BOOT_IDT_START, PVH_INFO_START};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VcpuError {
    #[error("cannot create vCPU {1}")]
    Create(#[source] kvm_ioctls::Error, u8),
    #[error("cannot read the supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set the vCPU's {1}")]
    SetState(#[source] kvm_ioctls::Error, &'static str),
    #[error("cannot read the vCPU's {1}")]
    GetState(#[source] kvm_ioctls::Error, &'static str),
}

/// Handles the exits that belong to emulated devices.
pub(crate) trait ExitHandler {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    /// Returns true when the write asked for a machine reset.
    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
}

/// The GDT the PVH entry runs on: flat 32-bit code and data, and a TSS.
/// Entries are (access+flags, base, limit) in the packed descriptor layout.
pub(crate) const BOOT_GDT: [(u16, u32, u32); 4] = [
    (0, 0, 0),
    (0xc09b, 0, 0xffff_ffff),
    (0xc093, 0, 0xffff_ffff),
    (0x008b, 0, 0x67),
];

/// Encodes one GDT descriptor.
pub(crate) fn gdt_descriptor((flags, base, limit): (u16, u32, u32)) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

fn segment_from_gdt(index: usize) -> kvm_segment {
    let (flags, base, limit) = BOOT_GDT[index];
    // A page-granular limit describes the whole 4 GiB; KVM wants it in bytes.
    let granular = (flags >> 15) & 1 == 1;
    kvm_segment {
        base: u64::from(base),
        limit,
        selector: (index as u16) * 8,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: granular as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: u8::from((flags >> 7) & 1 == 0),
        padding: 0,
    }
}

/// A vCPU ready to run.
pub(crate) struct Vcpu {
    fd: VcpuFd,
    /// The system handle, for the MSR index list a save reads.
    kvm: Arc<Kvm>,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with our CPUID.
    pub(crate) fn new(
        vm: &Vm,
        index: u8,
        count: u8,
        flavour: KvmFlavour,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(e, index))?;
        let mut cpuid = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        cpuid::adjust(&mut cpuid, index, count, flavour);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetState(e, "CPUID"))?;
        let vcpu = Vcpu {
            fd,
            kvm: vm.kvm().clone(),
        };
        vcpu.set_virtual_wire_lapic()?;
        Ok(vcpu)
    }

    /// The KVM handle, for snapshotting.
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The KVM system handle, for snapshotting.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// LINT0 as ExtINT and LINT1 as NMI: the guest has no MP table or ACPI,
    /// so its interrupts come from the 8259 PIC through LINT0.
    fn set_virtual_wire_lapic(&self) -> Result<(), VcpuError> {
        const APIC_LVT0: usize = 0x350;
        const APIC_LVT1: usize = 0x360;
        const DELIVERY_EXTINT: u32 = 0x7 << 8;
        const DELIVERY_NMI: u32 = 0x4 << 8;
        const DELIVERY_MASK: u32 = 0x7 << 8;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(|e| VcpuError::GetState(e, "LAPIC"))?;
        for (offset, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
            let reg = &mut lapic.regs[offset..offset + 4];
            let bytes: [u8; 4] = [reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8];
            let value = (u32::from_le_bytes(bytes) & !DELIVERY_MASK) | mode;
            for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
                *dst = src as i8;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| VcpuError::SetState(e, "LAPIC"))
    }

    /// Puts the vCPU at the PVH entry: 32-bit protected mode, paging off,
    /// flat segments, %ebx = the `hvm_start_info` address.
    pub(crate) fn configure_pvh_boot(&self, entry: u64) -> Result<(), VcpuError> {
        let regs = kvm_regs {
            rip: entry,
            rbx: PVH_INFO_START,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(|e| VcpuError::SetState(e, "registers"))?;

        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::GetState(e, "sregs"))?;
        let code = segment_from_gdt(1);
        let data = segment_from_gdt(2);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment_from_gdt(3);
        sregs.gdt.base = BOOT_GDT_START;
        sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
        sregs.idt.base = BOOT_IDT_START;
        sregs.idt.limit = 7;
        const X86_CR0_PE: u64 = 0x1;
        const X86_CR0_ET: u64 = 0x10;
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| VcpuError::SetState(e, "sregs"))?;

        // Power-on FPU state: x87 control word and MXCSR defaults.
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(|e| VcpuError::SetState(e, "FPU"))
    }

    /// Runs the guest until the VM must end, or until `stop` is set and the
    /// vCPU has been kicked out of KVM_RUN (then `None`).
    pub(crate) fn run(
        &mut self,
        handler: &mut dyn ExitHandler,
        stop: &AtomicBool,
    ) -> Option<VmExit> {
        loop {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => handler.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if handler.pio_write(port, data) {
                        return Some(VmExit::GuestReset);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => handler.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => handler.mmio_write(addr, data),
                // With the in-kernel LAPIC a HLT exit only reaches us when the
                // guest halted with interrupts off: it is done for good.
                Ok(VcpuExit::Hlt) => return Some(VmExit::GuestReset),
                Ok(VcpuExit::Shutdown) => return Some(VmExit::TripleFault),
                Ok(VcpuExit::SystemEvent(_, _)) => return Some(VmExit::GuestReset),
                Ok(VcpuExit::InternalError) => return Some(self.decode_internal_error()),
                Ok(VcpuExit::FailEntry(reason, _)) => return Some(VmExit::FailEntry { reason }),
                Ok(other) => {
                    return Some(VmExit::HostError {
                        message: format!("unexpected vCPU exit {other:?}"),
                    })
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    return Some(VmExit::HostError {
                        message: format!("KVM_RUN failed: {e}"),
                    })
                }
            }
        }
    }

    /// KVM's internal-error exit carries no text; for emulation failures the
    /// instruction bytes are in `kvm_run.internal.data` and RIP in the regs.
    fn decode_internal_error(&mut self) -> VmExit {
        const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
        const FLAG_INSTRUCTION_BYTES: u64 = 1;
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM_EXIT_INTERNAL_ERROR is the exit reason (the caller
        // matched it), and for that reason KVM fills the `internal` member of
        // the union; every bit pattern is a valid value of its integer fields.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return VmExit::InternalError {
                suberror: internal.suberror,
            };
        }
        let mut insn = String::new();
        if internal.ndata >= 2 && internal.data[0] & FLAG_INSTRUCTION_BYTES != 0 {
            let len = (internal.data[1] as usize).min(15);
            let bytes: Vec<u8> = internal.data[2..4]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            insn = hex::encode(&bytes[..len]);
        }
        VmExit::EmulationFailure { rip, insn }
    }

    /// Completes the exit the vCPU last returned with (KVM applies an MMIO
    /// or port read's data only on the next KVM_RUN) without running guest
    /// code, so a snapshot taken now loses no half-done I/O.
    pub(crate) fn finish_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        // Expected to fail with EINTR at once: that is the point.
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_gdt_encodes_flat_code_and_data_segments() {
        assert_eq!(gdt_descriptor(BOOT_GDT[1]), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_descriptor(BOOT_GDT[2]), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_descriptor(BOOT_GDT[3]), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn code_segment_is_present_32bit_and_page_granular() {
        let cs = segment_from_gdt(1);
        assert_eq!(
            (cs.present, cs.db, cs.g, cs.l, cs.type_, cs.selector),
            (1, 1, 1, 0, 0xb, 8)
        );
        assert_eq!(segment_from_gdt(0).unusable, 1);
    }
}
