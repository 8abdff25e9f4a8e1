//! Tests of virtio-blk through the mmio transport and real descriptor
//! chains in guest memory, backed by temporary files.

use std::io::{Read, Seek, SeekFrom, Write};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::mmio::{reg, MmioTransport, MmioTransportArgs, MmioTransportState};
use crate::devices::virtio::status;
use crate::devices::virtio::testutil::{
    irq, linux_probe, memory, mmio_read, mmio_write, take_interrupt, TestRing,
};
use crate::devices::BusDevice;
use crate::persist::Persist;

const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const SECTORS: u64 = 16;
const ID: &[u8] = b"sbx-disk-1";

struct Disk {
    mem: GuestMemoryMmap,
    irq: EventFd,
    t: MmioTransport,
    ring: TestRing,
    file: File,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn disk(read_only: bool) -> Disk {
    disk_of(SECTORS, read_only)
}

fn disk_of(sectors: u64, read_only: bool) -> Disk {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&pattern((sectors * SECTOR_SIZE) as usize, 7))
        .unwrap();
    let block = Block::new(file.try_clone().unwrap(), read_only, ID).unwrap();
    let mem = memory();
    let irq = irq();
    let mut t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(block));
    let ring = TestRing::new(0x1000, 256);
    let st = linux_probe(&mut t, |o| o, &[&ring]);
    assert_ne!(st & status::DRIVER_OK, 0);
    Disk {
        mem,
        irq,
        t,
        ring,
        file,
    }
}

impl Disk {
    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Publishes `bufs`, notifies, and returns (used length, status byte).
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.ring.push_chain(&self.mem, bufs);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 0);
        let used = self.ring.take_used(&self.mem);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, u32::from(head));
        assert_eq!(take_interrupt(&mut self.t, &self.irq), 1);
        (used[0].1, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn file_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.file.seek(SeekFrom::Start(0)).unwrap();
        self.file.read_to_end(&mut out).unwrap();
        out
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}

#[test]
fn block_read_returns_file_contents() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_IN, 3);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
    assert_eq!((len, st), (1025, VIRTIO_BLK_S_OK));
    let file = d.file_bytes();
    assert_eq!(d.guest_bytes(DATA, 1024), file[3 * 512..5 * 512]);
}

#[test]
fn block_write_then_read_round_trips_across_split_buffers() {
    let mut d = disk(false);
    let data = pattern(1536, 99);
    d.mem
        .write_slice(&data[..1000], GuestAddress(DATA))
        .unwrap();
    d.mem
        .write_slice(&data[1000..], GuestAddress(DATA + 0x4000))
        .unwrap();
    d.header(VIRTIO_BLK_T_OUT, 10);
    let (len, st) = d.submit(&[
        (HDR, 16, false),
        (DATA, 1000, false),
        (DATA + 0x4000, 536, false),
        (STATUS, 1, true),
    ]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    assert_eq!(d.file_bytes()[10 * 512..13 * 512], data[..]);

    d.header(VIRTIO_BLK_T_IN, 10);
    let (len, st) = d.submit(&[
        (HDR, 16, false),
        (DATA + 0x8000, 512, true),
        (DATA + 0x9000, 1024, true),
        (STATUS, 1, true),
    ]);
    assert_eq!((len, st), (1537, VIRTIO_BLK_S_OK));
    let mut back = d.guest_bytes(DATA + 0x8000, 512);
    back.extend(d.guest_bytes(DATA + 0x9000, 1024));
    assert_eq!(back, data);
}

#[test]
fn block_header_and_status_may_share_descriptors_with_data() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_IN, 0);
    // Data and status in one writable buffer whose last byte is the status.
    let (len, st) = d.submit(&[(HDR, 16, false), (STATUS - 512, 513, true)]);
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
    assert_eq!(d.guest_bytes(STATUS - 512, 512), d.file_bytes()[..512]);
}

#[test]
fn block_out_of_range_sector_is_ioerr() {
    let mut d = disk(false);
    for sector in [SECTORS - 1, SECTORS, u64::MAX, u64::MAX / 512] {
        d.header(VIRTIO_BLK_T_IN, sector);
        let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR), "sector {sector}");
    }
    let before = d.file_bytes();
    d.header(VIRTIO_BLK_T_OUT, SECTORS - 1);
    let (_, st) = d.submit(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]);
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(d.file_bytes(), before);
    // The last sector itself is in range.
    d.header(VIRTIO_BLK_T_IN, SECTORS - 1);
    let (_, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn block_write_to_read_only_disk_is_ioerr() {
    let mut d = disk(true);
    let before = d.file_bytes();
    d.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    d.header(VIRTIO_BLK_T_OUT, 0);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(d.file_bytes(), before);
    // Reads still work.
    d.header(VIRTIO_BLK_T_IN, 0);
    let (_, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
}

#[test]
fn block_offers_ro_feature_only_when_read_only() {
    for read_only in [false, true] {
        let mut d = disk(read_only);
        mmio_write(&mut d.t, reg::DEVICE_FEATURES_SEL, 0);
        let low = mmio_read(&mut d.t, reg::DEVICE_FEATURES);
        assert_eq!(low & (1 << VIRTIO_BLK_F_RO) != 0, read_only);
        assert_ne!(low & (1 << VIRTIO_BLK_F_FLUSH), 0);
        mmio_write(&mut d.t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(mmio_read(&mut d.t, reg::DEVICE_FEATURES), 1);
    }
}

#[test]
fn block_get_id_returns_the_padded_id() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_GET_ID, 0);
    d.mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
    let mut want = ID.to_vec();
    want.resize(DISK_ID_LEN, 0);
    assert_eq!(d.guest_bytes(DATA, 20), want);
    // A shorter buffer gets a prefix.
    let (len, _) = d.submit(&[(HDR, 16, false), (DATA + 0x100, 4, true), (STATUS, 1, true)]);
    assert_eq!(len, 5);
    assert_eq!(d.guest_bytes(DATA + 0x100, 4), b"sbx-");
}

#[test]
fn block_flush_succeeds_on_both_modes() {
    for read_only in [false, true] {
        let mut d = disk(read_only);
        d.header(VIRTIO_BLK_T_FLUSH, 0);
        let (len, st) = d.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK));
    }
}

#[test]
fn block_unknown_request_type_is_unsupp() {
    let mut d = disk(false);
    for kind in [11, 13, 0xffff_ffff] {
        d.header(kind, 0);
        let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_UNSUPP));
    }
}

#[test]
fn block_chain_without_status_is_returned_unused() {
    let mut d = disk(false);
    let before = d.file_bytes();
    d.header(VIRTIO_BLK_T_OUT, 0);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, false)]);
    assert_eq!((len, st), (0, 0xff));
    assert_eq!(d.file_bytes(), before);
}

#[test]
fn block_read_only_status_descriptor_rejects_the_chain() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_IN, 0);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]);
    assert_eq!((len, st), (0, 0xff));
    // The queue keeps working.
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
}

#[test]
fn block_data_of_wrong_direction_is_ioerr() {
    let mut d = disk(false);
    let before = d.file_bytes();
    d.header(VIRTIO_BLK_T_IN, 0);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
    d.header(VIRTIO_BLK_T_OUT, 0);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(d.file_bytes(), before);
}

#[test]
fn block_short_header_missing_data_and_partial_sectors_are_ioerr() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_IN, 0);
    let cases: [&[(u64, u32, bool)]; 4] = [
        &[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)],
        &[(HDR, 16, false), (STATUS, 1, true)],
        &[(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)],
        &[(HDR, 16, false), (DATA, 513, true), (STATUS, 1, true)],
    ];
    for bufs in cases {
        let (len, st) = d.submit(bufs);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR), "{bufs:?}");
    }
}

#[test]
fn block_config_reports_capacity_seg_max_and_block_size() {
    let mut d = disk(false);
    let capacity =
        u64::from(mmio_read(&mut d.t, 0x100)) | u64::from(mmio_read(&mut d.t, 0x104)) << 32;
    assert_eq!(capacity, SECTORS);
    assert_eq!(mmio_read(&mut d.t, 0x10c), u32::from(BLOCK_QUEUE_SIZE) - 2);
    assert_eq!(mmio_read(&mut d.t, 0x114), 512);
    let mut b = [0u8; 1];
    d.t.read(0x100, &mut b);
    assert_eq!(b[0], SECTORS as u8);
}

#[test]
fn block_capacity_ignores_a_partial_last_sector() {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[1u8; 1000]).unwrap();
    assert_eq!(Block::new(file, false, b"").unwrap().capacity(), 1);
}

#[test]
fn block_rejects_an_id_longer_than_20_bytes() {
    let file = tempfile::tempfile().unwrap();
    assert!(matches!(
        Block::new(file, false, &[b'x'; 21]),
        Err(BlockError::DiskIdTooLong(21))
    ));
}

#[test]
fn block_handles_several_requests_per_notification() {
    let mut d = disk(false);
    for i in 0..3u64 {
        // One header each, so each request reads its own sector.
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&i.to_le_bytes());
        d.mem
            .write_slice(&h, GuestAddress(HDR + 0x100 * i))
            .unwrap();
        d.ring.push_chain(
            &d.mem,
            &[
                (HDR + 0x100 * i, 16, false),
                (DATA + 0x1000 * i, 512, true),
                (STATUS + i, 1, true),
            ],
        );
    }
    mmio_write(&mut d.t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.ring.take_used(&d.mem).len(), 3);
    let file = d.file_bytes();
    for i in 0..3usize {
        assert_eq!(
            d.guest_bytes(DATA + 0x1000 * i as u64, 512),
            file[i * 512..(i + 1) * 512]
        );
    }
}

#[test]
fn block_save_restore_keeps_serving_and_checks_the_disk() {
    let mut d = disk(false);
    d.header(VIRTIO_BLK_T_IN, 1);
    d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    let state = d.t.save().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioTransportState = serde_json::from_str(&json).unwrap();

    let block = Block::new(d.file.try_clone().unwrap(), false, ID).unwrap();
    d.t = MmioTransport::restore(
        MmioTransportArgs {
            mem: d.mem.clone(),
            interrupt: d.irq.try_clone().unwrap(),
            device: Box::new(block),
        },
        &state,
    )
    .unwrap();
    d.header(VIRTIO_BLK_T_IN, 2);
    let (len, st) = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));

    let smaller = tempfile::tempfile().unwrap();
    smaller.set_len(512).unwrap();
    let other = Block::new(smaller, false, ID).unwrap();
    assert!(MmioTransport::restore(
        MmioTransportArgs {
            mem: d.mem.clone(),
            interrupt: irq(),
            device: Box::new(other)
        },
        &state
    )
    .is_err());
    let ro = Block::new(d.file.try_clone().unwrap(), true, ID).unwrap();
    assert!(MmioTransport::restore(
        MmioTransportArgs {
            mem: d.mem.clone(),
            interrupt: irq(),
            device: Box::new(ro)
        },
        &state
    )
    .is_err());
}

#[test]
fn block_large_request_spans_several_bounce_chunks() {
    let mut d = disk_of(1024, false);
    let len = 300 * 1024u32;
    let data = pattern(len as usize, 5);
    d.mem.write_slice(&data, GuestAddress(0x40000)).unwrap();
    d.header(VIRTIO_BLK_T_OUT, 100);
    let (_, st) = d.submit(&[
        (HDR, 16, false),
        (0x40000, 4096, false),
        (0x41000, len - 8192, false),
        (0x40000 + u64::from(len) - 4096, 4096, false),
        (STATUS, 1, true),
    ]);
    assert_eq!(st, VIRTIO_BLK_S_OK);
    assert_eq!(
        d.file_bytes()[100 * 512..100 * 512 + len as usize],
        data[..]
    );
    d.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(0x40000))
        .unwrap();
    d.header(VIRTIO_BLK_T_IN, 100);
    let (used, st) = d.submit(&[(HDR, 16, false), (0x40000, len, true), (STATUS, 1, true)]);
    assert_eq!((used, st), (len + 1, VIRTIO_BLK_S_OK));
    assert_eq!(d.guest_bytes(0x40000, len as usize), data);
}
