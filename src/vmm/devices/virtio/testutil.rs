//! Test-only guest driver side of a split virtqueue: lays out rings in guest
//! memory, publishes descriptor chains and reads back the used ring, so the
//! devices can be tested through real rings without a VM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{Queue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Size of the test guest memory.
pub const MEM_SIZE: usize = 0x10_0000;

/// 1 MiB of guest memory at address 0.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A buffer of a chain: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

/// The driver's view of one queue.
pub struct TestRing {
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
    pub fn new(base: u64, size: u16) -> Self {
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
    pub fn queue(&self, max_size: u16) -> Queue {
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
    pub fn write_desc(
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
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available index directly (for hostile tests).
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Writes a well-linked chain of `bufs` into free descriptors and
    /// publishes it; returns the head index.
    pub fn push_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
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
    pub fn skip_to(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        self.used_seen = idx;
        self.set_avail_idx(mem, idx);
        mem.write_obj(idx, GuestAddress(self.used + 2)).unwrap();
    }

    /// Used ring index as written by the device.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used elements (id, len) added since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
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
