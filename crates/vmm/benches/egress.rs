//! Host-side cost of the VMM's userspace network stack (`vmm::net`): TCP
//! throughput both ways, connection setup and DNS latency, heap per open
//! connection, and what a flood of denied SYNs costs. Prints tables;
//! asserts nothing.
//!
//! A second smoltcp interface plays the guest, wired back to back with the
//! [`NetStack`] in one busy loop on this thread, as the unit tests' harness
//! does, but on the real clock. The broker connects for real to servers on
//! 127.0.0.1 (an allow rule for 127.0.0.0/8 reaches them directly). The
//! guest's own smoltcp runs in the same loop, so wall-clock figures include
//! it and the loop; the "in NetStack" figures count only the time spent in
//! `NetStack::handle` and `NetStack::poll_once`. The broker's `connect` is
//! done between those calls, as the runner does it in another process, and
//! is timed on its own.
//!
//! Heap figures come from a counting global allocator (live bytes of the
//! whole process, and their high-water mark). While they are read no other
//! thread allocates, and the bench's own queues and guest sockets were
//! allocated before the first reading, so the differences are the stack's.
//!
//! Knobs (environment): SBXRUN_BENCH_EGRESS_MB (MiB per throughput run,
//! default 64), SBXRUN_BENCH_EGRESS_RUNS (throughput runs per direction,
//! default 5), SBXRUN_BENCH_EGRESS_CONNECTS (timed connections, default
//! 1000), SBXRUN_BENCH_EGRESS_DNS (timed queries, default 2000),
//! SBXRUN_BENCH_EGRESS_IDLE (idle connections held open for the heap
//! figure, default 100; the stack takes at most 256), SBXRUN_BENCH_EGRESS_SYNS
//! (denied SYNs, default 10000).
//!
//! Run: `cargo bench -p sbxrun-vmm --bench egress`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sbxrun_egress::{EgressEvent, EgressPolicy, PolicyRule, RuleHost};
use sbxrun_vmm::net::{
    BrokerClient, BrokerReply, GuestPort, NetInput, NetStack, DNS_PORT, GATEWAY_IP, GATEWAY_MAC,
    GUEST_IP, GUEST_MAC, MTU, PREFIX_LEN,
};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress,
    IpCidr, IpEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber,
};

// ---------------------------------------------------------------------------
// Counting allocator

/// Live heap bytes of the process.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE` reached since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `System`, plus the two counters above.
struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

fn live() -> usize {
    LIVE.load(Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

fn peak() -> usize {
    PEAK.load(Relaxed)
}

// SAFETY: every method hands its arguments unchanged to `System` and returns
// what `System` returned, so `System`'s guarantees are this allocator's;
// the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `alloc`'s contract for `layout`.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `alloc_zeroed`'s contract for `layout`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller keeps `realloc`'s contract
        // for `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        new
    }
}

// ---------------------------------------------------------------------------
// The guest, the broker and the loop that wires them to the stack

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// A public address no rule allows: the target of the SYN flood.
const DENIED: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
/// The name the DNS figures resolve, to 127.0.0.1.
const NAME: &str = "svc.bench";
/// Room reserved up front in every bench-side queue, so that they do not
/// grow while heap is being measured.
const QUEUE_ROOM: usize = 1024;
/// How long any single wait may take before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts up to `n` connections on `listener` and returns them if `keep`
/// (else each is closed at once). Gives up after [`PATIENCE`], so that a
/// connection that never comes cannot hang the bench; that is why it polls
/// instead of blocking. Allocates nothing after its first line.
fn accept_n(listener: &TcpListener, n: usize, keep: bool) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(if keep { n } else { 0 });
    let deadline = Instant::now() + PATIENCE;
    let _ = listener.set_nonblocking(true);
    let mut accepted = 0;
    while accepted < n && Instant::now() < deadline {
        match listener.accept() {
            Ok((conn, _)) => {
                accepted += 1;
                if keep {
                    held.push(conn);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    held
}

/// A listener on 127.0.0.1 and its port.
fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// Loopback by address, and [`NAME`] by name.
fn policy() -> EgressPolicy {
    let rule = |host| PolicyRule { host, port: None };
    EgressPolicy::Allow(vec![
        rule(RuleHost::Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        }),
        rule(RuleHost::Domain(NAME.to_owned())),
    ])
}

/// A shared queue that never shrinks; `Send` is all the traits ask for.
type Queue<T> = Arc<Mutex<VecDeque<T>>>;

fn queue<T>() -> Queue<T> {
    Arc::new(Mutex::new(VecDeque::with_capacity(QUEUE_ROOM)))
}

fn pop<T>(q: &Queue<T>) -> Option<T> {
    lock(q).pop_front()
}

/// Frames the stack handed to the guest.
struct Port(Queue<Vec<u8>>);

impl GuestPort for Port {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        // The copy stands for the one into the guest's receive buffer.
        lock(&self.0).push_back(frame.to_vec());
        true
    }
}

/// A connect the stack asked for, done by [`Link`] outside the stack's
/// calls: the runner's broker does it in another process.
struct ConnectRequest {
    id: u64,
    addr: SocketAddr,
}

struct Broker {
    connects: Queue<ConnectRequest>,
    replies: Queue<NetInput>,
    events: Arc<AtomicUsize>,
}

impl BrokerClient for Broker {
    fn resolve(&mut self, id: u64, name: &str) {
        // An operator pin (`--resolve`), so loopback survives the
        // rebinding filter.
        let result = if name == NAME {
            Ok((vec![IpAddr::V4(LOCALHOST)], true))
        } else {
            Err(format!("{name}: unknown"))
        };
        lock(&self.replies).push_back(NetInput::Broker(BrokerReply::Resolved { id, result }));
    }

    fn connect(&mut self, id: u64, ip: IpAddr, port: u16, _names: &[String]) {
        lock(&self.connects).push_back(ConnectRequest {
            id,
            addr: SocketAddr::new(ip, port),
        });
    }

    fn event(&mut self, _event: EgressEvent) {
        // Counted and dropped: the runner's event log is not ours to measure.
        self.events.fetch_add(1, Relaxed);
    }
}

/// The guest's side of the wire.
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

impl phy::Device for Wire {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = None;
        // The guest computes checksums (the stack checks them) but does not
        // verify the stack's: that would be guest work counted as ours.
        let mut checksums = ChecksumCapabilities::default();
        checksums.ipv4 = Checksum::Tx;
        checksums.tcp = Checksum::Tx;
        checksums.udp = Checksum::Tx;
        caps.checksum = checksums;
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}

/// The stack and a guest, back to back.
struct Link {
    stack: NetStack,
    replies: Queue<NetInput>,
    connects: Queue<ConnectRequest>,
    to_guest: Queue<Vec<u8>>,
    events: Arc<AtomicUsize>,
    guest: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    start: Instant,
    next_port: u16,
    /// Time spent inside `NetStack::handle` and `NetStack::poll_once`.
    in_stack: Duration,
    /// Time spent in the broker's `TcpStream::connect`.
    in_connect: Duration,
    /// Heap the stack took when it was created and given its policy.
    fresh_heap: usize,
}

impl Link {
    /// A stack under [`policy`] and a guest with room for `guest_sockets`.
    fn new(guest_sockets: usize) -> Self {
        let start = Instant::now();
        let replies = queue();
        let connects = queue();
        let to_guest = queue();
        let events = Arc::new(AtomicUsize::new(0));
        let broker = Broker {
            connects: Arc::clone(&connects),
            replies: Arc::clone(&replies),
            events: Arc::clone(&events),
        };
        // The stack owns these three, so they count as its heap.
        let before = live();
        let port = Box::new(Port(Arc::clone(&to_guest)));
        let broker = Box::new(broker);
        let policy = policy();
        let mut stack = NetStack::new(port, broker, start);
        stack.handle(
            NetInput::SetPolicy {
                policy,
                step_started: start,
            },
            start,
        );
        let fresh_heap = live().saturating_sub(before);
        let mut wire = Wire {
            rx: VecDeque::with_capacity(QUEUE_ROOM),
            tx: Vec::with_capacity(QUEUE_ROOM),
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut guest = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        guest.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), PREFIX_LEN));
        });
        let _ = guest.routes_mut().add_default_ipv4_route(GATEWAY_IP);
        Link {
            stack,
            replies,
            connects,
            to_guest,
            events,
            guest,
            wire,
            sockets: SocketSet::new(Vec::with_capacity(guest_sockets)),
            start,
            next_port: 49152,
            in_stack: Duration::ZERO,
            in_connect: Duration::ZERO,
            fresh_heap,
        }
    }

    fn guest_clock(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.start).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// One round: the guest sends, the stack takes its frames, the broker
    /// connects, the stack takes the replies and polls, the guest receives.
    /// Returns whether any frame moved.
    fn step(&mut self) -> bool {
        let now = Instant::now();
        self.guest
            .poll(self.guest_clock(now), &mut self.wire, &mut self.sockets);
        let mut moved = !self.wire.tx.is_empty();
        let t = Instant::now();
        for frame in self.wire.tx.drain(..) {
            self.stack.handle(NetInput::GuestFrame(frame), t);
        }
        let mut spent = t.elapsed();
        while let Some(request) = pop(&self.connects) {
            let t = Instant::now();
            // What the runner's broker does, minus passing the descriptor:
            // a blocking connect, then non-blocking for the stack.
            let result = TcpStream::connect_timeout(&request.addr, Duration::from_secs(5))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| e.to_string());
            self.in_connect += t.elapsed();
            lock(&self.replies).push_back(NetInput::Broker(BrokerReply::Connected {
                id: request.id,
                result,
            }));
        }
        let t = Instant::now();
        while let Some(input) = pop(&self.replies) {
            self.stack.handle(input, t);
        }
        self.stack.poll_once(t);
        let done = Instant::now();
        spent += done - t;
        self.in_stack += spent;
        {
            let mut frames = lock(&self.to_guest);
            moved |= !frames.is_empty();
            self.wire.rx.extend(frames.drain(..));
        }
        self.guest
            .poll(self.guest_clock(done), &mut self.wire, &mut self.sockets);
        moved
    }

    /// Steps until `done` holds; false if that took longer than `limit`.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if Instant::now() > deadline {
                return false;
            }
            if !self.step() {
                // Nothing moved: let the server threads have the core.
                std::thread::yield_now();
            }
        }
        true
    }

    /// Steps for `d` of wall time, so delayed ACKs and the like settle.
    fn settle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        self.run_until(d + Duration::from_secs(1), |_| Instant::now() > until);
    }

    /// A closed guest TCP socket with the given buffer sizes.
    fn add_tcp(&mut self, rx: usize, tx: usize) -> SocketHandle {
        self.sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        ))
    }

    /// Starts a connect from a fresh local port (a port is reused only
    /// after 16,000 others, long after its connection was reaped).
    fn connect(&mut self, handle: SocketHandle, ip: Ipv4Addr, port: u16) {
        let local = self.next_port;
        self.next_port = if local == u16::MAX { 49152 } else { local + 1 };
        let cx = self.guest.context();
        let sock = self.sockets.get_mut::<tcp::Socket>(handle);
        // A refused connect leaves the socket closed; the wait reports it.
        let _ = sock.connect(cx, IpEndpoint::new(IpAddress::Ipv4(ip), port), local);
    }

    fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }
}

/// A standard recursive query for the A record of `name`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for field in [id, 0x0100, 1, 0, 0, 0] {
        q.extend_from_slice(&field.to_be_bytes());
    }
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&1u16.to_be_bytes()); // A
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

/// A guest SYN to `dst:dst_port` from `src_port`, built by hand: the flood
/// bypasses the guest interface, which would want a socket per SYN.
fn syn_frame(src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let checksums = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(i32::from(src_port).wrapping_mul(7919)),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: true,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + ip.buffer_len() + ip.payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &checksums);
    let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
    tcp.emit(
        &mut segment,
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        &checksums,
    );
    frame
}

// ---------------------------------------------------------------------------
// Measurements

/// One bulk transfer.
struct Transfer {
    bytes: u64,
    wall: Duration,
    in_stack: Duration,
    complete: bool,
}

/// Guest → a server on 127.0.0.1 that counts bytes, timed from the guest's
/// connect until the server has them all.
fn upload(bytes: u64) -> Transfer {
    let (listener, port) = listen();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let server = std::thread::spawn(move || {
        let Some(mut conn) = accept_n(&listener, 1, true).pop() else {
            return;
        };
        let mut buf = vec![0; 256 * 1024];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            counter.fetch_add(n as u64, Relaxed);
        }
    });
    let mut link = Link::new(1);
    // Big enough that the guest always has the next window's worth ready.
    let sock = link.add_tcp(64 * 1024, 1024 * 1024);
    let chunk = vec![0x5a; 64 * 1024];
    let mut sent = 0u64;
    let t = Instant::now();
    link.connect(sock, LOCALHOST, port);
    let complete = link.run_until(PATIENCE, |link| {
        let s = link.tcp(sock);
        while sent < bytes && s.can_send() {
            let left = usize::try_from(bytes - sent).unwrap_or(usize::MAX);
            match s.send_slice(&chunk[..chunk.len().min(left)]) {
                Ok(n @ 1..) => sent += n as u64,
                _ => break,
            }
        }
        received.load(Relaxed) >= bytes
    });
    let wall = t.elapsed();
    let in_stack = link.in_stack;
    link.tcp(sock).close();
    link.run_until(Duration::from_secs(5), |l| l.stack.connection_count() == 0);
    drop(link);
    let _ = server.join();
    Transfer {
        bytes: received.load(Relaxed),
        wall,
        in_stack,
        complete,
    }
}

/// A server on 127.0.0.1 that writes `bytes` → the guest, timed from the
/// guest's connect until it has read them all.
fn download(bytes: u64) -> Transfer {
    let (listener, port) = listen();
    let server = std::thread::spawn(move || {
        let Some(mut conn) = accept_n(&listener, 1, true).pop() else {
            return;
        };
        let chunk = vec![0xa5; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            if conn.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = conn.shutdown(Shutdown::Write);
        // Hold the socket until the guest closes, so no reset cuts the tail.
        let _ = conn.read(&mut [0; 1]);
    });
    let mut link = Link::new(1);
    // A Linux guest's receive buffer is this order of size.
    let sock = link.add_tcp(1024 * 1024, 4 * 1024);
    let mut got = 0u64;
    let mut buf = vec![0; 64 * 1024];
    let t = Instant::now();
    link.connect(sock, LOCALHOST, port);
    let complete = link.run_until(PATIENCE, |link| {
        let s = link.tcp(sock);
        while let Ok(n @ 1..) = s.recv_slice(&mut buf) {
            got += n as u64;
        }
        got >= bytes
    });
    let wall = t.elapsed();
    let in_stack = link.in_stack;
    link.tcp(sock).close();
    link.run_until(Duration::from_secs(5), |l| l.stack.connection_count() == 0);
    drop(link);
    let _ = server.join();
    Transfer {
        bytes: got,
        wall,
        in_stack,
        complete,
    }
}

/// Connect → established, one connection at a time.
struct Setup {
    wall: Vec<Duration>,
    broker_connect: Vec<Duration>,
    in_stack: Vec<Duration>,
    failed: usize,
}

/// The first connections of a link also pay for ARP; they are not timed.
const WARMUP: usize = 5;

fn connect_latency(n: usize) -> Setup {
    let (listener, port) = listen();
    let total = n + WARMUP;
    // Held open until the end: the guest closes first, as clients do, so
    // TIME_WAIT stays on the broker's side of loopback.
    let server = std::thread::spawn(move || accept_n(&listener, total, true));
    let mut link = Link::new(1);
    let mut setup = Setup {
        wall: Vec::with_capacity(n),
        broker_connect: Vec::with_capacity(n),
        in_stack: Vec::with_capacity(n),
        failed: 0,
    };
    for i in 0..total {
        let sock = link.add_tcp(4096, 4096);
        let (stack0, connect0) = (link.in_stack, link.in_connect);
        let t = Instant::now();
        link.connect(sock, LOCALHOST, port);
        let up = link.run_until(Duration::from_secs(10), |l| {
            matches!(
                l.tcp(sock).state(),
                tcp::State::Established | tcp::State::Closed
            )
        }) && link.tcp(sock).state() == tcp::State::Established;
        let wall = t.elapsed();
        if i >= WARMUP {
            if up {
                setup.wall.push(wall);
                setup.broker_connect.push(link.in_connect - connect0);
                setup.in_stack.push(link.in_stack - stack0);
            } else {
                setup.failed += 1;
            }
        }
        link.tcp(sock).abort();
        link.run_until(Duration::from_secs(10), |l| l.stack.connection_count() == 0);
        link.sockets.remove(sock);
    }
    drop(link);
    let _ = server.join();
    setup
}

/// Query → answer for an allowed name, one query at a time.
struct Lookups {
    wall: Vec<Duration>,
    in_stack: Vec<Duration>,
    /// Answers other than NOERROR, and queries with no answer.
    failed: usize,
}

fn dns_latency(n: usize) -> Lookups {
    let mut link = Link::new(1);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let mut sock = udp::Socket::new(buf(), buf());
    let _ = sock.bind(40000);
    let sock = link.sockets.add(sock);
    let server = IpEndpoint::new(IpAddress::Ipv4(GATEWAY_IP), DNS_PORT);
    let mut lookups = Lookups {
        wall: Vec::with_capacity(n),
        in_stack: Vec::with_capacity(n),
        failed: 0,
    };
    for i in 0..n + WARMUP {
        let query = dns_query(u16::try_from(i % 65536).unwrap_or(0), NAME);
        let stack0 = link.in_stack;
        let t = Instant::now();
        let _ = link
            .sockets
            .get_mut::<udp::Socket>(sock)
            .send_slice(&query, server);
        let mut ok = false;
        let answered = link.run_until(Duration::from_secs(10), |l| {
            match l.sockets.get_mut::<udp::Socket>(sock).recv() {
                Ok((answer, _)) => {
                    ok = answer.len() > 3 && answer[3] & 0xf == 0;
                    true
                }
                Err(_) => false,
            }
        });
        let wall = t.elapsed();
        if i < WARMUP {
            continue;
        }
        if answered && ok {
            lookups.wall.push(wall);
            lookups.in_stack.push(link.in_stack - stack0);
        } else {
            lookups.failed += 1;
        }
    }
    lookups
}

/// Heap held by the stack, in bytes.
struct Memory {
    fresh: usize,
    idle: usize,
    established: usize,
    /// Growth from the empty stack with every connection up.
    open: usize,
    /// The highest growth while they were being opened.
    opening_peak: usize,
    /// Growth left once every connection was closed and reaped.
    after_close: usize,
}

fn memory(idle: usize) -> Memory {
    let (listener, port) = listen();
    // The upstream ends stay open until the heap was read.
    let server = std::thread::spawn(move || accept_n(&listener, idle, true));
    let mut link = Link::new(idle);
    // The guest's sockets exist before the first reading; connecting them
    // allocates nothing on the guest's side.
    let socks: Vec<SocketHandle> = (0..idle).map(|_| link.add_tcp(4096, 4096)).collect();
    link.settle(Duration::from_millis(20));
    let base = live();
    reset_peak();
    for &sock in &socks {
        link.connect(sock, LOCALHOST, port);
    }
    link.run_until(PATIENCE, |l| {
        l.stack.connection_count() == idle
            && socks
                .iter()
                .all(|&s| l.tcp(s).state() == tcp::State::Established)
    });
    // Idle: let the last ACKs and any delayed ones go out.
    link.settle(Duration::from_millis(100));
    let established = socks
        .iter()
        .filter(|&&s| link.tcp(s).state() == tcp::State::Established)
        .count();
    let open = live().saturating_sub(base);
    let opening_peak = peak().saturating_sub(base);
    let held = server.join().unwrap_or_default();
    for &sock in &socks {
        link.tcp(sock).abort();
    }
    link.run_until(PATIENCE, |l| l.stack.connection_count() == 0);
    link.settle(Duration::from_millis(20));
    let after_close = live().saturating_sub(base);
    drop(held);
    Memory {
        fresh: link.fresh_heap,
        idle,
        established,
        open,
        opening_peak,
        after_close,
    }
}

/// SYNs to an address no rule allows, handed to the stack in batches as
/// the net thread hands it what the guest queued.
struct Flood {
    syns: usize,
    events: usize,
    resets: usize,
    /// Time in the stack per SYN, one sample per batch.
    per_syn: Vec<Duration>,
    total_in_stack: Duration,
    heap_before: usize,
    heap_after: usize,
    peak_growth: usize,
}

const FLOOD_BATCH: usize = 64;

fn flood(syns: usize) -> Flood {
    let mut link = Link::new(1);
    let mut batch = Vec::with_capacity(FLOOD_BATCH);
    let mut per_syn = Vec::with_capacity(syns / FLOOD_BATCH + 1);
    let mut total_in_stack = Duration::ZERO;
    let mut resets = 0;
    // One denied connect through the guest first: its ARP request teaches
    // the gateway the guest's MAC, without which smoltcp would drop the
    // resets instead of sending them.
    let sock = link.add_tcp(1024, 1024);
    link.connect(sock, DENIED, 443);
    link.run_until(Duration::from_secs(10), |l| {
        l.tcp(sock).state() == tcp::State::Closed
    });
    // Then one untimed batch, so that what the stack allocates once (its
    // frame queues) is there before the reading.
    let now = Instant::now();
    for port in 0..FLOOD_BATCH {
        let port = u16::try_from(port).unwrap_or(0);
        let frame = syn_frame(61_000 + port, DENIED, 443);
        link.stack.handle(NetInput::GuestFrame(frame), now);
    }
    link.stack.poll_once(now);
    lock(&link.to_guest).clear();
    let events0 = link.events.load(Relaxed);
    let heap_before = live();
    reset_peak();
    let mut sent = 0;
    while sent < syns {
        let n = FLOOD_BATCH.min(syns - sent);
        for i in sent..sent + n {
            // Every SYN from a new port: each is a new connection attempt.
            let src = u16::try_from(1024 + i % 60_000).unwrap_or(1024);
            batch.push(syn_frame(src, DENIED, 443));
        }
        sent += n;
        let t = Instant::now();
        for frame in batch.drain(..) {
            link.stack.handle(NetInput::GuestFrame(frame), t);
        }
        link.stack.poll_once(t);
        let spent = t.elapsed();
        total_in_stack += spent;
        per_syn.push(spent / u32::try_from(n).unwrap_or(1));
        let mut frames = lock(&link.to_guest);
        resets += frames.len();
        frames.clear();
    }
    Flood {
        syns,
        events: link.events.load(Relaxed) - events0,
        resets,
        per_syn,
        total_in_stack,
        heap_before,
        heap_after: live(),
        peak_growth: peak().saturating_sub(heap_before),
    }
}

// ---------------------------------------------------------------------------
// Output

fn pick(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() - 1) * percent / 100]
}

fn row(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        println!("| {label:<44} | {:>5} | no samples |", 0);
        return;
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {label:<44} | {:>5} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} |",
        samples.len(),
        us(pick(&samples, 50)),
        us(pick(&samples, 90)),
        us(samples[0]),
        us(samples[samples.len() - 1])
    );
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

fn throughput_row(label: &str, mib: u64, runs: &[Transfer]) {
    let mut wall: Vec<f64> = runs.iter().map(|r| mb_per_s(r.bytes, r.wall)).collect();
    let mut stack: Vec<f64> = runs.iter().map(|r| mb_per_s(r.bytes, r.in_stack)).collect();
    wall.sort_by(f64::total_cmp);
    stack.sort_by(f64::total_cmp);
    let share: f64 = runs
        .iter()
        .map(|r| r.in_stack.as_secs_f64() / r.wall.as_secs_f64().max(1e-9))
        .sum::<f64>()
        / runs.len().max(1) as f64;
    let incomplete = runs.iter().filter(|r| !r.complete).count();
    println!(
        "| {label:<14} | {mib:>5} | {:>4} | {:>9.1} | {:>9.1} | {:>9.1} | {:>13.1} | {:>8.0} % |{}",
        runs.len(),
        wall[wall.len() / 2],
        wall[0],
        wall[wall.len() - 1],
        stack[stack.len() / 2],
        share * 100.0,
        if incomplete > 0 {
            format!(" {incomplete} run(s) timed out")
        } else {
            String::new()
        }
    );
}

fn main() {
    let mib = knob("SBXRUN_BENCH_EGRESS_MB", 64) as u64;
    let runs = knob("SBXRUN_BENCH_EGRESS_RUNS", 5).max(1);
    let connects = knob("SBXRUN_BENCH_EGRESS_CONNECTS", 1000);
    let queries = knob("SBXRUN_BENCH_EGRESS_DNS", 2000);
    let idle = knob("SBXRUN_BENCH_EGRESS_IDLE", 100);
    let syns = knob("SBXRUN_BENCH_EGRESS_SYNS", 10_000);
    println!(
        "vmm::net host-side cost; guest = smoltcp in the same busy loop, upstream = 127.0.0.1 ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Heap first, while no other thread of this bench has run yet.
    let mem = memory(idle);
    let flood = flood(syns);
    let setup = connect_latency(connects);
    let dns = dns_latency(queries);
    let up: Vec<Transfer> = (0..runs).map(|_| upload(mib << 20)).collect();
    let down: Vec<Transfer> = (0..runs).map(|_| download(mib << 20)).collect();

    println!();
    println!(
        "| {:<14} | {:>5} | {:>4} | {:>9} | {:>9} | {:>9} | {:>13} | {:>10} |",
        "throughput", "MiB", "runs", "median", "min", "max", "in-stack only", "stack"
    );
    println!(
        "| {:<14} | {:>5} | {:>4} | {:>9} | {:>9} | {:>9} | {:>13} | {:>10} |",
        "", "", "", "MB/s", "MB/s", "MB/s", "MB/s (median)", "share"
    );
    println!(
        "|{:-<16}|{:-<7}|{:-<6}|{:-<11}|{:-<11}|{:-<11}|{:-<15}|{:-<12}|",
        "", "", "", "", "", "", "", ""
    );
    throughput_row("guest -> host", mib, &up);
    throughput_row("host -> guest", mib, &down);

    println!();
    println!(
        "| {:<44} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "latency (us)", "n", "median", "p90", "min", "max"
    );
    println!(
        "|{:-<46}|{:-<7}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|",
        "", "", "", "", "", ""
    );
    row("connect -> established (wall)", setup.wall);
    row("  of which broker TcpStream::connect", setup.broker_connect);
    row("  of which inside NetStack", setup.in_stack);
    row("DNS A query -> answer, allowed name (wall)", dns.wall);
    row("  of which inside NetStack", dns.in_stack);
    row(
        &format!("denied SYN inside NetStack (batches of {FLOOD_BATCH})"),
        flood.per_syn,
    );
    if setup.failed + dns.failed > 0 {
        println!(
            "failed: {} connects, {} queries (not in the table)",
            setup.failed, dns.failed
        );
    }

    println!();
    println!("heap held by the stack (counting allocator, bytes live)");
    println!(
        "  fresh stack with its policy, 0 connections: {:>10.1} KiB (plus {:.1} KiB inline: size_of::<NetStack>)",
        kib(mem.fresh),
        kib(std::mem::size_of::<NetStack>())
    );
    println!(
        "  + {} established idle connections ({} up):  {:>10.1} KiB = {:.1} KiB per connection",
        mem.idle,
        mem.established,
        kib(mem.open),
        kib(mem.open) / mem.established.max(1) as f64
    );
    println!(
        "  peak growth while opening them:              {:>10.1} KiB",
        kib(mem.opening_peak)
    );
    println!(
        "  still held after all were closed and reaped: {:>10.1} KiB",
        kib(mem.after_close)
    );
    println!();
    println!(
        "denied SYN flood: {} SYNs to {DENIED}:443 -> {} events, {} resets to the guest; \
         {:.2} us per denial ({:.1} ms in NetStack)",
        flood.syns,
        flood.events,
        flood.resets,
        flood.total_in_stack.as_secs_f64() * 1e6 / flood.syns.max(1) as f64,
        flood.total_in_stack.as_secs_f64() * 1e3
    );
    println!(
        "  heap: {:.1} KiB before, {:.1} KiB after ({:+} bytes), peak {:+.1} KiB during \
         (includes the batch of {FLOOD_BATCH} frames in flight)",
        kib(flood.heap_before),
        kib(flood.heap_after),
        flood.heap_after as i64 - flood.heap_before as i64,
        kib(flood.peak_growth)
    );
}
