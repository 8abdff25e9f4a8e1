//! Tests of the mmio transport, driven through its registers the way the
//! Linux virtio_mmio driver does.

use std::any::Any;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::console::ConsoleState;
use crate::devices::virtio::testutil::{
    irq, linux_probe, memory, mmio_read, mmio_write, take_interrupt, TestRing,
};
use crate::persist::Persist;

const TEST_DEVICE_TYPE: u32 = 99;
const LIVE: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
const DATA: u64 = 0x8000;

/// A device that marks every writable buffer as fully used.
struct TestDevice {
    sizes: [u16; 2],
    features: u64,
    acked: u64,
    activations: u32,
    resets: u32,
    restored: Option<Vec<u8>>,
}

impl TestDevice {
    fn new() -> Self {
        Self {
            sizes: [16, 16],
            features: features::bit(features::VERSION_1) | 1,
            acked: 0,
            activations: 0,
            resets: 0,
            restored: None,
        }
    }
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        TEST_DEVICE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _ctx: &mut QueueContext<'_>) -> Result<(), VirtioError> {
        self.activations += 1;
        Ok(())
    }
    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), QueueError> {
        while let Some(chain) = ctx.pop_chain(index)? {
            ctx.add_used(index, chain.head(), chain.writable_len())?;
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn save_state(&self) -> DeviceState {
        DeviceState::Console(ConsoleState {
            pending: vec![self.activations as u8],
            ..ConsoleState::default()
        })
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        match state {
            DeviceState::Console(s) => {
                self.restored = Some(s.pending.clone());
                Ok(())
            }
            DeviceState::Block(_) | DeviceState::Net(_) => Err(VirtioError::StateTypeMismatch),
        }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    irq: EventFd,
    t: MmioTransport,
    rings: [TestRing; 2],
}

fn fixture_with(device: TestDevice) -> Fixture {
    let mem = memory();
    let irq = irq();
    let t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(device));
    Fixture {
        mem,
        irq,
        t,
        rings: [TestRing::new(0x1000, 16), TestRing::new(0x2000, 16)],
    }
}

fn live_fixture() -> Fixture {
    let mut f = fixture_with(TestDevice::new());
    let [r0, r1] = &f.rings;
    assert_eq!(linux_probe(&mut f.t, |o| o, &[r0, r1]), LIVE);
    f
}

fn test_device(t: &mut MmioTransport) -> &mut TestDevice {
    t.device_mut().as_any_mut().downcast_mut().unwrap()
}

#[test]
fn mmio_identifies_as_version_2() {
    let mut f = fixture_with(TestDevice::new());
    assert_eq!(mmio_read(&mut f.t, reg::MAGIC), 0x7472_6976);
    assert_eq!(mmio_read(&mut f.t, reg::VERSION), 2);
    assert_eq!(mmio_read(&mut f.t, reg::DEVICE_ID), TEST_DEVICE_TYPE);
    assert_eq!(mmio_read(&mut f.t, reg::VENDOR_ID), MMIO_VENDOR_ID);
}

#[test]
fn mmio_linux_probe_negotiates_features_and_activates() {
    let mut f = live_fixture();
    assert!(f.t.is_activated());
    let dev = test_device(&mut f.t);
    assert_eq!(dev.acked, features::bit(features::VERSION_1) | 1);
    assert_eq!(dev.activations, 1);
}

#[test]
fn mmio_never_offers_indirect_or_event_idx() {
    let mut dev = TestDevice::new();
    dev.features |= UNSUPPORTED_FEATURES;
    let mut f = fixture_with(dev);
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 0);
    let low = mmio_read(&mut f.t, reg::DEVICE_FEATURES);
    assert_eq!(low, 1);
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(mmio_read(&mut f.t, reg::DEVICE_FEATURES), 1);
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(mmio_read(&mut f.t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn mmio_refuses_features_ok_without_version_1() {
    let mut f = fixture_with(TestDevice::new());
    let [r0, r1] = &f.rings;
    let st = linux_probe(
        &mut f.t,
        |o| o & !features::bit(features::VERSION_1),
        &[r0, r1],
    );
    assert_eq!(st & status::FEATURES_OK, 0);
    assert_eq!(test_device(&mut f.t).acked, 0);
}

#[test]
fn mmio_refuses_features_that_were_not_offered() {
    let mut f = fixture_with(TestDevice::new());
    let [r0, r1] = &f.rings;
    let st = linux_probe(&mut f.t, |o| o | features::bit(40), &[r0, r1]);
    assert_eq!(st & status::FEATURES_OK, 0);
    // Setting DRIVER_OK without FEATURES_OK does not activate.
    mmio_write(&mut f.t, reg::STATUS, st | status::DRIVER_OK);
    assert!(!f.t.is_activated());
}

#[test]
fn mmio_notify_processes_queue_and_raises_interrupt() {
    let mut f = live_fixture();
    let head = f.rings[1].push_chain(&f.mem, &[(DATA, 8, false), (DATA + 0x100, 32, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.rings[1].take_used(&f.mem), vec![(u32::from(head), 32)]);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), interrupt::VRING);
    assert_eq!(mmio_read(&mut f.t, reg::INTERRUPT_STATUS), 0);
    // Nothing new: no interrupt.
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    // Notify of a queue that does not exist is ignored.
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 7);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
}

#[test]
fn mmio_notify_before_driver_ok_is_ignored() {
    let mut f = fixture_with(TestDevice::new());
    f.rings[0].push_chain(&f.mem, &[(DATA, 8, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    assert!(f.rings[0].take_used(&f.mem).is_empty());
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
}

#[test]
fn mmio_reset_clears_status_queues_and_interrupts() {
    let mut f = live_fixture();
    f.rings[0].push_chain(&f.mem, &[(DATA, 8, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(mmio_read(&mut f.t, reg::INTERRUPT_STATUS), interrupt::VRING);
    mmio_write(&mut f.t, reg::STATUS, 0);
    assert_eq!(mmio_read(&mut f.t, reg::STATUS), 0);
    assert_eq!(mmio_read(&mut f.t, reg::INTERRUPT_STATUS), 0);
    for q in 0..2 {
        mmio_write(&mut f.t, reg::QUEUE_SEL, q);
        assert_eq!(mmio_read(&mut f.t, reg::QUEUE_READY), 0);
        assert_eq!(mmio_read(&mut f.t, reg::QUEUE_DESC_LOW), 0);
    }
    assert!(!f.t.is_activated());
    // One reset at probe, one now.
    assert_eq!(test_device(&mut f.t).resets, 2);
    // A fresh driver starts its rings from index 0 again.
    f.irq.read().unwrap();
    f.mem
        .write_slice(&[0u8; 0x1000], GuestAddress(0x1000))
        .unwrap();
    let mut ring = TestRing::new(0x1000, 16);
    let [_, r1] = &f.rings;
    assert_eq!(linux_probe(&mut f.t, |o| o, &[&ring, r1]), LIVE);
    let head = ring.push_chain(&f.mem, &[(DATA, 4, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(ring.take_used(&f.mem), vec![(u32::from(head), 4)]);
}

#[test]
fn mmio_status_bits_cannot_be_cleared_without_reset() {
    let mut f = live_fixture();
    mmio_write(&mut f.t, reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(mmio_read(&mut f.t, reg::STATUS), LIVE);
    mmio_write(&mut f.t, reg::STATUS, LIVE | status::FAILED);
    assert_eq!(mmio_read(&mut f.t, reg::STATUS), LIVE | status::FAILED);
}

#[test]
fn mmio_invalid_queue_at_driver_ok_needs_reset() {
    let mut f = fixture_with(TestDevice::new());
    let bad = TestRing::new(0x1008, 16);
    let [_, r1] = &f.rings;
    let st = linux_probe(&mut f.t, |o| o, &[&bad, r1]);
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert!(!f.t.is_activated());
    assert_eq!(take_interrupt(&mut f.t, &f.irq), interrupt::CONFIG);
    // Reset recovers.
    mmio_write(&mut f.t, reg::STATUS, 0);
    assert_eq!(mmio_read(&mut f.t, reg::STATUS), 0);
}

#[test]
fn mmio_avail_index_jump_needs_reset_and_stops_processing() {
    let mut f = live_fixture();
    f.rings[0].set_avail_idx(&f.mem, 100);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    assert_ne!(
        mmio_read(&mut f.t, reg::STATUS) & status::DEVICE_NEEDS_RESET,
        0
    );
    assert_eq!(take_interrupt(&mut f.t, &f.irq), interrupt::CONFIG);
    f.rings[1].push_chain(&f.mem, &[(DATA, 4, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert!(f.rings[1].take_used(&f.mem).is_empty());
}

#[test]
fn mmio_queue_config_is_frozen_once_ready() {
    let mut f = live_fixture();
    mmio_write(&mut f.t, reg::QUEUE_SEL, 0);
    mmio_write(&mut f.t, reg::QUEUE_NUM, 4);
    mmio_write(&mut f.t, reg::QUEUE_DESC_LOW, 0x5000);
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_NUM), 16);
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_DESC_LOW), 0x1000);
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_NUM_MAX), 16);
    mmio_write(&mut f.t, reg::QUEUE_SEL, 5);
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_NUM_MAX), 0);
}

#[test]
fn mmio_queue_ready_clear_reads_back_zero() {
    let mut f = live_fixture();
    mmio_write(&mut f.t, reg::QUEUE_SEL, 1);
    mmio_write(&mut f.t, reg::QUEUE_READY, 0);
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_READY), 0);
}

#[test]
fn mmio_config_space_supports_byte_word_and_dword_reads() {
    let mut f = fixture_with(TestDevice::new());
    let mut b = [0u8; 1];
    f.t.read(0x103, &mut b);
    assert_eq!(b, [4]);
    let mut w = [0u8; 2];
    f.t.read(0x106, &mut w);
    assert_eq!(w, [7, 8]);
    let mut d = [0xffu8; 4];
    f.t.read(0x106, &mut d);
    assert_eq!(d, [7, 8, 0, 0]);
    f.t.read(0x1_0000_0000, &mut d);
    assert_eq!(d, [0; 4]);
}

#[test]
fn mmio_non_dword_register_access_is_ignored() {
    let mut f = fixture_with(TestDevice::new());
    let mut b = [0xffu8; 2];
    f.t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut d = [0xffu8; 4];
    f.t.read(reg::MAGIC + 1, &mut d);
    assert_eq!(d, [0; 4]);
    f.t.write(reg::STATUS, &[1]);
    assert_eq!(mmio_read(&mut f.t, reg::STATUS), 0);
}

#[test]
fn mmio_reports_no_shared_memory_regions() {
    let mut f = fixture_with(TestDevice::new());
    mmio_write(&mut f.t, reg::SHM_SEL, 0);
    assert_eq!(mmio_read(&mut f.t, reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(mmio_read(&mut f.t, reg::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn mmio_save_restore_continues_where_it_left_off() {
    let mut f = live_fixture();
    f.rings[0].push_chain(&f.mem, &[(DATA, 4, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    f.rings[0].take_used(&f.mem);
    let state = f.t.save().unwrap();
    let json = serde_json::to_vec(&state).unwrap();
    let state: MmioTransportState = serde_json::from_slice(&json).unwrap();
    assert_eq!(state.status, LIVE);
    assert_eq!(state.queues[0].next_avail, 1);

    let irq2 = irq();
    let mut t = MmioTransport::restore(
        MmioTransportArgs {
            mem: f.mem.clone(),
            interrupt: irq2.try_clone().unwrap(),
            device: Box::new(TestDevice::new()),
        },
        &state,
    )
    .unwrap();
    assert!(t.is_activated());
    // Pending VRING interrupt was not acked before the save: raised again.
    assert_eq!(take_interrupt(&mut t, &irq2), interrupt::VRING);
    let dev = test_device(&mut t);
    assert_eq!(dev.activations, 1);
    assert_eq!(dev.restored, Some(vec![1]));
    assert_eq!(dev.acked, features::bit(features::VERSION_1) | 1);
    let head = f.rings[0].push_chain(&f.mem, &[(DATA, 6, true)]);
    mmio_write(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(f.rings[0].take_used(&f.mem), vec![(u32::from(head), 6)]);
    assert_eq!(take_interrupt(&mut t, &irq2), interrupt::VRING);
}

#[test]
fn mmio_save_of_configured_but_inactive_device_restores_inactive() {
    let mut f = fixture_with(TestDevice::new());
    let [r0, r1] = &f.rings;
    let st = linux_probe(&mut f.t, |o| o | features::bit(40), &[r0, r1]);
    assert_eq!(st & status::DRIVER_OK, 0);
    // Half-way: driver features written, FEATURES_OK refused.
    let state = f.t.save().unwrap();
    let mut t = MmioTransport::restore(
        MmioTransportArgs {
            mem: f.mem.clone(),
            interrupt: irq(),
            device: Box::new(TestDevice::new()),
        },
        &state,
    )
    .unwrap();
    assert!(!t.is_activated());
    assert_eq!(mmio_read(&mut t, reg::STATUS), st);
    assert_eq!(t.save().unwrap(), state);
}

#[test]
fn mmio_restore_rejects_mismatched_state() {
    let f = live_fixture();
    let state = f.t.save().unwrap();
    let other = MmioTransportState {
        device_type: 7,
        ..state.clone()
    };
    assert!(matches!(
        MmioTransport::restore(
            MmioTransportArgs {
                mem: f.mem.clone(),
                interrupt: irq(),
                device: Box::new(TestDevice::new())
            },
            &other
        ),
        Err(MmioError::DeviceTypeMismatch { saved: 7, .. })
    ));
    let mut fewer = state.clone();
    fewer.queues.pop();
    assert!(matches!(
        MmioTransport::restore(
            MmioTransportArgs {
                mem: f.mem.clone(),
                interrupt: irq(),
                device: Box::new(TestDevice::new())
            },
            &fewer
        ),
        Err(MmioError::QueueCountMismatch {
            saved: 1,
            actual: 2
        })
    ));
    let mut bad_queue = state.clone();
    bad_queue.queues[1].used_ring = 0x1_0000_0000;
    assert!(matches!(
        MmioTransport::restore(
            MmioTransportArgs {
                mem: f.mem.clone(),
                interrupt: irq(),
                device: Box::new(TestDevice::new())
            },
            &bad_queue
        ),
        Err(MmioError::Queue { index: 1, .. })
    ));
    let features = MmioTransportState {
        driver_features: 1 << 50,
        ..state.clone()
    };
    assert!(matches!(
        MmioTransport::restore(
            MmioTransportArgs {
                mem: f.mem.clone(),
                interrupt: irq(),
                device: Box::new(TestDevice::new())
            },
            &features
        ),
        Err(MmioError::FeaturesNotOffered(_))
    ));
    let device = MmioTransportState {
        device: DeviceState::Block(crate::devices::virtio::BlockState {
            read_only: true,
            capacity_sectors: 0,
            disk_id: vec![],
        }),
        ..state
    };
    assert!(matches!(
        MmioTransport::restore(
            MmioTransportArgs {
                mem: f.mem.clone(),
                interrupt: irq(),
                device: Box::new(TestDevice::new())
            },
            &device
        ),
        Err(MmioError::DeviceState(VirtioError::StateTypeMismatch))
    ));
}

#[test]
fn mmio_with_device_checks_the_concrete_type() {
    let mut f = live_fixture();
    assert_eq!(
        f.t.with_device(|d: &mut TestDevice, _| d.activations),
        Some(1)
    );
    assert!(f
        .t
        .with_device(|_: &mut crate::devices::virtio::Console, _| ())
        .is_none());
    assert!(matches!(
        f.t.console_push_input(b"x"),
        Err(MmioError::WrongDeviceType(TEST_DEVICE_TYPE))
    ));
}
