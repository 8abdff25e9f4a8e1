//! The guest-physical memory map and device layout. Fixed, so that one
//! snapshot of a VM shape serves every step that uses that shape.

/// Boot GDT (null, code32, data, TSS) for the PVH 32-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT; the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// `hvm_start_info`, whose address the PVH entry receives in %ebx.
pub const PVH_INFO_START: u64 = 0x6000;
/// `hvm_modlist_entry` array (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// `hvm_memmap_table_entry` array.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we write.
pub const CMDLINE_MAX_LEN: usize = 4096;
/// Start of the extended BIOS data area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels are loaded from 1 MiB up.
pub const HIMEM_START: u64 = 0x10_0000;

/// First virtio-mmio window; each device gets one 4 KiB window after it.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Legacy IRQ of the first virtio device; the following devices get the next
/// ones. All stay below 16 so the 8259 PIC can deliver them (the guest has no
/// ACPI or MP table, so it runs on the PIC in virtual-wire mode).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Most virtio devices one VM may have (IRQs 5..=11, skipping none).
pub const MAX_VIRTIO_DEVICES: usize = 7;

/// COM1: the guest kernel's console.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of COM1 registers.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 command port: writing 0xfe there resets the machine (`reboot=k`).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042 "pulse reset line" command.
pub const I8042_RESET_COMMAND: u8 = 0xfe;

/// Guest-physical address of virtio device `index`'s window.
pub fn virtio_mmio_base(index: usize) -> u64 {
    MMIO_BASE + MMIO_WINDOW * index as u64
}

/// IRQ of virtio device `index`.
pub fn virtio_irq(index: usize) -> u32 {
    VIRTIO_IRQ_BASE + index as u32
}

/// Devices every VM has besides its disks: the network device and the
/// control console.
pub const FIXED_VIRTIO_DEVICES: usize = 2;
