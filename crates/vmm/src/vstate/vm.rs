//! The KVM VM: memory slots, in-kernel irqchip and PIT, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Errors building the VM.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("cannot set up the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("cannot register an irqfd for IRQ {1}")]
    Irqfd(#[source] kvm_ioctls::Error, u32),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Where KVM's TSS for real-mode emulation lives: three pages just below
/// 4 GiB, outside guest RAM and the virtio-mmio windows.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM with its memory registered and interrupt controllers created.
pub(crate) struct Vm {
    /// Shared with the vCPUs, which need it to list MSRs when saved.
    kvm: Arc<Kvm>,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM and creates a VM backed by `memory`.
    pub(crate) fn new(memory: &GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::ApiVersion(api));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        for (slot, region) in memory.iter().enumerate() {
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemorySlot(kvm_ioctls::Error::new(libc::EFAULT)))?;
            let slot_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the
            // VMM keeps alive for as long as the VM exists (both live until the
            // process exits), and slots do not overlap because vm-memory
            // rejects overlapping regions.
            unsafe { fd.set_user_memory_region(slot_desc) }.map_err(VmError::MemorySlot)?;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::Irqchip)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm {
            kvm: Arc::new(kvm),
            fd,
        })
    }

    /// The KVM system handle (for CPUID and MSR queries).
    pub(crate) fn kvm(&self) -> &Arc<Kvm> {
        &self.kvm
    }

    /// The VM handle.
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// An eventfd that raises `irq` in the in-kernel irqchip when written.
    pub(crate) fn irq_eventfd(&self, irq: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, irq)
            .map_err(|e| VmError::Irqfd(e, irq))?;
        Ok(evt)
    }
}
