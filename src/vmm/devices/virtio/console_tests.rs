//! Tests of virtio-console through the mmio transport and real rings.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::vmm::devices::virtio::mmio::{reg, MmioTransportState};
use crate::vmm::devices::virtio::status;
use crate::vmm::devices::virtio::testutil::{
    irq, linux_probe, memory, mmio_read, mmio_write, take_interrupt, TestRing,
};

const RX_BUF: u64 = 0x10000;
const TX_BUF: u64 = 0x40000;

/// Host output that tests can inspect.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Host output whose reader went away.
struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    irq: EventFd,
    t: MmioTransport,
    rx: TestRing,
    tx: TestRing,
    out: Sink,
    next_rx: u64,
}

fn unprobed(cap: usize) -> Fixture {
    let mem = memory();
    let irq = irq();
    let out = Sink::default();
    let console = Console::with_pending_capacity(Box::new(out.clone()), cap);
    let t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(console));
    Fixture {
        mem,
        irq,
        t,
        rx: TestRing::new(0x1000, 16),
        tx: TestRing::new(0x2000, 16),
        out,
        next_rx: RX_BUF,
    }
}

fn console(cap: usize) -> Fixture {
    let mut f = unprobed(cap);
    f.probe();
    f
}

impl Fixture {
    fn probe(&mut self) {
        let st = linux_probe(&mut self.t, |o| o, &[&self.rx, &self.tx]);
        assert_ne!(st & status::DRIVER_OK, 0);
    }

    /// Posts a receive buffer of `len` bytes and notifies queue 0.
    fn post_rx(&mut self, len: u32) {
        self.rx.push_chain(&self.mem, &[(self.next_rx, len, true)]);
        self.next_rx += u64::from(len);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 0);
    }

    /// The bytes delivered into receive buffers since the last call.
    fn received(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for (head, len) in self.rx.take_used(&self.mem) {
            let addr = self
                .mem
                .read_obj::<u64>(GuestAddress(self.rx.desc + 16 * u64::from(head)));
            let mut buf = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut buf, GuestAddress(addr.unwrap()))
                .unwrap();
            out.extend(buf);
        }
        out
    }

    fn console(&mut self) -> &mut Console {
        self.t.device_mut().as_any_mut().downcast_mut().unwrap()
    }
}

fn all_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}

#[test]
fn console_transmits_guest_output_binary_safe() {
    let mut f = console(64);
    let data = all_bytes(700);
    f.mem
        .write_slice(&data[..300], GuestAddress(TX_BUF))
        .unwrap();
    f.mem
        .write_slice(&data[300..], GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    let head = f.tx.push_chain(
        &f.mem,
        &[(TX_BUF, 300, false), (TX_BUF + 0x1000, 400, false)],
    );
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.tx.take_used(&f.mem), vec![(u32::from(head), 0)]);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
    assert_eq!(*f.out.0.lock().unwrap(), data);
}

#[test]
fn console_delivers_input_into_posted_buffers() {
    let mut f = console(64);
    f.post_rx(64);
    // Nothing pending: the buffer stays with the device.
    assert!(f.rx.take_used(&f.mem).is_empty());
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    assert_eq!(f.t.console_push_input(b"hello\0\xff").unwrap(), 7);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
    assert_eq!(f.received(), b"hello\0\xff");
    assert_eq!(f.console().pending_len(), 0);
}

#[test]
fn console_input_larger_than_buffers_arrives_in_order_across_notifications() {
    let mut f = console(1024);
    f.post_rx(8);
    f.post_rx(8);
    let data = all_bytes(300);
    assert_eq!(f.t.console_push_input(&data).unwrap(), 300);
    let mut got = f.received();
    assert_eq!(got.len(), 16);
    assert_eq!(f.console().pending_len(), 284);
    while got.len() < data.len() {
        f.post_rx(100);
        assert_eq!(take_interrupt(&mut f.t, &f.irq), 1);
        got.extend(f.received());
    }
    assert_eq!(got, data);
    // A posted buffer with nothing pending waits for the next input.
    f.post_rx(100);
    assert!(f.received().is_empty());
    assert_eq!(f.t.console_push_input(b"z").unwrap(), 1);
    assert_eq!(f.received(), b"z");
}

#[test]
fn console_pending_cap_is_respected() {
    let mut f = console(16);
    assert_eq!(f.t.console_input_capacity().unwrap(), 16);
    assert_eq!(f.t.console_push_input(&all_bytes(40)).unwrap(), 16);
    assert_eq!(f.t.console_input_capacity().unwrap(), 0);
    assert_eq!(f.t.console_push_input(b"more").unwrap(), 0);
    f.post_rx(10);
    assert_eq!(f.received(), all_bytes(10));
    assert_eq!(f.t.console_input_capacity().unwrap(), 10);
    // Posted room plus pending room is accepted in one call.
    f.post_rx(8);
    assert_eq!(f.received(), all_bytes(16)[10..]);
    f.post_rx(8);
    assert_eq!(f.t.console_push_input(&[7u8; 40]).unwrap(), 24);
    assert_eq!(f.received(), [7u8; 8]);
    assert_eq!(f.console().pending_len(), 16);
}

#[test]
fn console_input_before_driver_ok_waits_for_buffers() {
    let mut f = unprobed(64);
    assert_eq!(f.t.console_push_input(b"early").unwrap(), 5);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    f.probe();
    f.post_rx(32);
    assert_eq!(f.received(), b"early");
}

#[test]
fn console_output_error_drops_bytes_and_keeps_the_queue_moving() {
    let mem = memory();
    let irq = irq();
    let console = Console::new(Box::new(BrokenPipe));
    let mut t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(console));
    let rx = TestRing::new(0x1000, 16);
    let mut tx = TestRing::new(0x2000, 16);
    linux_probe(&mut t, |o| o, &[&rx, &tx]);
    for _ in 0..2 {
        let head = tx.push_chain(&mem, &[(TX_BUF, 10, false)]);
        mmio_write(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(tx.take_used(&mem), vec![(u32::from(head), 0)]);
    }
    let c: &mut Console = t.device_mut().as_any_mut().downcast_mut().unwrap();
    assert_eq!(
        c.output_error().map(io::Error::kind),
        Some(io::ErrorKind::BrokenPipe)
    );
    assert_eq!(c.dropped_output_bytes(), 20);
}

#[test]
fn console_rejects_buffers_of_the_wrong_direction() {
    let mut f = console(64);
    let head =
        f.tx.push_chain(&f.mem, &[(TX_BUF, 4, false), (TX_BUF + 4, 4, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(f.tx.take_used(&f.mem), vec![(u32::from(head), 0)]);
    assert!(f.out.0.lock().unwrap().is_empty());

    let bad = f.rx.push_chain(&f.mem, &[(RX_BUF, 4, false)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 0);
    f.post_rx(8);
    assert_eq!(f.t.console_push_input(b"ok").unwrap(), 2);
    let used = f.rx.take_used(&f.mem);
    assert_eq!(used[0], (u32::from(bad), 0));
    assert_eq!(used[1].1, 2);
}

#[test]
fn console_config_space_is_zero() {
    let mut f = console(64);
    for offset in [0x100, 0x104, 0x108] {
        assert_eq!(mmio_read(&mut f.t, offset), 0);
    }
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        mmio_read(&mut f.t, reg::DEVICE_FEATURES),
        0,
        "no multiport, no size"
    );
}

#[test]
fn console_reset_keeps_pending_input_for_the_next_driver() {
    let mut f = console(64);
    assert_eq!(f.t.console_push_input(b"kept").unwrap(), 4);
    mmio_write(&mut f.t, reg::STATUS, 0);
    f.mem
        .write_slice(&[0u8; 0x2000], GuestAddress(0x1000))
        .unwrap();
    f.rx = TestRing::new(0x1000, 16);
    f.tx = TestRing::new(0x2000, 16);
    f.probe();
    f.post_rx(16);
    assert_eq!(f.received(), b"kept");
}

#[test]
fn console_save_restore_keeps_pending_input() {
    let mut f = console(64);
    f.post_rx(4);
    assert_eq!(f.t.console_push_input(b"abcdefgh").unwrap(), 8);
    assert_eq!(f.received(), b"abcd");
    let state = f.t.save().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioTransportState = serde_json::from_str(&json).unwrap();
    assert_eq!(
        state.device,
        DeviceState::Console(ConsoleState {
            pending: b"efgh".to_vec()
        })
    );
    let out = Sink::default();
    let fresh = Console::with_pending_capacity(Box::new(out), 64);
    f.t = MmioTransport::restore(
        f.mem.clone(),
        f.irq.try_clone().unwrap(),
        Box::new(fresh),
        &state,
    )
    .unwrap();
    f.post_rx(16);
    assert_eq!(f.received(), b"efgh");

    let small = Console::with_pending_capacity(Box::new(Sink::default()), 2);
    assert!(MmioTransport::restore(f.mem.clone(), irq(), Box::new(small), &state).is_err());
}

#[test]
fn console_broken_receive_ring_needs_reset_once_and_keeps_input() {
    let mut f = console(64);
    f.rx.set_avail_idx(&f.mem, 1000);
    assert_eq!(f.t.console_push_input(b"abc").unwrap(), 3);
    assert_ne!(
        mmio_read(&mut f.t, reg::STATUS) & status::DEVICE_NEEDS_RESET,
        0
    );
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 2);
    // Further input is queued without touching the broken ring again.
    assert_eq!(f.t.console_push_input(b"de").unwrap(), 2);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    assert_eq!(f.console().pending_len(), 5);
}
