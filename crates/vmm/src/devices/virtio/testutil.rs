//! Test-only guest driver side of a split virtqueue: lays out rings in guest
//! memory, publishes descriptor chains and reads back the used ring, so the
//! devices can be tested through real rings without a VM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, MMIO_MAGIC};
use super::queue::{Queue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::status;
use crate::devices::BusDevice;

/// Size of the test guest memory.
pub(super) const MEM_SIZE: usize = 0x10_0000;

/// 1 MiB of guest memory at address 0.
pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A buffer of a chain: (guest address, length, device-writable).
pub(super) type Buf = (u64, u32, bool);

/// The driver's view of one queue.
pub(super) struct TestRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestRing {
    /// Rings for a queue of `size` laid out from `base`.
    pub(super) fn new(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A device-side queue set up as a driver would.
    pub(super) fn queue(&self, max_size: u16) -> Queue {
        use super::queue::Ring;
        let mut q = Queue::new(max_size);
        q.set_size(self.size);
        for (ring, addr) in [
            (Ring::Descriptors, self.desc),
            (Ring::Avail, self.avail),
            (Ring::Used, self.used),
        ] {
            q.set_ring_addr_half(ring, false, addr as u32);
            q.set_ring_addr_half(ring, true, (addr >> 32) as u32);
        }
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` verbatim.
    pub(super) fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)))
            .unwrap();
    }

    /// Puts `head` in the available ring and bumps the index.
    pub(super) fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available index directly (for hostile tests).
    pub(super) fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Writes a well-linked chain of `bufs` into free descriptors and
    /// publishes it; returns the head index.
    pub(super) fn push_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(mem, index, addr, len, flags, next);
            self.next_desc = next;
        }
        self.publish(mem, head);
        head
    }

    /// Moves both ring indices to `idx`, as if that many chains had been
    /// published and used.
    pub(super) fn skip_to(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        self.used_seen = idx;
        self.set_avail_idx(mem, idx);
        mem.write_obj(idx, GuestAddress(self.used + 2)).unwrap();
    }

    /// Used ring index as written by the device.
    pub(super) fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used elements (id, len) added since the last call.
    pub(super) fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let addr = self.used + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(addr)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Reads a 32-bit mmio register.
pub(super) fn mmio_read(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    dev.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Writes a 32-bit mmio register.
pub(super) fn mmio_write(dev: &mut dyn BusDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

/// Probes a virtio-mmio device the way Linux 6.1 virtio_mmio does, up to
/// and including DRIVER_OK; `accept` picks the driver features from the
/// offered ones. Returns the final status register.
pub(super) fn linux_probe(
    dev: &mut dyn BusDevice,
    accept: impl Fn(u64) -> u64,
    rings: &[&TestRing],
) -> u32 {
    assert_eq!(mmio_read(dev, reg::MAGIC), MMIO_MAGIC);
    assert_eq!(mmio_read(dev, reg::VERSION), 2);
    assert_ne!(mmio_read(dev, reg::DEVICE_ID), 0);
    mmio_write(dev, reg::STATUS, 0);
    assert_eq!(mmio_read(dev, reg::STATUS), 0);
    mmio_write(dev, reg::STATUS, status::ACKNOWLEDGE);
    mmio_write(dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    mmio_write(dev, reg::DEVICE_FEATURES_SEL, 1);
    let mut offered = u64::from(mmio_read(dev, reg::DEVICE_FEATURES)) << 32;
    mmio_write(dev, reg::DEVICE_FEATURES_SEL, 0);
    offered |= u64::from(mmio_read(dev, reg::DEVICE_FEATURES));
    let acked = accept(offered);
    mmio_write(dev, reg::DRIVER_FEATURES_SEL, 1);
    mmio_write(dev, reg::DRIVER_FEATURES, (acked >> 32) as u32);
    mmio_write(dev, reg::DRIVER_FEATURES_SEL, 0);
    mmio_write(dev, reg::DRIVER_FEATURES, acked as u32);
    let st = mmio_read(dev, reg::STATUS) | status::FEATURES_OK;
    mmio_write(dev, reg::STATUS, st);
    if mmio_read(dev, reg::STATUS) & status::FEATURES_OK == 0 {
        return mmio_read(dev, reg::STATUS);
    }
    for (index, ring) in rings.iter().enumerate() {
        mmio_write(dev, reg::QUEUE_SEL, index as u32);
        assert_eq!(mmio_read(dev, reg::QUEUE_READY), 0);
        let max = mmio_read(dev, reg::QUEUE_NUM_MAX);
        assert!(max >= u32::from(ring.size));
        mmio_write(dev, reg::QUEUE_NUM, u32::from(ring.size));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, ring.desc),
            (reg::QUEUE_DRIVER_LOW, ring.avail),
            (reg::QUEUE_DEVICE_LOW, ring.used),
        ] {
            mmio_write(dev, low, addr as u32);
            mmio_write(dev, low + 4, (addr >> 32) as u32);
        }
        mmio_write(dev, reg::QUEUE_READY, 1);
    }
    let st = mmio_read(dev, reg::STATUS) | status::DRIVER_OK;
    mmio_write(dev, reg::STATUS, st);
    mmio_read(dev, reg::STATUS)
}

/// Handles an interrupt as Linux vm_interrupt does: reads and acks the
/// status; returns it (0 if the line was not raised).
pub(super) fn take_interrupt(dev: &mut dyn BusDevice, irq: &EventFd) -> u32 {
    if irq.read().is_err() {
        return 0;
    }
    let st = mmio_read(dev, reg::INTERRUPT_STATUS);
    mmio_write(dev, reg::INTERRUPT_ACK, st);
    st
}

/// A non-blocking eventfd standing in for the irqfd.
pub(super) fn irq() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}
