//! Test harness: a second smoltcp interface plays the guest (10.0.2.15)
//! and is wired back to back with a [`NetStack`]; a broker resolves from a
//! fixed map and connects for real. Time is virtual (1 ms a step) so runs
//! are quick and do not depend on the machine's load.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::device::FrameQueues;
use super::{
    BrokerClient, BrokerReply, GuestPort, NetInput, NetStack, GATEWAY_IP, GUEST_IP, GUEST_MAC,
    PREFIX_LEN,
};
use sbxrun_egress::{EgressEvent, EgressEventKind, EgressPolicy};

/// What the test broker was asked and told.
#[derive(Debug, Default)]
pub(super) struct BrokerLog {
    pub(super) resolves: Vec<String>,
    pub(super) connects: Vec<(IpAddr, u16, Vec<String>)>,
    pub(super) events: Vec<EgressEvent>,
}

impl BrokerLog {
    pub(super) fn kinds(&self) -> Vec<EgressEventKind> {
        self.events.iter().map(|e| e.kind).collect()
    }
}

/// Resolves from a fixed map (name → addresses, trusted) and connects for
/// real; replies go through the inbox, as from the runner.
struct TestBroker {
    names: HashMap<String, (Vec<IpAddr>, bool)>,
    replies: Sender<NetInput>,
    log: Arc<Mutex<BrokerLog>>,
}

impl BrokerClient for TestBroker {
    fn resolve(&mut self, id: u64, name: &str) {
        lock(&self.log).resolves.push(name.to_owned());
        let result = self
            .names
            .get(name)
            .cloned()
            .ok_or_else(|| format!("{name}: no such name"));
        let _ = self
            .replies
            .send(NetInput::Broker(BrokerReply::Resolved { id, result }));
    }

    fn connect(&mut self, id: u64, ip: IpAddr, port: u16, names: &[String]) {
        lock(&self.log).connects.push((ip, port, names.to_vec()));
        let result = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
            .and_then(|stream| stream.set_nonblocking(true).map(|()| stream))
            .map_err(|e| e.to_string());
        let _ = self
            .replies
            .send(NetInput::Broker(BrokerReply::Connected { id, result }));
    }

    fn event(&mut self, event: EgressEvent) {
        lock(&self.log).events.push(event);
    }
}

/// The guest's receive side: frames the stack delivered, or a refusal.
#[derive(Debug, Default)]
pub(super) struct PortState {
    pub(super) frames: VecDeque<Vec<u8>>,
    /// Pretend the guest has no receive buffers.
    pub(super) refuse: bool,
}

struct TestPort(Arc<Mutex<PortState>>);

impl GuestPort for TestPort {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let mut port = lock(&self.0);
        if port.refuse {
            return false;
        }
        port.frames.push_back(frame.to_vec());
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stack and a guest, back to back.
pub(super) struct Harness {
    pub(super) stack: NetStack,
    inbox: Receiver<NetInput>,
    pub(super) guest: Interface,
    guest_dev: FrameQueues,
    pub(super) sockets: SocketSet<'static>,
    pub(super) port: Arc<Mutex<PortState>>,
    pub(super) log: Arc<Mutex<BrokerLog>>,
    start: Instant,
    pub(super) now: Instant,
}

impl Harness {
    /// A harness whose broker knows `names`; `policy` is sent as the
    /// step's policy unless it is `None` (then the stack keeps its default).
    pub(super) fn new(policy: Option<EgressPolicy>, names: &[(&str, &[IpAddr], bool)]) -> Self {
        let start = Instant::now();
        let (tx, inbox) = channel();
        let log = Arc::new(Mutex::new(BrokerLog::default()));
        let port = Arc::new(Mutex::new(PortState::default()));
        let broker = TestBroker {
            names: names
                .iter()
                .map(|(n, ips, trusted)| ((*n).to_owned(), (ips.to_vec(), *trusted)))
                .collect(),
            replies: tx,
            log: Arc::clone(&log),
        };
        let mut stack = NetStack::new(
            Box::new(TestPort(Arc::clone(&port))),
            Box::new(broker),
            start,
        );
        if let Some(policy) = policy {
            stack.handle(
                NetInput::SetPolicy {
                    policy,
                    step_started: start,
                },
                start,
            );
        }
        let mut guest_dev = FrameQueues::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut guest = Interface::new(config, &mut guest_dev, smoltcp::time::Instant::ZERO);
        guest.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), PREFIX_LEN))
                .expect("room for one address");
        });
        guest
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .expect("room for a route");
        Harness {
            stack,
            inbox,
            guest,
            guest_dev,
            sockets: SocketSet::new(Vec::new()),
            port,
            log,
            start,
            now: start,
        }
    }

    pub(super) fn log(&self) -> MutexGuard<'_, BrokerLog> {
        lock(&self.log)
    }

    fn guest_now(&self) -> smoltcp::time::Instant {
        let micros = self.now.duration_since(self.start).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).expect("short test"))
    }

    /// One round: the guest sends, the broker's replies are handled, the
    /// stack runs, the guest receives; then 1 ms passes.
    pub(super) fn step(&mut self) {
        let now = self.guest_now();
        self.guest.poll(now, &mut self.guest_dev, &mut self.sockets);
        for frame in self.guest_dev.tx.drain(..) {
            self.stack.handle(NetInput::GuestFrame(frame), self.now);
        }
        while let Ok(input) = self.inbox.try_recv() {
            self.stack.handle(input, self.now);
        }
        self.stack.poll_once(self.now);
        self.guest_dev.rx.extend(lock(&self.port).frames.drain(..));
        self.guest.poll(now, &mut self.guest_dev, &mut self.sockets);
        self.now += Duration::from_millis(1);
        std::thread::yield_now();
    }

    /// Steps until `done` holds; panics after `max` steps.
    pub(super) fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Self) -> bool) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("condition not reached in {max} steps");
    }

    pub(super) fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// A guest UDP socket on `local_port`.
    pub(super) fn udp_socket(&mut self, local_port: u16) -> SocketHandle {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
        let mut sock = udp::Socket::new(buf(), buf());
        sock.bind(local_port).expect("bind");
        self.sockets.add(sock)
    }

    /// Sends a DNS query for `name` of `qtype` to `server:53` and returns
    /// the socket to read the answer from.
    pub(super) fn send_query(
        &mut self,
        server: Ipv4Addr,
        id: u16,
        name: &str,
        qtype: u16,
    ) -> SocketHandle {
        let handle = self.udp_socket(40000 + id);
        let sock = self.sockets.get_mut::<udp::Socket>(handle);
        let to = IpEndpoint::new(IpAddress::Ipv4(server), 53);
        sock.send_slice(&dns_query(id, name, qtype), to)
            .expect("send query");
        handle
    }

    /// Waits for the answer on a socket from [`Harness::send_query`].
    pub(super) fn answer(&mut self, handle: SocketHandle) -> Vec<u8> {
        let mut answer = None;
        self.run_until(500, |h| {
            let sock = h.sockets.get_mut::<udp::Socket>(handle);
            if let Ok((data, _)) = sock.recv() {
                answer = Some(data.to_vec());
            }
            answer.is_some()
        });
        answer.expect("an answer")
    }

    /// A guest TCP socket connecting to `ip:port`, with `rx` bytes of
    /// receive buffer.
    pub(super) fn tcp_connect(&mut self, ip: Ipv4Addr, port: u16, rx: usize) -> SocketHandle {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        let local = 49152 + u16::try_from(self.sockets.iter().count()).expect("few sockets");
        sock.connect(
            self.guest.context(),
            IpEndpoint::new(IpAddress::Ipv4(ip), port),
            local,
        )
        .expect("connect");
        self.sockets.add(sock)
    }

    pub(super) fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }
}

/// A standard recursive query with one question of class IN.
pub(super) fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    for field in [id, 0x0100, 1, 0, 0, 0] {
        q.extend_from_slice(&field.to_be_bytes());
    }
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The RCODE of a DNS answer.
pub(super) fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0xf
}

/// The addresses of the A records of an answer to [`dns_query`] (records
/// of 16 bytes after the echoed question).
pub(super) fn a_records(answer: &[u8], query_len: usize) -> Vec<Ipv4Addr> {
    answer[query_len..]
        .chunks_exact(16)
        .map(|r| Ipv4Addr::new(r[12], r[13], r[14], r[15]))
        .collect()
}

/// A UDP frame from the guest to `dst:dst_port`, built by hand for tests
/// that bypass the guest interface.
pub(super) fn guest_udp_frame(dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
        UdpRepr,
    };
    let checksums = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + 20 + ip.payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(super::GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &checksums);
    let mut udp = UdpPacket::new_unchecked(packet.payload_mut());
    UdpRepr {
        src_port: 5353,
        dst_port,
    }
    .emit(
        &mut udp,
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &checksums,
    );
    frame
}
