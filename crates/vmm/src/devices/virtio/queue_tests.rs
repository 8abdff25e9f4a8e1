//! Tests of the virtqueue walker, mostly with hostile rings and chains.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::testutil::{memory, TestRing, MEM_SIZE};
use crate::persist::Persist;

const SIZE: u16 = 8;
const DATA: u64 = 0x8000;

fn setup() -> (GuestMemoryMmap, TestRing, Queue) {
    let mem = memory();
    let ring = TestRing::new(0x1000, SIZE);
    let queue = ring.queue(SIZE);
    queue.validate(&mem).unwrap();
    (mem, ring, queue)
}

fn pop_chain(mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<DescriptorChain, QueueError> {
    let head = queue.pop_head(mem)?.expect("a chain was published");
    queue.read_chain(mem, head)
}

#[test]
fn queue_walks_readable_then_writable_chain() {
    let (mem, mut ring, mut queue) = setup();
    let head = ring.push_chain(
        &mem,
        &[
            (DATA, 16, false),
            (DATA + 0x100, 512, true),
            (DATA + 0x400, 1, true),
        ],
    );
    let chain = pop_chain(&mem, &mut queue).unwrap();
    assert_eq!(chain.head(), head);
    assert_eq!(chain.readable_len(), 16);
    assert_eq!(chain.writable_len(), 513);
    assert_eq!(chain.descriptors().len(), 3);
    assert_eq!(queue.pop_head(&mem).unwrap(), None);
}

#[test]
fn queue_reads_and_writes_across_descriptor_boundaries() {
    let (mem, mut ring, mut queue) = setup();
    mem.write_slice(b"abc", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"defg", GuestAddress(DATA + 0x100))
        .unwrap();
    ring.push_chain(
        &mem,
        &[
            (DATA, 3, false),
            (DATA + 0x100, 4, false),
            (DATA + 0x200, 2, true),
            (DATA + 0x300, 3, true),
        ],
    );
    let chain = pop_chain(&mem, &mut queue).unwrap();
    let mut buf = [0u8; 5];
    chain.read_at(&mem, 1, &mut buf).unwrap();
    assert_eq!(&buf, b"bcdef");
    chain.write_at(&mem, 1, b"XYZ").unwrap();
    let mut out = [0u8; 2];
    mem.read_slice(&mut out, GuestAddress(DATA + 0x200))
        .unwrap();
    assert_eq!(out[1], b'X');
    mem.read_slice(&mut out, GuestAddress(DATA + 0x300))
        .unwrap();
    assert_eq!(&out, b"YZ");
}

#[test]
fn queue_rejects_access_beyond_chain_part() {
    let (mem, mut ring, mut queue) = setup();
    ring.push_chain(&mem, &[(DATA, 4, false), (DATA + 0x100, 4, true)]);
    let chain = pop_chain(&mem, &mut queue).unwrap();
    let mut buf = [0u8; 5];
    assert!(matches!(
        chain.read_at(&mem, 0, &mut buf),
        Err(QueueError::OutsideChain {
            part: "readable",
            ..
        })
    ));
    assert!(matches!(
        chain.write_at(&mem, u64::MAX, b"x"),
        Err(QueueError::OutsideChain {
            part: "writable",
            ..
        })
    ));
}

#[test]
fn queue_rejects_descriptor_loop() {
    let (mem, mut ring, mut queue) = setup();
    ring.write_desc(&mem, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
    ring.write_desc(&mem, 1, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
    ring.publish(&mem, 0);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::ChainTooLong { size: SIZE })
    ));
}

#[test]
fn queue_rejects_self_loop() {
    let (mem, mut ring, mut queue) = setup();
    ring.write_desc(&mem, 3, DATA, 8, VIRTQ_DESC_F_NEXT, 3);
    ring.publish(&mem, 3);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::ChainTooLong { .. })
    ));
}

#[test]
fn queue_accepts_chain_of_exactly_queue_size() {
    let (mem, mut ring, mut queue) = setup();
    let bufs: Vec<_> = (0..u64::from(SIZE))
        .map(|i| (DATA + i * 0x10, 0x10, false))
        .collect();
    ring.push_chain(&mem, &bufs);
    let chain = pop_chain(&mem, &mut queue).unwrap();
    assert_eq!(chain.readable_len(), 0x10 * u32::from(SIZE));
}

#[test]
fn queue_rejects_next_index_out_of_range() {
    let (mem, mut ring, mut queue) = setup();
    ring.write_desc(&mem, 0, DATA, 8, VIRTQ_DESC_F_NEXT, SIZE);
    ring.publish(&mem, 0);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::DescriptorIndexOutOfRange {
            index: SIZE,
            size: SIZE
        })
    ));
}

#[test]
fn queue_rejects_head_index_out_of_range() {
    let (mem, mut ring, mut queue) = setup();
    ring.publish(&mem, 0xffff);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::DescriptorIndexOutOfRange { index: 0xffff, .. })
    ));
}

#[test]
fn queue_rejects_buffer_outside_memory() {
    let (mem, mut ring, mut queue) = setup();
    ring.push_chain(&mem, &[(MEM_SIZE as u64 - 4, 8, false)]);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::DescriptorOutOfMemory { len: 8, .. })
    ));
    ring.push_chain(&mem, &[(u64::MAX - 2, 8, true)]);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::DescriptorOutOfMemory { .. })
    ));
}

#[test]
fn queue_rejects_zero_length_descriptor() {
    let (mem, mut ring, mut queue) = setup();
    ring.push_chain(&mem, &[(DATA, 16, false), (DATA + 0x100, 0, true)]);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::ZeroLengthDescriptor { index: 1 })
    ));
}

#[test]
fn queue_rejects_readable_after_writable() {
    let (mem, mut ring, mut queue) = setup();
    ring.push_chain(&mem, &[(DATA, 16, true), (DATA + 0x100, 16, false)]);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::ReadableAfterWritable { index: 1 })
    ));
}

#[test]
fn queue_rejects_indirect_descriptor() {
    let (mem, mut ring, mut queue) = setup();
    ring.write_desc(&mem, 0, DATA, 16, VIRTQ_DESC_F_INDIRECT, 0);
    ring.publish(&mem, 0);
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::IndirectDescriptor { index: 0 })
    ));
}

#[test]
fn queue_rejects_total_length_overflow() {
    // Two memory regions far apart would be needed for real buffers this
    // large; instead make every descriptor cover the same big region.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(1 << 32), 0xC000_0000),
    ])
    .unwrap();
    let mut ring = TestRing::new(0x1000, SIZE);
    let mut queue = ring.queue(SIZE);
    ring.push_chain(
        &mem,
        &[(1 << 32, 0xC000_0000, true), (1 << 32, 0xC000_0000, true)],
    );
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::LengthOverflow)
    ));
    ring.push_chain(
        &mem,
        &[(1 << 32, 0xC000_0000, false), (1 << 32, 0xC000_0000, true)],
    );
    assert!(matches!(
        pop_chain(&mem, &mut queue),
        Err(QueueError::LengthOverflow)
    ));
}

#[test]
fn queue_rejects_avail_index_jump_beyond_size() {
    let (mem, ring, mut queue) = setup();
    ring.set_avail_idx(&mem, SIZE + 1);
    assert!(matches!(
        queue.pop_head(&mem),
        Err(QueueError::AvailIndexJump {
            avail_idx: 9,
            next_avail: 0,
            size: SIZE
        })
    ));
    // A jump of exactly the queue size is a full ring, not an error.
    ring.set_avail_idx(&mem, SIZE);
    assert!(queue.pop_head(&mem).unwrap().is_some());
}

#[test]
fn queue_handles_index_wraparound() {
    let (mem, mut ring, _) = setup();
    let mut queue = Queue::restore(
        QueueArgs {
            max_size: SIZE,
            mem: &mem,
        },
        &QueueState {
            next_avail: u16::MAX,
            next_used: u16::MAX,
            ..ring.queue(SIZE).save().unwrap()
        },
    )
    .unwrap();
    ring.skip_to(&mem, u16::MAX);
    for _ in 0..2 {
        let head = ring.push_chain(&mem, &[(DATA, 1, true)]);
        let chain = pop_chain(&mem, &mut queue).unwrap();
        assert_eq!(chain.head(), head);
        queue.add_used(&mem, head, 1).unwrap();
    }
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(ring.take_used(&mem).len(), 2);
}

#[test]
fn queue_add_used_publishes_element_and_index() {
    let (mem, mut ring, mut queue) = setup();
    let head = ring.push_chain(&mem, &[(DATA, 4, true)]);
    let chain = pop_chain(&mem, &mut queue).unwrap();
    queue.add_used(&mem, chain.head(), 3).unwrap();
    assert_eq!(ring.take_used(&mem), vec![(u32::from(head), 3)]);
}

#[test]
fn queue_validate_rejects_bad_sizes() {
    let mem = memory();
    let ring = TestRing::new(0x1000, SIZE);
    for size in [0, 3, SIZE * 2] {
        let mut queue = ring.queue(SIZE);
        queue.set_size(size);
        assert!(
            matches!(queue.validate(&mem), Err(QueueError::InvalidSize { .. })),
            "size {size}"
        );
    }
}

#[test]
fn queue_validate_rejects_unaligned_rings() {
    let mem = memory();
    let ring = TestRing::new(0x1000, SIZE);
    for (r, addr) in [
        (Ring::Descriptors, 0x1008),
        (Ring::Avail, 0x3001),
        (Ring::Used, 0x4002),
    ] {
        let mut queue = ring.queue(SIZE);
        queue.set_ring_addr_half(r, false, addr);
        assert!(
            matches!(queue.validate(&mem), Err(QueueError::RingMisaligned { ring, .. }) if ring == r),
            "{r:?}"
        );
    }
}

#[test]
fn queue_validate_rejects_rings_outside_memory() {
    let mem = memory();
    let ring = TestRing::new(0x1000, SIZE);
    for r in [Ring::Descriptors, Ring::Avail, Ring::Used] {
        let mut queue = ring.queue(SIZE);
        // Starts in memory, ends past it.
        queue.set_ring_addr_half(r, false, MEM_SIZE as u32 - 16);
        assert!(
            matches!(queue.validate(&mem), Err(QueueError::RingOutOfMemory { ring, .. }) if ring == r),
            "{r:?}"
        );
        queue.set_ring_addr_half(r, true, 0xffff_ffff);
        queue.set_ring_addr_half(r, false, 0xffff_fff0);
        assert!(matches!(
            queue.validate(&mem),
            Err(QueueError::RingOutOfMemory { .. })
        ));
    }
}

#[test]
fn queue_with_rings_outside_memory_errors_instead_of_panicking() {
    let mem = memory();
    let ring = TestRing::new(0x1000, SIZE);
    let mut queue = ring.queue(SIZE);
    queue.set_ring_addr_half(Ring::Avail, true, 0xffff_ffff);
    queue.set_ring_addr_half(Ring::Avail, false, 0xffff_fffe);
    assert!(matches!(
        queue.pop_head(&mem),
        Err(QueueError::RingOutOfMemory {
            ring: Ring::Avail,
            ..
        })
    ));
    queue.set_ring_addr_half(Ring::Avail, true, 0x10);
    queue.set_ring_addr_half(Ring::Avail, false, 0);
    assert!(matches!(queue.pop_head(&mem), Err(QueueError::Memory(_))));
    assert!(matches!(
        queue.has_available(&mem),
        Err(QueueError::Memory(_))
    ));
    queue.set_ring_addr_half(Ring::Used, true, 0x10);
    assert!(matches!(
        queue.add_used(&mem, 0, 0),
        Err(QueueError::Memory(_))
    ));
}

#[test]
fn queue_not_ready_refuses_work() {
    let (mem, _, mut queue) = setup();
    queue.set_ready(false);
    assert!(matches!(queue.pop_head(&mem), Err(QueueError::NotReady)));
    assert!(!queue.has_available(&mem).unwrap());
}

#[test]
fn queue_state_round_trips() {
    let (mem, mut ring, mut queue) = setup();
    ring.push_chain(&mem, &[(DATA, 4, true)]);
    pop_chain(&mem, &mut queue).unwrap();
    let state = queue.save().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let back: QueueState = serde_json::from_str(&json).unwrap();
    let args = || QueueArgs {
        max_size: SIZE,
        mem: &mem,
    };
    assert_eq!(Queue::restore(args(), &back).unwrap(), queue);
    let bad = QueueState {
        size: SIZE * 2,
        ..state
    };
    assert!(Queue::restore(args(), &bad).is_err());
}

#[test]
fn context_returns_malformed_chains_and_continues() {
    let (mem, mut ring, queue) = setup();
    let mut queues = vec![queue];
    ring.write_desc(&mem, 0, DATA, 0, 0, 0);
    ring.publish(&mem, 0);
    ring.publish(&mem, 0x4000);
    ring.write_desc(&mem, 1, DATA, 4, VIRTQ_DESC_F_WRITE, 0);
    ring.publish(&mem, 1);
    let mut ctx = QueueContext::new(&mem, &mut queues);
    let chain = ctx.pop_chain(0).unwrap().unwrap();
    assert_eq!(chain.head(), 1);
    assert_eq!(ctx.rejected_chains(), 2);
    assert!(ctx.used_updated());
    // Only the in-range bad head came back, with length 0.
    assert_eq!(ring.take_used(&mem), vec![(0, 0)]);
    assert!(matches!(ctx.pop_chain(5), Err(QueueError::NoSuchQueue(5))));
}

#[test]
fn queue_unvalidated_unaligned_avail_ring_errors_instead_of_panicking() {
    let (mem, _, mut queue) = setup();
    queue.set_ring_addr_half(Ring::Avail, false, 0x3001);
    assert!(queue.pop_head(&mem).is_err());
    queue.set_ring_addr_half(Ring::Used, false, 0x4001);
    assert!(queue.add_used(&mem, 0, 0).is_err());
}

#[test]
fn context_rejects_a_full_ring_of_malformed_chains_then_serves_good_ones() {
    let (mem, mut ring, queue) = setup();
    let mut queues = vec![queue];
    ring.write_desc(&mem, 0, DATA, 0, 0, 0);
    ring.write_desc(&mem, 1, DATA, 4, VIRTQ_DESC_F_WRITE, 0);
    let mut ctx = QueueContext::new(&mem, &mut queues);
    for _ in 0..SIZE {
        ring.publish(&mem, 0);
    }
    assert!(ctx.pop_chain(0).unwrap().is_none());
    assert_eq!(ctx.rejected_chains(), u64::from(SIZE));
    assert_eq!(ring.take_used(&mem), vec![(0, 0); usize::from(SIZE)]);
    ring.publish(&mem, 0);
    ring.publish(&mem, 1);
    assert_eq!(ctx.pop_chain(0).unwrap().map(|c| c.head()), Some(1));
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn queue_survives_random_descriptor_tables_and_rings() {
    let mut accepted = 0;
    let mut rejected = 0;
    for seed in 1..300u64 {
        let (mem, ring, mut queue) = setup();
        let mut table = noise(seed, 16 * usize::from(SIZE));
        // Bias some descriptors toward plausible values so that both
        // outcomes occur: small lengths, in-memory addresses, small next.
        for (i, desc) in table.chunks_mut(16).enumerate() {
            if (seed + i as u64) % 3 != 0 {
                desc[..8].copy_from_slice(&(DATA + 0x100 * i as u64).to_le_bytes());
                let len = u32::from(desc[8] | 1);
                let next = u16::from(desc[14] % 10);
                desc[8..12].copy_from_slice(&len.to_le_bytes());
                desc[14..16].copy_from_slice(&next.to_le_bytes());
                desc[12] &= VIRTQ_DESC_F_NEXT as u8 | VIRTQ_DESC_F_WRITE as u8;
                desc[13] = 0;
            }
        }
        mem.write_slice(&table, GuestAddress(ring.desc)).unwrap();
        let mut avail = noise(seed ^ 0xabcd, 4 + 2 * usize::from(SIZE));
        // Mostly a plausible index and heads; sometimes left wild.
        if seed % 4 != 0 {
            avail[2] %= SIZE as u8 + 1;
            avail[3] = 0;
            for head in avail[4..].chunks_mut(2) {
                head[0] %= 10;
                head[1] = 0;
            }
        }
        mem.write_slice(&avail, GuestAddress(ring.avail)).unwrap();
        for _ in 0..usize::from(SIZE) {
            let head = match queue.pop_head(&mem) {
                Ok(Some(head)) => head,
                Ok(None) | Err(_) => break,
            };
            match queue.read_chain(&mem, head) {
                Ok(chain) => {
                    accepted += 1;
                    assert!(chain.descriptors().len() <= usize::from(SIZE));
                    let mut seen_writable = false;
                    for d in chain.descriptors() {
                        assert!(d.len > 0);
                        assert!(d.addr.0 + u64::from(d.len) <= MEM_SIZE as u64);
                        assert!(!seen_writable || d.writable);
                        seen_writable |= d.writable;
                    }
                }
                Err(_) => rejected += 1,
            }
        }
    }
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
}
