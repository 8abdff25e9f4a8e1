//! Tests of virtio-console through the mmio transport and real rings,
//! driven the way the Linux 6.1 virtio_console driver drives it.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::mmio::{reg, MmioTransportArgs, MmioTransportState};
use crate::devices::virtio::status;
use crate::devices::virtio::testutil::{
    irq, linux_probe, memory, mmio_read, mmio_write, take_interrupt, TestRing,
};
use crate::devices::BusDevice;
use crate::persist::Persist;

const RX_BUF: u64 = 0x10000;
const TX_BUF: u64 = 0x40000;
const CTRL_RX_BUF: u64 = 0x80000;
const CTRL_TX_BUF: u64 = 0x90000;
/// Size of the control receive buffers the tests post.
const CTRL_RX_LEN: u32 = 256;
/// The id the driver puts in DEVICE_READY.
const BAD_ID: u32 = u32::MAX;

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

/// A control message as the driver sees it.
#[derive(Debug, PartialEq, Eq)]
struct Ctl {
    id: u32,
    event: u16,
    value: u16,
    payload: Vec<u8>,
}

fn ctl(event: u16, value: u16) -> Ctl {
    Ctl {
        id: 0,
        event,
        value,
        payload: Vec::new(),
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    irq: EventFd,
    t: MmioTransport,
    rx: TestRing,
    tx: TestRing,
    crx: TestRing,
    ctx: TestRing,
    out: Sink,
    next_rx: u64,
    next_crx: u64,
    next_ctx: u64,
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
        crx: TestRing::new(0x3000, 16),
        ctx: TestRing::new(0x4000, 16),
        out,
        next_rx: RX_BUF,
        next_crx: 0,
        next_ctx: 0,
    }
}

/// A console whose port 0 is set up and opened by the guest.
fn console(cap: usize) -> Fixture {
    let mut f = unprobed(cap);
    f.probe();
    f.handshake();
    f
}

/// The payloads of the used buffers of `ring` since the last call; each
/// chain is one descriptor.
fn used_payloads(mem: &GuestMemoryMmap, ring: &mut TestRing) -> Vec<Vec<u8>> {
    ring.take_used(mem)
        .into_iter()
        .map(|(head, len)| {
            let addr: u64 = mem
                .read_obj(GuestAddress(ring.desc + 16 * u64::from(head)))
                .unwrap();
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        })
        .collect()
}

impl Fixture {
    /// Probes as Linux does with all offered features, so with multiport.
    fn probe(&mut self) {
        let st = linux_probe(
            &mut self.t,
            |o| o,
            &[&self.rx, &self.tx, &self.crx, &self.ctx],
        );
        assert_ne!(st & status::DRIVER_OK, 0);
    }

    /// The driver's handshake: fill the control receive queue, DEVICE_READY,
    /// answer PORT_ADD with PORT_READY, then a process opens the port.
    fn handshake(&mut self) {
        self.post_control_rx(8);
        self.send_control(BAD_ID, event::DEVICE_READY, 1);
        assert_eq!(self.control_received(), vec![ctl(event::PORT_ADD, 1)]);
        self.send_control(0, event::PORT_READY, 1);
        assert_eq!(
            self.control_received(),
            vec![
                Ctl {
                    payload: b"sbxrun.control".to_vec(),
                    ..ctl(event::PORT_NAME, 1)
                },
                ctl(event::PORT_OPEN, 1),
            ]
        );
        self.send_control(0, event::PORT_OPEN, 1);
        assert!(self.control_received().is_empty());
        assert!(self.console().control_state().guest_connected);
        take_interrupt(&mut self.t, &self.irq);
    }

    /// Posts a receive buffer of `len` bytes and notifies queue 0.
    fn post_rx(&mut self, len: u32) {
        self.rx.push_chain(&self.mem, &[(self.next_rx, len, true)]);
        self.next_rx += u64::from(len);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 0);
    }

    /// The bytes delivered into receive buffers since the last call.
    fn received(&mut self) -> Vec<u8> {
        used_payloads(&self.mem, &mut self.rx).concat()
    }

    /// Posts `n` control receive buffers and notifies queue 2.
    fn post_control_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = CTRL_RX_BUF + u64::from(CTRL_RX_LEN) * (self.next_crx % 16);
            self.crx.push_chain(&self.mem, &[(addr, CTRL_RX_LEN, true)]);
            self.next_crx += 1;
        }
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 2);
    }

    /// Control messages the device sent since the last call.
    fn control_received(&mut self) -> Vec<Ctl> {
        used_payloads(&self.mem, &mut self.crx)
            .into_iter()
            .map(|raw| Ctl {
                id: u32::from_le_bytes(raw[0..4].try_into().unwrap()),
                event: u16::from_le_bytes(raw[4..6].try_into().unwrap()),
                value: u16::from_le_bytes(raw[6..8].try_into().unwrap()),
                payload: raw[8..].to_vec(),
            })
            .collect()
    }

    /// Sends `raw` as one device-readable buffer on the control transmit
    /// queue; the device must give it back at once, as the driver spins on
    /// that.
    fn send_control_raw(&mut self, raw: &[u8]) {
        let addr = CTRL_TX_BUF + 64 * (self.next_ctx % 16);
        self.next_ctx += 1;
        self.mem.write_slice(raw, GuestAddress(addr)).unwrap();
        let head = self
            .ctx
            .push_chain(&self.mem, &[(addr, raw.len() as u32, false)]);
        mmio_write(&mut self.t, reg::QUEUE_NOTIFY, 3);
        assert_eq!(self.ctx.take_used(&self.mem), vec![(u32::from(head), 0)]);
    }

    fn send_control(&mut self, id: u32, event: u16, value: u16) {
        let mut raw = Vec::new();
        raw.extend_from_slice(&id.to_le_bytes());
        raw.extend_from_slice(&event.to_le_bytes());
        raw.extend_from_slice(&value.to_le_bytes());
        self.send_control_raw(&raw);
    }

    fn console(&mut self) -> &mut Console {
        self.t.device_mut().as_any_mut().downcast_mut().unwrap()
    }

    /// Saves the transport through JSON and restores it around a fresh
    /// console with a new sink.
    fn save_and_restore(&mut self, cap: usize) -> MmioTransportState {
        let state = self.t.save().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let state: MmioTransportState = serde_json::from_str(&json).unwrap();
        self.out = Sink::default();
        let fresh = Console::with_pending_capacity(Box::new(self.out.clone()), cap);
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

fn all_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}

#[test]
fn console_offers_multiport_with_exactly_one_port() {
    let mut f = unprobed(64);
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 0);
    let low = mmio_read(&mut f.t, reg::DEVICE_FEATURES);
    assert_eq!(low, 1 << F_MULTIPORT, "multiport, no size, no emerg_wr");
    mmio_write(&mut f.t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(mmio_read(&mut f.t, reg::DEVICE_FEATURES), 1, "VERSION_1");
    assert_eq!(mmio_read(&mut f.t, reg::QUEUE_NUM_MAX), 256);
    assert_eq!(mmio_read(&mut f.t, 0x100), 0, "cols and rows");
    assert_eq!(mmio_read(&mut f.t, 0x104), 1, "max_nr_ports");
    assert_eq!(mmio_read(&mut f.t, 0x108), 0, "emerg_wr");
    // The driver reads max_nr_ports with a 4-byte access; a 2-byte one at
    // the upper half sees zero.
    let mut half = [0xffu8; 2];
    f.t.read(0x106, &mut half);
    assert_eq!(half, [0, 0]);
}

#[test]
fn console_handshake_adds_one_generic_named_port() {
    let mut f = unprobed(64);
    f.probe();
    f.post_control_rx(8);
    // Nothing is said before the driver is ready.
    assert!(f.control_received().is_empty());
    f.handshake();
    assert_eq!(
        f.console().control_state(),
        ControlState {
            device_ready: true,
            port_added: true,
            port_ready: true,
            name_sent: true,
            host_open_sent: true,
            guest_connected: true,
        }
    );
    // No CONSOLE_PORT ever went out (handshake() checks every message),
    // and nothing more is said once it is done.
    f.post_control_rx(4);
    assert!(f.control_received().is_empty());
}

#[test]
fn console_control_messages_wait_for_receive_buffers() {
    let mut f = unprobed(64);
    f.probe();
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    assert!(f.control_received().is_empty());
    f.post_control_rx(1);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_ADD, 1)]);
    // PORT_READY earns two messages, each waiting for its own buffer.
    f.send_control(0, event::PORT_READY, 1);
    assert!(f.control_received().is_empty());
    f.post_control_rx(1);
    assert_eq!(f.control_received()[0].event, event::PORT_NAME);
    f.post_control_rx(1);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_OPEN, 1)]);
}

#[test]
fn console_control_buffer_too_small_is_given_back_empty() {
    let mut f = unprobed(64);
    f.probe();
    f.crx.push_chain(&f.mem, &[(CTRL_RX_BUF, 4, true)]);
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    assert_eq!(f.crx.take_used(&f.mem), vec![(0, 0)]);
    // A device-readable one is refused as well.
    f.crx.push_chain(&f.mem, &[(CTRL_RX_BUF, 64, false)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 2);
    assert_eq!(f.crx.take_used(&f.mem), vec![(1, 0)]);
    assert!(!f.console().control_state().port_added);
    f.next_crx = 2;
    f.post_control_rx(1);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_ADD, 1)]);
}

#[test]
fn console_ignores_hostile_control_messages() {
    let mut f = unprobed(64);
    f.probe();
    f.post_control_rx(8);
    let fresh = f.console().control_state();
    // Out of order: no port yet, so neither ready nor open means anything.
    f.send_control(0, event::PORT_READY, 1);
    f.send_control(0, event::PORT_OPEN, 1);
    // Bad values and lengths.
    f.send_control(BAD_ID, event::DEVICE_READY, 7);
    f.send_control_raw(&[0, 0, 0, 0]);
    let mut long = BAD_ID.to_le_bytes().to_vec();
    long.extend_from_slice(&[0, 0, 1, 0, 9, 9, 9, 9]);
    f.send_control_raw(&long);
    // A control buffer the device is asked to write into.
    let head = f.ctx.push_chain(&f.mem, &[(CTRL_TX_BUF, 8, true)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 3);
    assert_eq!(f.ctx.take_used(&f.mem), vec![(u32::from(head), 0)]);
    assert_eq!(f.console().control_state(), fresh);
    assert!(f.control_received().is_empty());

    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_ADD, 1)]);
    let added = f.console().control_state();
    // Unknown ports, device-only events, unknown events, bad values.
    f.send_control(1, event::PORT_READY, 1);
    f.send_control(BAD_ID, event::PORT_READY, 1);
    f.send_control(0, event::PORT_OPEN, 1);
    for e in [
        event::PORT_ADD,
        event::PORT_REMOVE,
        event::CONSOLE_PORT,
        event::RESIZE,
        event::PORT_NAME,
        8,
        u16::MAX,
    ] {
        f.send_control(0, e, 1);
    }
    f.send_control(0, event::PORT_READY, 2);
    assert_eq!(f.console().control_state(), added);
    assert!(f.control_received().is_empty());

    f.send_control(0, event::PORT_READY, 1);
    assert_eq!(f.control_received().len(), 2);
    f.send_control(0, event::PORT_OPEN, 2);
    f.send_control(7, event::PORT_OPEN, 1);
    assert!(!f.console().control_state().guest_connected);
    // The device is still fine: a proper open works.
    f.send_control(0, event::PORT_OPEN, 1);
    assert!(f.console().control_state().guest_connected);
    assert_eq!(
        mmio_read(&mut f.t, reg::STATUS) & status::DEVICE_NEEDS_RESET,
        0
    );
}

#[test]
fn console_holds_input_until_the_guest_opens_the_port() {
    let mut f = unprobed(64);
    f.probe();
    f.post_control_rx(8);
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    f.send_control(0, event::PORT_READY, 1);
    f.post_rx(32);
    assert_eq!(f.t.console_push_input(b"early").unwrap(), 5);
    assert!(f.received().is_empty(), "the driver would drop it");
    f.send_control(0, event::PORT_OPEN, 1);
    assert_eq!(f.received(), b"early");
    // Closed again: input waits for the next open.
    f.send_control(0, event::PORT_OPEN, 0);
    f.post_rx(32);
    assert_eq!(f.t.console_push_input(b"later").unwrap(), 5);
    assert!(f.received().is_empty());
    f.send_control(0, event::PORT_OPEN, 1);
    assert_eq!(f.received(), b"later");
}

#[test]
fn console_repeated_port_ready_announces_the_host_again() {
    let mut f = console(64);
    f.post_control_rx(4);
    f.send_control(0, event::PORT_READY, 1);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_OPEN, 1)]);
    // A driver that lost the port is told nothing more until ready again.
    f.send_control(0, event::PORT_READY, 0);
    assert!(!f.console().control_state().guest_connected);
    assert!(f.control_received().is_empty());
}

#[test]
fn console_transmits_guest_output_binary_safe() {
    let mut f = console(64);
    let data = all_bytes(40_000);
    f.mem
        .write_slice(&data[..300], GuestAddress(TX_BUF))
        .unwrap();
    f.mem
        .write_slice(&data[300..], GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    let head = f.tx.push_chain(
        &f.mem,
        &[(TX_BUF, 300, false), (TX_BUF + 0x1000, 39_700, false)],
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
fn console_input_before_driver_ok_waits_for_the_open_port() {
    let mut f = unprobed(64);
    assert_eq!(f.t.console_push_input(b"early").unwrap(), 5);
    assert_eq!(take_interrupt(&mut f.t, &f.irq), 0);
    f.probe();
    f.post_rx(32);
    assert!(f.received().is_empty());
    f.handshake();
    assert_eq!(f.received(), b"early");
}

#[test]
fn console_without_multiport_is_one_open_console_port() {
    let mut f = unprobed(64);
    let st = linux_probe(
        &mut f.t,
        |o| o & !features::bit(F_MULTIPORT),
        &[&f.rx, &f.tx],
    );
    assert_ne!(st & status::DRIVER_OK, 0);
    f.post_rx(32);
    assert_eq!(f.t.console_push_input(b"legacy").unwrap(), 6);
    assert_eq!(f.received(), b"legacy");
    // The control queues are not the driver's: a notify does nothing.
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 3);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 2);
    assert_eq!(f.console().control_state(), ControlState::default());
}

#[test]
fn console_output_error_drops_bytes_and_keeps_the_queue_moving() {
    let mem = memory();
    let irq = irq();
    let console = Console::new(Box::new(BrokenPipe));
    let mut t = MmioTransport::new(mem.clone(), irq.try_clone().unwrap(), Box::new(console));
    let rings = [0x1000, 0x2000, 0x3000, 0x4000].map(|base| TestRing::new(base, 16));
    let [rx, mut tx, crx, ctx] = rings;
    linux_probe(&mut t, |o| o, &[&rx, &tx, &crx, &ctx]);
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
fn console_reset_keeps_pending_input_and_restarts_the_handshake() {
    let mut f = console(64);
    assert_eq!(f.t.console_push_input(b"kept").unwrap(), 4);
    mmio_write(&mut f.t, reg::STATUS, 0);
    assert_eq!(f.console().control_state(), ControlState::default());
    f.mem
        .write_slice(&[0u8; 0x4000], GuestAddress(0x1000))
        .unwrap();
    f.rx = TestRing::new(0x1000, 16);
    f.tx = TestRing::new(0x2000, 16);
    f.crx = TestRing::new(0x3000, 16);
    f.ctx = TestRing::new(0x4000, 16);
    f.probe();
    f.post_rx(16);
    assert!(f.received().is_empty());
    f.handshake();
    assert_eq!(f.received(), b"kept");
}

#[test]
fn console_save_restore_mid_conversation_needs_no_new_handshake() {
    let mut f = console(64);
    f.post_rx(4);
    assert_eq!(f.t.console_push_input(b"abcdefgh").unwrap(), 8);
    assert_eq!(f.received(), b"abcd");
    let state = f.save_and_restore(64);
    let DeviceState::Console(saved) = &state.device else {
        panic!("not a console state: {:?}", state.device);
    };
    assert_eq!(saved.pending, b"efgh");
    assert!(saved.control.guest_connected);
    assert_eq!(f.console().control_state(), saved.control);
    // Restoring says nothing to the driver.
    f.post_control_rx(2);
    assert!(f.control_received().is_empty());
    // Both directions carry on.
    f.post_rx(16);
    assert_eq!(f.received(), b"efgh");
    assert_eq!(f.t.console_push_input(b"ij").unwrap(), 2);
    f.post_rx(16);
    assert_eq!(f.received(), b"ij");
    f.mem.write_slice(b"out", GuestAddress(TX_BUF)).unwrap();
    f.tx.push_chain(&f.mem, &[(TX_BUF, 3, false)]);
    mmio_write(&mut f.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(*f.out.0.lock().unwrap(), b"out");

    let small = Console::with_pending_capacity(Box::new(Sink::default()), 2);
    assert!(MmioTransport::restore(
        MmioTransportArgs {
            mem: f.mem.clone(),
            interrupt: irq(),
            device: Box::new(small)
        },
        &state
    )
    .is_err());
}

#[test]
fn console_save_restore_mid_handshake_carries_on() {
    let mut f = unprobed(64);
    f.probe();
    // DEVICE_READY with no control buffer posted: PORT_ADD is owed.
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    f.save_and_restore(64);
    f.post_control_rx(4);
    assert_eq!(f.control_received(), vec![ctl(event::PORT_ADD, 1)]);
    // Owed messages go out as soon as the restored device is live.
    f.send_control(0, event::PORT_READY, 1);
    assert_eq!(f.control_received().len(), 2);
    f.send_control(0, event::PORT_OPEN, 1);
    f.post_rx(8);
    assert_eq!(f.t.console_push_input(b"go").unwrap(), 2);
    assert_eq!(f.received(), b"go");
}

#[test]
fn console_restore_sends_what_was_owed_into_posted_buffers() {
    let mut f = unprobed(64);
    f.probe();
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    let state = f.t.save().unwrap();
    // The driver posts a buffer while the device is saved, before the
    // restored one ever sees a notify.
    f.crx
        .push_chain(&f.mem, &[(CTRL_RX_BUF, CTRL_RX_LEN, true)]);
    let fresh = Console::with_pending_capacity(Box::new(Sink::default()), 64);
    f.t = MmioTransport::restore(
        MmioTransportArgs {
            mem: f.mem.clone(),
            interrupt: irq(),
            device: Box::new(fresh),
        },
        &state,
    )
    .unwrap();
    assert_eq!(f.control_received(), vec![ctl(event::PORT_ADD, 1)]);
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

#[test]
fn console_broken_control_ring_needs_reset() {
    let mut f = unprobed(64);
    f.probe();
    f.crx.set_avail_idx(&f.mem, 1000);
    f.send_control(BAD_ID, event::DEVICE_READY, 1);
    assert_ne!(
        mmio_read(&mut f.t, reg::STATUS) & status::DEVICE_NEEDS_RESET,
        0
    );
    assert!(!f.console().control_state().port_added);
}
