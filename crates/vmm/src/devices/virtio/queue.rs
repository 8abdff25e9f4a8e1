//! The split virtqueue (virtio 1.x, section 2.7), device side.
//!
//! Everything in the rings and descriptor table is written by the guest and
//! is therefore hostile: every index is checked against the queue size,
//! every address and length against guest memory, and chains are bounded by
//! the queue size so a loop cannot spin the VMM. A bad chain is a typed
//! error for that one request. Indirect descriptors and event-index
//! suppression are not offered, so neither is handled here.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

use crate::persist::Persist;

/// Descriptor flag: the chain continues at `next`.
pub(crate) const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub(crate) const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect table (not negotiated).
pub(crate) const VIRTQ_DESC_F_INDIRECT: u16 = 4;

const DESCRIPTOR_SIZE: u64 = 16;
const USED_ELEM_SIZE: u64 = 8;
/// flags + idx before the ring entries (both rings).
const RING_HEADER: u64 = 4;

/// Which of the three areas of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The driver area (available ring).
    Avail,
    /// The device area (used ring).
    Used,
}

/// What went wrong with a queue or one of its descriptor chains.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    /// The queue was used before the driver set it ready.
    #[error("queue is not ready")]
    NotReady,
    /// Queue size is zero, not a power of two, or above the maximum.
    #[error("invalid queue size {size} (maximum {max})")]
    InvalidSize {
        /// Size written by the driver.
        size: u16,
        /// Device maximum.
        max: u16,
    },
    /// A ring address is not aligned as the spec requires.
    #[error("{ring:?} ring at {addr:#x} is misaligned")]
    RingMisaligned {
        /// Which ring.
        ring: Ring,
        /// Its guest address.
        addr: u64,
    },
    /// A ring does not lie entirely in guest memory.
    #[error("{ring:?} ring at {addr:#x} is outside guest memory")]
    RingOutOfMemory {
        /// Which ring.
        ring: Ring,
        /// Its guest address.
        addr: u64,
    },
    /// The available index moved further than the queue has entries.
    #[error("available index jumped from {next_avail} to {avail_idx} (queue size {size})")]
    AvailIndexJump {
        /// Index the driver published.
        avail_idx: u16,
        /// Index the device expected next.
        next_avail: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor index (head or `next`) is not below the queue size.
    #[error("descriptor index {index} out of range (queue size {size})")]
    DescriptorIndexOutOfRange {
        /// The index.
        index: u16,
        /// Queue size.
        size: u16,
    },
    /// The chain has more descriptors than the queue: it loops.
    #[error("descriptor chain longer than the queue size {size}")]
    ChainTooLong {
        /// Queue size.
        size: u16,
    },
    /// Indirect descriptors were not negotiated.
    #[error("descriptor {index} is indirect, which was not negotiated")]
    IndirectDescriptor {
        /// Descriptor index.
        index: u16,
    },
    /// A descriptor has length zero.
    #[error("descriptor {index} has zero length")]
    ZeroLengthDescriptor {
        /// Descriptor index.
        index: u16,
    },
    /// A descriptor's buffer is not entirely in guest memory.
    #[error("descriptor {index} buffer {addr:#x}+{len:#x} is outside guest memory")]
    DescriptorOutOfMemory {
        /// Descriptor index.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor {index} is device-readable after a device-writable one")]
    ReadableAfterWritable {
        /// Descriptor index.
        index: u16,
    },
    /// The lengths in the chain add up to more than 4 GiB.
    #[error("descriptor chain total length overflows")]
    LengthOverflow,
    /// A request accessed beyond the readable or writable part of a chain.
    #[error("access of {len} bytes at offset {offset} exceeds the {available}-byte {part} part of the chain")]
    OutsideChain {
        /// "readable" or "writable".
        part: &'static str,
        /// Offset into that part.
        offset: u64,
        /// Bytes accessed.
        len: usize,
        /// Size of that part.
        available: u32,
    },
    /// Guest memory access failed although the range was checked.
    #[error("guest memory access failed")]
    Memory(#[source] GuestMemoryError),
    /// The queue has no queue with this index.
    #[error("no queue {0}")]
    NoSuchQueue(usize),
}

/// One checked descriptor of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// Guest address of the buffer (the whole buffer is in guest memory).
    pub addr: GuestAddress,
    /// Length of the buffer, never zero.
    pub len: u32,
    /// Whether the device writes (true) or reads (false) the buffer.
    pub writable: bool,
}

/// A validated descriptor chain: readable descriptors first, then writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
    readable_len: u32,
    writable_len: u32,
}

impl DescriptorChain {
    /// Index of the head descriptor, the id returned in the used ring.
    pub(crate) fn head(&self) -> u16 {
        self.head
    }

    /// The descriptors, in chain order.
    #[cfg(test)]
    pub(crate) fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// Total bytes the device may read.
    pub(crate) fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total bytes the device may write.
    pub(crate) fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// Reads `buf.len()` bytes at `offset` of the readable part, which is
    /// seen as one contiguous byte string across its descriptors.
    pub(crate) fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), QueueError> {
        self.check_part("readable", self.readable_len, offset, buf.len())?;
        for (addr, start, len) in self.segments(false, offset, buf.len()) {
            mem.read_slice(&mut buf[start..start + len], addr)
                .map_err(QueueError::Memory)?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` of the writable part, seen as one contiguous
    /// byte string across its descriptors.
    pub(crate) fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), QueueError> {
        self.check_part("writable", self.writable_len, offset, buf.len())?;
        for (addr, start, len) in self.segments(true, offset, buf.len()) {
            mem.write_slice(&buf[start..start + len], addr)
                .map_err(QueueError::Memory)?;
        }
        Ok(())
    }

    fn check_part(
        &self,
        part: &'static str,
        available: u32,
        offset: u64,
        len: usize,
    ) -> Result<(), QueueError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > u64::from(available)) {
            return Err(QueueError::OutsideChain {
                part,
                offset,
                len,
                available,
            });
        }
        Ok(())
    }

    /// Splits `[offset, offset + len)` of one part into per-descriptor
    /// pieces: (guest address, offset into the caller's buffer, length).
    /// The caller has checked the range against the part's length.
    fn segments(
        &self,
        writable: bool,
        offset: u64,
        len: usize,
    ) -> impl Iterator<Item = (GuestAddress, usize, usize)> + '_ {
        let mut skip = offset;
        let mut start = 0usize;
        self.descriptors
            .iter()
            .filter(move |d| d.writable == writable)
            .filter_map(move |d| {
                let dlen = u64::from(d.len);
                if skip >= dlen {
                    skip -= dlen;
                    return None;
                }
                let take = (dlen - skip).min((len - start) as u64) as usize;
                if take == 0 {
                    return None;
                }
                // In range: skip < d.len and the descriptor was checked to
                // lie in guest memory.
                let addr = GuestAddress(d.addr.0 + skip);
                skip = 0;
                let piece = (addr, start, take);
                start += take;
                Some(piece)
            })
    }
}

/// Serializable state of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueState {
    /// Queue size chosen by the driver.
    pub size: u16,
    /// Whether the driver set QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available ring entry the device will take.
    pub next_avail: u16,
    /// Next used ring entry the device will fill.
    pub next_used: u16,
}

/// What a queue is restored into: its device's maximum size, and the
/// guest memory its saved addresses are checked against.
pub(crate) struct QueueArgs<'a> {
    /// The device's maximum size for this queue.
    pub max_size: u16,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
}

impl Persist for Queue {
    type State = QueueState;
    type RestoreArgs<'a> = QueueArgs<'a>;
    type Error = QueueError;

    /// Never fails.
    fn save(&self) -> Result<QueueState, QueueError> {
        Ok(QueueState {
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table.0,
            avail_ring: self.avail_ring.0,
            used_ring: self.used_ring.0,
            next_avail: self.next_avail.0,
            next_used: self.next_used.0,
        })
    }

    /// The state is checked like driver-written values (see
    /// [`Queue::validate`]) when the queue was ready.
    fn restore(args: QueueArgs<'_>, state: &QueueState) -> Result<Self, QueueError> {
        let queue = Self {
            max_size: args.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: GuestAddress(state.desc_table),
            avail_ring: GuestAddress(state.avail_ring),
            used_ring: GuestAddress(state.used_ring),
            next_avail: Wrapping(state.next_avail),
            next_used: Wrapping(state.next_used),
        };
        if queue.ready {
            queue.validate(args.mem)?;
        }
        Ok(queue)
    }
}

/// One split virtqueue, device side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
}

impl Queue {
    /// A queue in reset state with room for `max_size` entries.
    pub(crate) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
        }
    }

    /// Maximum size offered to the driver.
    pub(crate) fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Size chosen by the driver (not validated until [`Self::validate`]).
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Whether the driver set the queue ready.
    pub(crate) fn ready(&self) -> bool {
        self.ready
    }

    /// QueueNum register.
    pub(crate) fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// QueueReady register.
    pub(crate) fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Address of a ring.
    pub(crate) fn ring_addr(&self, ring: Ring) -> GuestAddress {
        match ring {
            Ring::Descriptors => self.desc_table,
            Ring::Avail => self.avail_ring,
            Ring::Used => self.used_ring,
        }
    }

    /// Sets the low (`high == false`) or high half of a ring address, as
    /// the mmio Queue{Desc,Driver,Device}{Low,High} registers do.
    pub(crate) fn set_ring_addr_half(&mut self, ring: Ring, high: bool, value: u32) {
        let addr = match ring {
            Ring::Descriptors => &mut self.desc_table,
            Ring::Avail => &mut self.avail_ring,
            Ring::Used => &mut self.used_ring,
        };
        addr.0 = if high {
            (addr.0 & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (addr.0 & !0xffff_ffff) | u64::from(value)
        };
    }

    /// Back to the state after device reset.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    fn ring_len(&self, ring: Ring) -> u64 {
        let size = u64::from(self.size);
        match ring {
            Ring::Descriptors => DESCRIPTOR_SIZE * size,
            // flags, idx, ring[size], used_event: the driver always lays
            // out the trailing event field, so it must fit too.
            Ring::Avail => RING_HEADER + 2 * size + 2,
            Ring::Used => RING_HEADER + USED_ELEM_SIZE * size + 2,
        }
    }

    /// Checks size, alignment and placement in memory of all three rings.
    pub(crate) fn validate(&self, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::InvalidSize {
                size: self.size,
                max: self.max_size,
            });
        }
        for (ring, align) in [(Ring::Descriptors, 16), (Ring::Avail, 2), (Ring::Used, 4)] {
            let addr = self.ring_addr(ring);
            if addr.0 % align != 0 {
                return Err(QueueError::RingMisaligned { ring, addr: addr.0 });
            }
            let len = self.ring_len(ring);
            let fits = addr.0.checked_add(len).is_some()
                && GuestMemoryBackend::check_range(mem, addr, len as usize);
            if !fits {
                return Err(QueueError::RingOutOfMemory { ring, addr: addr.0 });
            }
        }
        Ok(())
    }

    /// Guest address of byte `offset` in `ring`, refusing overflow.
    fn ring_offset(&self, ring: Ring, offset: u64) -> Result<GuestAddress, QueueError> {
        let base = self.ring_addr(ring);
        base.0
            .checked_add(offset)
            .map(GuestAddress)
            .ok_or(QueueError::RingOutOfMemory { ring, addr: base.0 })
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<Wrapping<u16>, QueueError> {
        let addr = self.ring_offset(Ring::Avail, 2)?;
        // Acquire: the ring entries the index covers must be read after it.
        let idx: u16 = mem
            .load(addr, Ordering::Acquire)
            .map_err(QueueError::Memory)?;
        Ok(Wrapping(u16::from_le(idx)))
    }

    /// Takes the next available head index, or `None` if the ring is empty.
    /// The head is not checked here; [`Self::read_chain`] checks it.
    pub(crate) fn pop_head(&mut self, mem: &GuestMemoryMmap) -> Result<Option<u16>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let avail_idx = self.avail_idx(mem)?;
        let pending = (avail_idx - self.next_avail).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIndexJump {
                avail_idx: avail_idx.0,
                next_avail: self.next_avail.0,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_avail.0 % self.size);
        let addr = self.ring_offset(Ring::Avail, RING_HEADER + 2 * slot)?;
        let head: u16 = mem.read_obj(addr).map_err(QueueError::Memory)?;
        self.next_avail += 1;
        Ok(Some(u16::from_le(head)))
    }

    /// Whether the driver has made buffers available that were not taken.
    pub(crate) fn has_available(&self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        if !self.ready {
            return Ok(false);
        }
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    fn read_descriptor(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
    ) -> Result<(u64, u32, u16, u16), QueueError> {
        let addr = self.ring_offset(Ring::Descriptors, DESCRIPTOR_SIZE * u64::from(index))?;
        let mut raw = [0u8; DESCRIPTOR_SIZE as usize];
        mem.read_slice(&mut raw, addr).map_err(QueueError::Memory)?;
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
        Ok((
            u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u32::from_le_bytes([l0, l1, l2, l3]),
            u16::from_le_bytes([f0, f1]),
            u16::from_le_bytes([n0, n1]),
        ))
    }

    /// Walks and checks the chain starting at `head`.
    pub(crate) fn read_chain(
        &self,
        mem: &GuestMemoryMmap,
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        let size = self.size;
        let mut chain = DescriptorChain {
            head,
            descriptors: Vec::new(),
            readable_len: 0,
            writable_len: 0,
        };
        let mut index = head;
        loop {
            if index >= size {
                return Err(QueueError::DescriptorIndexOutOfRange { index, size });
            }
            if chain.descriptors.len() >= usize::from(size) {
                return Err(QueueError::ChainTooLong { size });
            }
            let (addr, len, flags, next) = self.read_descriptor(mem, index)?;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(QueueError::IndirectDescriptor { index });
            }
            if len == 0 {
                return Err(QueueError::ZeroLengthDescriptor { index });
            }
            let in_memory = addr.checked_add(u64::from(len)).is_some()
                && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
            if !in_memory {
                return Err(QueueError::DescriptorOutOfMemory { index, addr, len });
            }
            let writable = flags & VIRTQ_DESC_F_WRITE != 0;
            if writable {
                chain.writable_len = chain
                    .writable_len
                    .checked_add(len)
                    .ok_or(QueueError::LengthOverflow)?;
            } else {
                if chain.writable_len > 0 {
                    return Err(QueueError::ReadableAfterWritable { index });
                }
                chain.readable_len = chain
                    .readable_len
                    .checked_add(len)
                    .ok_or(QueueError::LengthOverflow)?;
            }
            chain
                .readable_len
                .checked_add(chain.writable_len)
                .ok_or(QueueError::LengthOverflow)?;
            chain.descriptors.push(Descriptor {
                addr: GuestAddress(addr),
                len,
                writable,
            });
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = next;
        }
    }

    /// Returns a chain to the driver with `len` bytes written into it.
    pub(crate) fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let slot = u64::from(self.next_used.0 % self.size.max(1));
        let elem_addr = self.ring_offset(Ring::Used, RING_HEADER + USED_ELEM_SIZE * slot)?;
        let mut elem = [0u8; USED_ELEM_SIZE as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, elem_addr)
            .map_err(QueueError::Memory)?;
        self.next_used += 1;
        let idx_addr = self.ring_offset(Ring::Used, 2)?;
        // Release: the element must be visible before the index covering it.
        mem.store(self.next_used.0.to_le(), idx_addr, Ordering::Release)
            .map_err(QueueError::Memory)
    }
}

/// What the transport lends a device while it works: guest memory and the
/// queues. Records whether a used ring changed so the transport knows to
/// interrupt the guest afterwards.
pub(crate) struct QueueContext<'a> {
    mem: &'a GuestMemoryMmap,
    queues: &'a mut [Queue],
    used_updated: bool,
    rejected_chains: u64,
    broken: Option<QueueError>,
}

impl<'a> QueueContext<'a> {
    /// Lends `mem` and `queues`.
    pub(crate) fn new(mem: &'a GuestMemoryMmap, queues: &'a mut [Queue]) -> Self {
        Self {
            mem,
            queues,
            used_updated: false,
            rejected_chains: 0,
            broken: None,
        }
    }

    /// Guest memory.
    pub(crate) fn mem(&self) -> &'a GuestMemoryMmap {
        self.mem
    }

    /// Queue `index`.
    pub(crate) fn queue(&mut self, index: usize) -> Result<&mut Queue, QueueError> {
        self.queues
            .get_mut(index)
            .ok_or(QueueError::NoSuchQueue(index))
    }

    /// The next well-formed chain of queue `index`. Malformed chains on the
    /// way are given back to the driver unused (length 0) and counted; an
    /// error means the queue itself is broken. After a queue's worth of
    /// malformed chains in one call it gives up (`None`) until the next
    /// call, so a guest cannot keep the caller busy.
    pub(crate) fn pop_chain(
        &mut self,
        index: usize,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let mem = self.mem;
        let attempts = usize::from(self.queue(index)?.size()) + 1;
        for _ in 0..attempts {
            let queue = self.queue(index)?;
            let Some(head) = queue.pop_head(mem)? else {
                return Ok(None);
            };
            let size = queue.size();
            match queue.read_chain(mem, head) {
                Ok(chain) => return Ok(Some(chain)),
                Err(err) => {
                    tracing::warn!(queue = index, head, error = %err, "rejecting descriptor chain");
                    self.rejected_chains += 1;
                    // A head outside the table cannot be returned: the
                    // driver would see an id it never used.
                    if head < size {
                        self.add_used(index, head, 0)?;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Whether queue `index` has chains waiting.
    pub(crate) fn has_available(&mut self, index: usize) -> Result<bool, QueueError> {
        let mem = self.mem;
        self.queue(index)?.has_available(mem)
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub(crate) fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<(), QueueError> {
        let mem = self.mem;
        self.queue(index)?.add_used(mem, head, len)?;
        self.used_updated = true;
        Ok(())
    }

    /// Whether any used ring changed since this context was made.
    pub(crate) fn used_updated(&self) -> bool {
        self.used_updated
    }

    /// Records that a queue is broken beyond one request, for work that
    /// has no error path of its own (host-side input); the transport then
    /// marks the device as needing a reset.
    pub(crate) fn report_broken(&mut self, err: QueueError) {
        self.broken.get_or_insert(err);
    }

    /// The first error given to [`Self::report_broken`].
    pub(crate) fn take_broken(&mut self) -> Option<QueueError> {
        self.broken.take()
    }

    /// How many malformed chains were rejected.
    pub(crate) fn rejected_chains(&self) -> u64 {
        self.rejected_chains
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
