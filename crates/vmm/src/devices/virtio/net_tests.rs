//! Tests of virtio-net through the mmio transport and real rings, driven
//! the way the Linux 6.1 virtio_net driver drives it without offloads.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{
    reg, MmioTransportArgs, MmioTransportState, MMIO_CONFIG_OFFSET,
};
use crate::devices::virtio::status;
use crate::devices::virtio::testutil::{
    irq, linux_probe, memory, mmio_read, mmio_write, take_interrupt, TestRing,
};
use crate::devices::BusDevice;
use crate::persist::Persist;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const RX_BUF: u64 = 0x10000;
const TX_BUF: u64 = 0x40000;
const RING_SIZE: u16 = 16;
/// What Linux posts per receive buffer without offloads or MRG_RXBUF:
/// header plus a 1518-byte frame (GOOD_PACKET_LEN), rounded.
const LINUX_RX_LEN: u32 = 1536;

/// What the backend saw.
#[derive(Default)]
struct Log {
    frames: Vec<Vec<u8>>,
    rx_available: usize,
}

/// A backend that records its calls.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Log>>);

impl NetBackend for Recorder {
    fn transmit(&mut self, frame: &[u8]) {
        self.0.lock().unwrap().frames.push(frame.to_vec());
    }
    fn rx_buffers_available(&mut self) {
        self.0.lock().unwrap().rx_available += 1;
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    irq: EventFd,
    t: MmioTransport,
    rx: TestRing,
    tx: TestRing,
    backend: Recorder,
    next_rx: u64,
    next_tx: u64,
}

fn unprobed() -> Fixture {
    let mem = memory();
    let irq = irq();
    let backend = Recorder::default();
    let net = Net::new(MAC, Box::new(backend.clone()));
    let t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(net));
    Fixture {
        mem,
        irq,
        t,
        rx: TestRing::new(0x1000, RING_SIZE),
        tx: TestRing::new(0x2000, RING_SIZE),
        backend,
        next_rx: RX_BUF,
        next_tx: TX_BUF,
    }
}

/// A live device, probed with every offered feature.
fn net() -> Fixture {
    let mut f = unprobed();
    let st = linux_probe(&mut f.t, |o| o, &[&f.rx, &f.tx]);
    assert_ne!(st & status::DRIVER_OK, 0);
    f
}

/// A recognisable frame of `len` bytes.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A transmit packet as Linux builds it: a zero v1 header, then `frame`.
fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_LEN];
    p.extend_from_slice(frame);
    p
}

impl Fixture {
    /// Writes `bytes` into fresh device-readable buffers cut at `cuts`,
    /// publishes them as one chain and notifies the transmit queue; returns
    /// the head.
    fn send(&mut self, bytes: &[u8], cuts: &[usize]) -> u16 {
        let mut bufs = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&bytes.len()]) {
            // Each piece in its own page, so descriptors are not adjacent.
            let addr = self.next_tx;
            self.next_tx += 0x1000;
            self.mem
                .write_slice(&bytes[start..end], GuestAddress(addr))
                .unwrap();
            bufs.push((addr, (end - start) as u32, false));
            start = end;
        }
        let head = self.tx.push_chain(&self.mem, &bufs);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 1);
        head
    }

    /// Posts a receive chain of writable buffers of `lens` bytes and
    /// notifies the receive queue; returns the head.
    fn post_rx(&mut self, lens: &[u32]) -> u16 {
        let mut bufs = Vec::new();
        for &len in lens {
            bufs.push((self.next_rx, len, true));
            self.next_rx += u64::from(len).next_multiple_of(0x1000);
        }
        let head = self.rx.push_chain(&self.mem, &bufs);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 0);
        head
    }

    /// The writable bytes of used receive chains since the last call, each
    /// cut to its used length.
    fn received(&mut self) -> Vec<Vec<u8>> {
        self.rx
            .take_used(&self.mem)
            .into_iter()
            .map(|(head, len)| self.chain_bytes(head as u16, len as usize))
            .collect()
    }

    /// The first `len` bytes of the chain at `head`, following `next`.
    fn chain_bytes(&self, head: u16, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut index = head;
        while out.len() < len {
            let desc = self.rx.desc + 16 * u64::from(index);
            let addr: u64 = self.mem.read_obj(GuestAddress(desc)).unwrap();
            let dlen: u32 = self.mem.read_obj(GuestAddress(desc + 8)).unwrap();
            let take = (dlen as usize).min(len - out.len());
            let mut buf = vec![0u8; take];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(buf);
            index = self.mem.read_obj(GuestAddress(desc + 14)).unwrap();
        }
        out
    }

    fn transmitted(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.backend.0.lock().unwrap().frames)
    }

    fn rx_available(&self) -> usize {
        self.backend.0.lock().unwrap().rx_available
    }

    fn counters(&mut self) -> NetCounters {
        self.t.net_counters().unwrap()
    }

    fn needs_reset(&mut self) -> bool {
        mmio_read(&mut self.t, reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    /// Saves the transport through JSON and restores it around a fresh
    /// device with a fresh backend.
    fn save_and_restore(&mut self) -> MmioTransportState {
        let state = self.t.save().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let state: MmioTransportState = serde_json::from_str(&json).unwrap();
        self.backend = Recorder::default();
        let fresh = Net::new(MAC, Box::new(self.backend.clone()));
        self.t = MmioTransport::restore(
            MmioTransportArgs {
                mem: self.mem.clone(),
                interrupt: self.irq.try_clone().unwrap(),
                device: Box::new(fresh),
            },
            &state,
        )
        .unwrap();
        state
    }
}

/// The header the device must write on receive.
fn rx_header() -> Vec<u8> {
    let mut h = vec![0u8; NET_HDR_LEN];
    h[10] = 1;
    h
}

#[test]
fn net_config_space_holds_mac_and_link_up() {
    let mut f = net();
    // Linux reads the MAC a byte at a time.
    let mac: Vec<u8> = (0..6)
        .map(|i| {
            let mut b = [0u8; 1];
            f.t.read(MMIO_CONFIG_OFFSET + i, &mut b);
            b[0]
        })
        .collect();
    assert_eq!(mac, MAC);
    let mut st = [0u8; 2];
    f.t.read(MMIO_CONFIG_OFFSET + 6, &mut st);
    assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP);
    // Nothing past the status field (no MQ, no MTU).
    let mut rest = [0xffu8; 8];
    f.t.read(MMIO_CONFIG_OFFSET + 8, &mut rest);
    assert_eq!(rest, [0; 8]);
    // Read-only: writes change nothing.
    f.t.write(MMIO_CONFIG_OFFSET, &[0xff; 8]);
    let mut all = [0u8; 8];
    f.t.read(MMIO_CONFIG_OFFSET, &mut all);
    assert_eq!(all[..6], MAC);
    assert_eq!(all[6..], [1, 0]);
}

#[test]
fn net_offers_version_1_mac_and_status_only() {
    let mut f = unprobed();
    assert_eq!(mmio_read(&mut f.t, reg::DEVICE_ID), device_type::NET);
    for (index, max) in [(0, 256), (1, 256), (2, 0)] {
        mmio_write(&mut f.t, reg::QUEUE_SEL, index);
        assert_eq!(mmio_read(&mut f.t, reg::QUEUE_NUM_MAX), max);
    }
    let expected = features::bit(features::VERSION_1)
        | features::bit(VIRTIO_NET_F_MAC)
        | features::bit(VIRTIO_NET_F_STATUS);
    let offered = Arc::new(Mutex::new(0));
    let seen = offered.clone();
    let st = linux_probe(
        &mut f.t,
        move |o| {
            *seen.lock().unwrap() = o;
            o
        },
        &[&f.rx, &f.tx],
    );
    assert_ne!(st & status::DRIVER_OK, 0);
    assert_eq!(*offered.lock().unwrap(), expected);
    let net: &mut Net = f.t.device_mut().as_any_mut().downcast_mut().unwrap();
    assert_eq!(net.acked_features(), expected);
    assert_eq!(net.mac(), MAC);
}

#[test]
fn net_refuses_a_driver_asking_for_offloads() {
    let mut f = unprobed();
    // VIRTIO_NET_F_CSUM (0) and VIRTIO_NET_F_MRG_RXBUF (15) are not offered.
    let st = linux_probe(&mut f.t, |o| o | 1 | (1 << 15), &[&f.rx, &f.tx]);
    assert_eq!(st & status::FEATURES_OK, 0);
    assert!(!f.t.is_activated());
}

#[test]
fn net_works_without_the_mac_and_status_features() {
    let mut f = unprobed();
    let st = linux_probe(
        &mut f.t,
        |o| o & features::bit(features::VERSION_1),
        &[&f.rx, &f.tx],
    );
    assert_ne!(st & status::DRIVER_OK, 0);
    f.post_rx(&[LINUX_RX_LEN]);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 1)).unwrap(),
        RxOutcome::Delivered
    );
}

#[test]
fn net_transmits_a_frame_split_across_two_descriptors_without_header() {
    let mut f = net();
    let data = frame(98, 3);
    // The header shares the first descriptor with the frame's start.
    let head = f.send(&packet(&data), &[NET_HDR_LEN + 20]);
    assert_eq!(f.tx.take_used(&f.mem), vec![(u32::from(head), 0)]);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
    assert_eq!(f.transmitted(), vec![data]);
    // The header itself split across descriptors.
    let data = frame(MAX_FRAME_LEN, 9);
    f.send(&packet(&data), &[5]);
    assert_eq!(f.transmitted(), vec![data]);
    assert_eq!(
        f.counters(),
        NetCounters {
            tx_frames: 2,
            ..NetCounters::default()
        }
    );
}

#[test]
fn net_transmits_every_chain_of_one_notification_in_order() {
    let mut f = net();
    let frames: Vec<Vec<u8>> = (0..RING_SIZE).map(|i| frame(60, i as u8)).collect();
    for (i, data) in frames.iter().enumerate() {
        let addr = TX_BUF + 0x800 * i as u64;
        f.mem
            .write_slice(&packet(data), GuestAddress(addr))
            .unwrap();
        f.tx.push_chain(&f.mem, &[(addr, (NET_HDR_LEN + 60) as u32, false)]);
    }
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.tx.take_used(&f.mem).len(), usize::from(RING_SIZE));
    assert_eq!(f.transmitted(), frames);
}

#[test]
fn net_drops_and_counts_transmit_frames_of_bad_length() {
    let mut f = net();
    for len in [
        NET_HDR_LEN - 1,
        NET_HDR_LEN,
        NET_HDR_LEN + MIN_FRAME_LEN - 1,
        NET_HDR_LEN + MAX_FRAME_LEN + 1,
        NET_HDR_LEN + 65_000,
    ] {
        let head = f.send(&vec![0xaa; len], &[]);
        assert_eq!(f.tx.take_used(&f.mem), vec![(u32::from(head), 0)]);
    }
    assert!(f.transmitted().is_empty());
    assert_eq!(f.counters().tx_dropped, 5);
    assert!(!f.needs_reset());
    // The bounds themselves are fine.
    for len in [MIN_FRAME_LEN, MAX_FRAME_LEN] {
        f.send(&packet(&frame(len, 0)), &[]);
    }
    assert_eq!(f.transmitted().len(), 2);
    assert_eq!(f.counters().tx_frames, 2);
}

#[test]
fn net_rejects_writable_transmit_descriptors_without_breaking() {
    let mut f = net();
    let bytes = packet(&frame(60, 5));
    f.mem.write_slice(&bytes, GuestAddress(TX_BUF)).unwrap();
    let mixed = f.tx.push_chain(
        &f.mem,
        &[
            (TX_BUF, bytes.len() as u32, false),
            (TX_BUF + 0x1000, 64, true),
        ],
    );
    let writable_only =
        f.tx.push_chain(&f.mem, &[(TX_BUF, bytes.len() as u32, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(
        f.tx.take_used(&f.mem),
        vec![(u32::from(mixed), 0), (u32::from(writable_only), 0)]
    );
    assert!(f.transmitted().is_empty());
    assert_eq!(f.counters().tx_dropped, 2);
    assert!(!f.needs_reset());
    f.send(&bytes, &[]);
    assert_eq!(f.transmitted(), vec![bytes[NET_HDR_LEN..].to_vec()]);
}

#[test]
fn net_transmit_gives_back_a_ring_of_malformed_chains_and_carries_on() {
    let mut f = net();
    // Zero-length descriptors: the walker refuses every one of them.
    for _ in 0..RING_SIZE {
        f.tx.push_chain(&f.mem, &[(TX_BUF, 0, false)]);
    }
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.tx.take_used(&f.mem).len(), usize::from(RING_SIZE));
    assert_eq!(f.counters().tx_dropped, u64::from(RING_SIZE));
    assert!(!f.needs_reset());
    let data = frame(60, 1);
    f.send(&packet(&data), &[]);
    assert_eq!(f.transmitted(), vec![data]);
}

#[test]
fn net_receive_writes_header_and_frame_across_two_descriptors() {
    let mut f = net();
    // The header straddles the descriptor boundary.
    let head = f.post_rx(&[8, 2000]);
    take_interrupt(&mut f.t, &f.irq);
    let data = frame(60, 11);
    assert_eq!(f.t.net_push_frame(&data).unwrap(), RxOutcome::Delivered);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
    let used = f.rx.take_used(&f.mem);
    assert_eq!(used, vec![(u32::from(head), (NET_HDR_LEN + 60) as u32)]);
    let got = f.chain_bytes(head, NET_HDR_LEN + 60);
    assert_eq!(got[..NET_HDR_LEN], rx_header());
    assert_eq!(got[NET_HDR_LEN..], data);
    assert_eq!(f.counters().rx_frames, 1);
}

#[test]
fn net_receive_fills_one_buffer_per_frame_in_order() {
    let mut f = net();
    for _ in 0..3 {
        f.post_rx(&[LINUX_RX_LEN]);
    }
    let frames = [frame(14, 1), frame(MAX_FRAME_LEN, 2), frame(100, 3)];
    for data in &frames {
        assert_eq!(f.t.net_push_frame(data).unwrap(), RxOutcome::Delivered);
    }
    let got = f.received();
    assert_eq!(got.len(), 3);
    for (packet, data) in got.iter().zip(&frames) {
        assert_eq!(packet[..NET_HDR_LEN], rx_header());
        assert_eq!(packet[NET_HDR_LEN..], data[..]);
    }
}

#[test]
fn net_receive_without_buffers_says_no_buffer_and_takes_nothing() {
    let mut f = net();
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NoBuffer
    );
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    assert_eq!(f.counters(), NetCounters::default());
    // The guest posts a buffer: the backend hears of it and retries.
    f.post_rx(&[LINUX_RX_LEN]);
    assert_eq!(f.rx_available(), 1);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::Delivered
    );
    assert_eq!(f.received().len(), 1);
}

#[test]
fn net_receive_notification_tells_the_backend() {
    let mut f = net();
    assert_eq!(f.rx_available(), 0);
    f.post_rx(&[LINUX_RX_LEN]);
    f.post_rx(&[LINUX_RX_LEN]);
    assert_eq!(f.rx_available(), 2);
    // A transmit notification does not.
    f.send(&packet(&frame(60, 0)), &[]);
    assert_eq!(f.rx_available(), 2);
}

#[test]
fn net_receive_buffer_too_small_drops_the_frame_and_returns_the_chain_empty() {
    let mut f = net();
    let small = f.post_rx(&[40]);
    let good = f.post_rx(&[LINUX_RX_LEN]);
    take_interrupt(&mut f.t, &f.irq);
    // 12 + 60 > 40: the chain comes back with nothing in it and the frame
    // is gone; the next frame gets the next chain.
    assert_eq!(
        f.t.net_push_frame(&frame(60, 1)).unwrap(),
        RxOutcome::Dropped
    );
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
    assert_eq!(f.rx.take_used(&f.mem), vec![(u32::from(small), 0)]);
    assert_eq!(
        f.t.net_push_frame(&frame(20, 2)).unwrap(),
        RxOutcome::Delivered
    );
    assert_eq!(
        f.rx.take_used(&f.mem),
        vec![(u32::from(good), (NET_HDR_LEN + 20) as u32)]
    );
    // A buffer exactly the size of header and frame is enough.
    f.post_rx(&[(NET_HDR_LEN + 60) as u32]);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 3)).unwrap(),
        RxOutcome::Delivered
    );
    let c = f.counters();
    assert_eq!((c.rx_frames, c.rx_dropped), (2, 1));
    assert!(!f.needs_reset());
}

#[test]
fn net_receive_chain_with_readable_buffers_is_returned_empty() {
    let mut f = net();
    let bad = f.rx.push_chain(
        &f.mem,
        &[(RX_BUF, 16, false), (RX_BUF + 0x1000, LINUX_RX_LEN, true)],
    );
    assert_eq!(
        f.t.net_push_frame(&frame(60, 1)).unwrap(),
        RxOutcome::Dropped
    );
    assert_eq!(f.rx.take_used(&f.mem), vec![(u32::from(bad), 0)]);
    assert!(!f.needs_reset());
}

#[test]
fn net_drops_host_frames_of_bad_length_without_using_a_buffer() {
    let mut f = net();
    f.post_rx(&[4096]);
    for len in [0, MIN_FRAME_LEN - 1, MAX_FRAME_LEN + 1] {
        assert_eq!(
            f.t.net_push_frame(&frame(len, 0)).unwrap(),
            RxOutcome::Dropped
        );
    }
    assert!(f.rx.take_used(&f.mem).is_empty());
    assert_eq!(f.counters().rx_dropped, 3);
}

#[test]
fn net_receive_is_not_ready_before_driver_ok_and_after_reset() {
    let mut f = unprobed();
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NotReady
    );
    let st = linux_probe(&mut f.t, |o| o, &[&f.rx, &f.tx]);
    assert_ne!(st & status::DRIVER_OK, 0);
    f.post_rx(&[LINUX_RX_LEN]);
    mmio_write(&mut f.t, reg::STATUS, 0);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NotReady
    );
    assert_eq!(f.counters(), NetCounters::default());
}

#[test]
fn net_shortcuts_refuse_other_devices() {
    let mut t = MmioTransport::new(
        memory(),
        irq(),
        Box::new(Console::new(Box::new(Vec::new()))),
    );
    assert!(matches!(
        t.net_push_frame(&frame(60, 0)),
        Err(MmioError::WrongDeviceType(device_type::CONSOLE))
    ));
    assert!(t.net_counters().is_err());
}

#[test]
fn net_broken_receive_ring_needs_reset_and_stops_receiving() {
    let mut f = net();
    f.rx.set_avail_idx(&f.mem, 1000);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NotReady
    );
    assert!(f.needs_reset());
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 2);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NotReady
    );
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
}

#[test]
fn net_broken_transmit_ring_stops_receiving_too() {
    let mut f = net();
    f.post_rx(&[LINUX_RX_LEN]);
    f.tx.set_avail_idx(&f.mem, 1000);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert!(f.needs_reset());
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::NotReady
    );
    assert!(f.rx.take_used(&f.mem).is_empty());
}

#[test]
fn net_save_restore_round_trip_keeps_both_directions_going() {
    let mut f = net();
    f.post_rx(&[LINUX_RX_LEN]);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 1)).unwrap(),
        RxOutcome::Delivered
    );
    f.send(&packet(&frame(60, 2)), &[]);
    assert_eq!(f.received().len(), 1);
    f.tx.take_used(&f.mem);
    // A buffer posted before the snapshot, not yet used.
    f.post_rx(&[LINUX_RX_LEN]);
    let state = f.save_and_restore();
    let DeviceState::Net(saved) = &state.device else {
        panic!("not a net state: {:?}", state.device);
    };
    let acked = features::bit(features::VERSION_1)
        | features::bit(VIRTIO_NET_F_MAC)
        | features::bit(VIRTIO_NET_F_STATUS);
    assert_eq!(
        *saved,
        NetState {
            mac: MAC,
            acked_features: acked,
        }
    );
    assert!(f.t.is_activated());
    // The fresh backend learns of the posted buffer at activation.
    assert_eq!(f.rx_available(), 1);
    // Counters are not state.
    assert_eq!(f.counters(), NetCounters::default());
    let data = frame(70, 3);
    assert_eq!(f.t.net_push_frame(&data).unwrap(), RxOutcome::Delivered);
    let got = f.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][NET_HDR_LEN..], data);
    let out = frame(80, 4);
    f.send(&packet(&out), &[]);
    assert_eq!(f.transmitted(), vec![out]);
    assert_eq!(f.tx.take_used(&f.mem).len(), 1);
}

#[test]
fn net_restore_refuses_another_mac_or_device() {
    let f = net();
    let state = f.t.save().unwrap();
    let other = Net::new([2, 0, 0, 0, 0, 1], Box::new(Recorder::default()));
    let err = MmioTransport::restore(
        MmioTransportArgs {
            mem: f.mem.clone(),
            interrupt: irq(),
            device: Box::new(other),
        },
        &state,
    )
    .err()
    .unwrap();
    assert!(matches!(
        err,
        MmioError::DeviceState(VirtioError::StateMismatch(_))
    ));

    let mut net = Net::new(MAC, Box::new(Recorder::default()));
    let console_state = DeviceState::Console(Default::default());
    assert!(matches!(
        net.restore_state(&console_state),
        Err(VirtioError::StateTypeMismatch)
    ));
    let unoffered = DeviceState::Net(NetState {
        mac: MAC,
        acked_features: 1,
    });
    assert!(net.restore_state(&unoffered).is_err());
}

#[test]
fn net_reset_forgets_features_and_keeps_counters() {
    let mut f = net();
    f.send(&packet(&frame(60, 0)), &[]);
    mmio_write(&mut f.t, reg::STATUS, 0);
    let net: &mut Net = f.t.device_mut().as_any_mut().downcast_mut().unwrap();
    assert_eq!(net.acked_features(), 0);
    assert_eq!(net.counters().tx_frames, 1);
    // A new driver brings the device up again on fresh rings.
    f.mem
        .write_slice(&[0u8; 0x2000], GuestAddress(0x1000))
        .unwrap();
    f.rx = TestRing::new(0x1000, RING_SIZE);
    f.tx = TestRing::new(0x2000, RING_SIZE);
    let st = linux_probe(&mut f.t, |o| o, &[&f.rx, &f.tx]);
    assert_ne!(st & status::DRIVER_OK, 0);
    f.post_rx(&[LINUX_RX_LEN]);
    assert_eq!(
        f.t.net_push_frame(&frame(60, 0)).unwrap(),
        RxOutcome::Delivered
    );
}

/// A raw descriptor: address, length, flags, next.
type RawDesc = (u64, u32, u16, u16);
/// A ring as the driver wrote it: descriptor table, available heads,
/// available index.
type RingPlan = (Vec<RawDesc>, Vec<u16>, u16);

/// One descriptor as a hostile driver might write it: mostly plausible,
/// sometimes anything.
fn any_descriptor() -> impl Strategy<Value = RawDesc> {
    (
        prop_oneof![
            4 => RX_BUF..0x8_0000u64,
            1 => 0..0x10_0000u64,
            1 => any::<u64>(),
        ],
        prop_oneof![4 => 0..2000u32, 1 => any::<u32>()],
        prop_oneof![4 => 0..8u16, 1 => any::<u16>()],
        prop_oneof![4 => 0..RING_SIZE + 4, 1 => any::<u16>()],
    )
}

/// A whole ring written by a hostile driver.
fn any_ring() -> impl Strategy<Value = RingPlan> {
    (
        prop::collection::vec(any_descriptor(), usize::from(RING_SIZE)),
        prop::collection::vec(
            prop_oneof![4 => 0..RING_SIZE, 1 => any::<u16>()],
            usize::from(RING_SIZE),
        ),
        prop_oneof![4 => 0..=RING_SIZE, 1 => any::<u16>()],
    )
}

fn write_ring(mem: &GuestMemoryMmap, ring: &TestRing, plan: &RingPlan) {
    let (descs, heads, idx) = plan;
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        ring.write_desc(mem, i as u16, addr, len, flags, next);
    }
    for (slot, &head) in heads.iter().enumerate() {
        mem.write_obj(head, GuestAddress(ring.avail + 4 + 2 * slot as u64))
            .unwrap();
    }
    ring.set_avail_idx(mem, *idx);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the driver writes into its rings, the device neither panics
    /// nor hands the backend anything but a frame of legal length, and it
    /// accounts for every frame.
    #[test]
    fn net_survives_hostile_rings(
        tx_plan in any_ring(),
        rx_plan in any_ring(),
        lens in prop::collection::vec(0..1600usize, 0..6),
    ) {
        let mut f = net();
        write_ring(&f.mem, &f.tx, &tx_plan);
        write_ring(&f.mem, &f.rx, &rx_plan);
        mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
        mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
        let mut delivered = 0;
        for (i, &len) in lens.iter().enumerate() {
            if f.t.net_push_frame(&frame(len, i as u8)).unwrap() == RxOutcome::Delivered {
                delivered += 1;
            }
        }
        // Once more, after the device may have used or broken things.
        mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
        let frames = f.transmitted();
        prop_assert!(frames
            .iter()
            .all(|fr| (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&fr.len())));
        let c = f.counters();
        prop_assert_eq!(c.tx_frames, frames.len() as u64);
        prop_assert_eq!(c.rx_frames, delivered);
        prop_assert!(c.rx_frames + c.rx_dropped <= lens.len() as u64);
    }
}
