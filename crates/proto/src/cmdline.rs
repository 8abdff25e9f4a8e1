//! The guest kernel command line the VMM builds.

use crate::control::{KvmFlavour, VmConfig};
use crate::layout::{virtio_irq, virtio_mmio_base, FIXED_VIRTIO_DEVICES, MMIO_WINDOW};

/// Always on: serial console, immediate reboot on panic (so a panic ends
/// the VM instead of hanging it), keyboard-controller reboot (the VMM
/// watches the i8042 reset), and no probing for hardware we do not have.
///
/// `clocksource=kvm-clock`: kvmclock is the one guest clock the VMM sets on
/// restore (KVM_SET_CLOCK), so the guest's monotonic time continues from
/// the snapshot. With the TSC as clocksource a kvm-pvm guest (whose TSC is
/// the host's and cannot be offset) sees the snapshot's whole age pass at
/// once and its timekeeping then replays it second by second, which grows
/// the first reply by ~0.04 ms per second of snapshot age. Left to itself
/// the kernel prefers the TSC when it is invariant, on hardware KVM too.
const BASE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule i8042.noaux \
                    8250.nr_uarts=1 random.trust_cpu=on clocksource=kvm-clock quiet";

/// Only on kvm-pvm hosts: features the instruction emulator cannot execute
/// in guest kernel mode, the kernel's compatibility switch, and speed-only
/// settings (`rep movsb` and rodata page-splitting are slow when emulated).
const PVM: &str = "pvmcompat noxsave clearcpuid=smap,popcnt,erms,fsrm rodata=off";

/// The command line a cold boot of `config` passes to the kernel. Snapshot
/// keys cover it, so a change here rebuilds every snapshot.
pub fn for_config(config: &VmConfig) -> String {
    build(
        config.flavour,
        config.disks.len() + FIXED_VIRTIO_DEVICES,
        &config.extra_cmdline,
    )
}

/// Builds the command line for a VM with `virtio_devices` virtio-mmio devices.
pub fn build(flavour: KvmFlavour, virtio_devices: usize, extra: &str) -> String {
    let mut parts = vec![BASE.to_string()];
    if flavour == KvmFlavour::Pvm {
        parts.push(PVM.to_string());
    }
    for index in 0..virtio_devices {
        parts.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW / 1024,
            virtio_mmio_base(index),
            virtio_irq(index)
        ));
    }
    if !extra.trim().is_empty() {
        parts.push(extra.trim().to_string());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_parameters_only_on_pvm_hosts() {
        assert!(build(KvmFlavour::Pvm, 0, "").contains("pvmcompat noxsave"));
        let hw = build(KvmFlavour::Hardware, 0, "");
        assert!(!hw.contains("pvmcompat") && !hw.contains("noxsave"));
    }

    #[test]
    fn both_flavours_use_the_restored_kvmclock() {
        for flavour in [KvmFlavour::Pvm, KvmFlavour::Hardware] {
            assert!(build(flavour, 0, "").contains("clocksource=kvm-clock"));
        }
    }

    #[test]
    fn virtio_devices_are_declared_in_order() {
        let line = build(KvmFlavour::Hardware, 2, "sbxrun.x=1");
        let first = line.find("virtio_mmio.device=4K@0xd0000000:5").unwrap();
        let second = line.find("virtio_mmio.device=4K@0xd0001000:6").unwrap();
        assert!(first < second);
        assert!(line.ends_with("sbxrun.x=1"));
    }
}
