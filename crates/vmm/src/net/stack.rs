//! [`NetStack`]: the smoltcp interface that plays the gateway, and the
//! triage that decides which guest frames smoltcp may see at all.
//!
//! Every guest frame is parsed here first. ARP goes to smoltcp (which
//! answers for the gateway); DNS to the gateway is answered by `dns.rs`;
//! a TCP SYN is held until the policy and the broker said yes, and only
//! then does a listening socket for exactly that address appear. Every
//! other segment goes to smoltcp, which resets what matches no socket.
//! Everything else is dropped.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

use super::conn::{ConnKey, Conns};
use super::device::{FrameQueues, ETHERNET_HEADER_LEN};
use super::dns::{DnsClient, DnsWait};
use super::mapped::MappedAddrs;
use super::{BrokerClient, BrokerReply, GuestPort, NetInput, DNS_PORT, GATEWAY_IP, GATEWAY_MAC};
use super::{GUEST_IP, PREFIX_LEN};
use sbxrun_egress::{EgressEvent, EgressEventKind, EgressPolicy, PinSet};

/// Frames the guest refused, kept for a retry after [`NetInput::RxSpace`].
/// When full the oldest goes: TCP retransmits it.
const GUEST_QUEUE_LIMIT: usize = 256;

/// The stack between the guest's network device and the runner's broker.
///
/// Drive it with [`NetStack::handle`] for every [`NetInput`] and
/// [`NetStack::poll_once`] after each batch and when its delay expires;
/// [`run_net_thread`](super::run_net_thread) does exactly that.
pub struct NetStack {
    pub(super) iface: Interface,
    pub(super) queues: FrameQueues,
    pub(super) sockets: SocketSet<'static>,
    pub(super) conns: Conns,
    pub(super) dns: HashMap<u64, DnsWait>,
    pub(super) policy: EgressPolicy,
    pub(super) pins: PinSet,
    /// The guest-facing address of every resolved name.
    pub(super) mapped: MappedAddrs,
    pub(super) step_started: Instant,
    /// smoltcp's clock starts here.
    epoch: Instant,
    next_id: u64,
    pub(super) broker: Box<dyn BrokerClient>,
    guest: Box<dyn GuestPort>,
    to_guest: VecDeque<Vec<u8>>,
}

/// What the triage makes of one IPv4 frame.
enum Ipv4Verdict<'a> {
    /// Not worth a word: malformed, spoofed, or a bad checksum.
    Ignore,
    /// A protocol the VMM does not forward: a `ProtocolDropped` event.
    Drop {
        detail: &'static str,
        ip: Ipv4Addr,
        port: Option<u16>,
    },
    /// A query to the gateway's DNS server.
    Dns {
        client: DnsClient,
        payload: &'a [u8],
    },
    /// The first segment of a new TCP connection.
    Syn(ConnKey),
    /// Any other TCP segment: smoltcp's business.
    Tcp,
}

impl NetStack {
    /// A stack with the default-deny policy (`none`) until
    /// [`NetInput::SetPolicy`] arrives.
    pub fn new(guest: Box<dyn GuestPort>, broker: Box<dyn BrokerClient>, now: Instant) -> Self {
        let mut queues = FrameQueues::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        // Seeds smoltcp's initial sequence numbers and ephemeral ports.
        config.random_seed = RandomState::new().hash_one(now);
        let mut iface = Interface::new(config, &mut queues, smoltcp_now(now, now));
        iface.update_ip_addrs(|addrs| {
            // Cannot fail: a fresh interface has room for one address.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), PREFIX_LEN));
        });
        // "Any IP": the gateway accepts TCP for every destination whose
        // route leads through itself, and the default route does.
        iface.set_any_ip(true);
        // Cannot fail: the route table is empty.
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);
        NetStack {
            iface,
            queues,
            sockets: SocketSet::new(Vec::new()),
            conns: Conns::default(),
            dns: HashMap::new(),
            policy: EgressPolicy::None,
            pins: PinSet::new(),
            mapped: MappedAddrs::with_capacity(sbxrun_egress::MAX_PINS),
            step_started: now,
            epoch: now,
            next_id: 1,
            broker,
            guest,
            to_guest: VecDeque::new(),
        }
    }

    /// Handles one input. Returns false for [`NetInput::Shutdown`].
    pub fn handle(&mut self, input: NetInput, now: Instant) -> bool {
        match input {
            NetInput::GuestFrame(frame) => self.on_guest_frame(frame, now),
            NetInput::RxSpace => self.flush_to_guest(),
            NetInput::SetPolicy {
                policy,
                step_started,
            } => {
                self.policy = policy;
                self.step_started = step_started;
                // A VM runs one step: names resolved before it are void.
                self.pins = PinSet::new();
            }
            NetInput::Broker(BrokerReply::Resolved { id, result }) => {
                self.on_resolved(id, result, now)
            }
            NetInput::Broker(BrokerReply::Connected { id, result }) => {
                self.on_connected(id, result, now)
            }
            NetInput::Shutdown => return false,
        }
        true
    }

    /// Runs smoltcp's timers, moves bytes between the guest's connections
    /// and their upstream sockets, and hands new frames to the guest.
    /// Returns how long the caller may wait (for input or an upstream
    /// socket) before calling again; `None` means no timer is pending.
    pub fn poll_once(&mut self, now: Instant) -> Option<Duration> {
        self.poll_iface(now);
        self.pump_conns(now);
        // Send what the pump queued, and the resets it asked for, now.
        self.poll_iface(now);
        self.reap_conns();
        self.flush_to_guest();
        let now = smoltcp_now(self.epoch, now);
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// The number of guest connections open or being opened.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The upstream sockets the proxy is waiting on, for poll(2).
    pub(super) fn upstream_interests(
        &self,
    ) -> impl Iterator<Item = (std::os::fd::BorrowedFd<'_>, super::conn::Interest)> + '_ {
        self.conns.interests(&self.sockets)
    }

    /// A fresh id for a broker request.
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Milliseconds since the step started, for events.
    pub(super) fn at_ms(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.step_started).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    pub(super) fn event(&mut self, event: EgressEvent) {
        self.broker.event(event);
    }

    /// Lets smoltcp process everything queued for it and send what it has.
    pub(super) fn poll_iface(&mut self, now: Instant) {
        let now = smoltcp_now(self.epoch, now);
        self.iface.poll(now, &mut self.queues, &mut self.sockets);
        for frame in self.queues.tx.drain(..) {
            if self.to_guest.len() >= GUEST_QUEUE_LIMIT {
                self.to_guest.pop_front();
            }
            self.to_guest.push_back(frame);
        }
    }

    /// Feeds one vetted frame to smoltcp and processes it at once, so that
    /// no listening socket created later can see it.
    pub(super) fn feed_smoltcp(&mut self, frame: Vec<u8>, now: Instant) {
        self.queues.rx.push_back(frame);
        self.poll_iface(now);
    }

    /// Queues a frame built outside smoltcp (a DNS answer) for the guest.
    pub(super) fn send_to_guest(&mut self, frame: Vec<u8>) {
        if self.to_guest.len() >= GUEST_QUEUE_LIMIT {
            self.to_guest.pop_front();
        }
        self.to_guest.push_back(frame);
        self.flush_to_guest();
    }

    fn flush_to_guest(&mut self) {
        while let Some(frame) = self.to_guest.front() {
            if !self.guest.deliver(frame) {
                break;
            }
            self.to_guest.pop_front();
        }
    }

    fn on_guest_frame(&mut self, frame: Vec<u8>, now: Instant) {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.feed_smoltcp(frame, now),
            EthernetProtocol::Ipv4 => self.on_ipv4(frame, now),
            // IPv6 and everything else: the guest has no use for them and
            // they are not egress attempts worth a report line.
            _ => {}
        }
    }

    fn on_ipv4(&mut self, frame: Vec<u8>, now: Instant) {
        match triage_ipv4(&frame) {
            Ipv4Verdict::Ignore => {}
            Ipv4Verdict::Drop { detail, ip, port } => {
                let mut event =
                    EgressEvent::new(self.at_ms(now), EgressEventKind::ProtocolDropped, detail)
                        .with_ip(IpAddr::V4(ip));
                if let Some(port) = port {
                    event = event.with_port(port);
                }
                self.event(event);
            }
            Ipv4Verdict::Dns { client, payload } => self.on_dns(client, payload, now),
            Ipv4Verdict::Syn(key) => self.on_syn(key, frame, now),
            Ipv4Verdict::Tcp => self.feed_smoltcp(frame, now),
        }
    }
}

/// smoltcp's clock: microseconds since `epoch`.
fn smoltcp_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// Reads an IPv4 frame the guest sent; `frame` is a checked Ethernet frame.
fn triage_ipv4(frame: &[u8]) -> Ipv4Verdict<'_> {
    let checksums = ChecksumCapabilities::default();
    let Some(eth_payload) = frame.get(ETHERNET_HEADER_LEN..) else {
        return Ipv4Verdict::Ignore;
    };
    let Ok(packet) = Ipv4Packet::new_checked(eth_payload) else {
        return Ipv4Verdict::Ignore;
    };
    let dst = packet.dst_addr();
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Ipv4Verdict::Drop {
            detail: "fragmented IPv4 packets are not forwarded",
            ip: dst,
            port: None,
        };
    }
    let Ok(ip) = Ipv4Repr::parse(&packet, &checksums) else {
        return Ipv4Verdict::Ignore;
    };
    // The guest has one address; anything else is spoofed and smoltcp
    // would answer it on the wrong route.
    if ip.src_addr != GUEST_IP {
        return Ipv4Verdict::Ignore;
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));
    match ip.next_header {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(packet.payload()) else {
                return Ipv4Verdict::Ignore;
            };
            let Ok(repr) = UdpRepr::parse(&udp, &src, &dst, &checksums) else {
                return Ipv4Verdict::Ignore;
            };
            if ip.dst_addr == GATEWAY_IP && repr.dst_port == DNS_PORT {
                let mut mac = [0; 6];
                mac.copy_from_slice(EthernetFrame::new_unchecked(frame).src_addr().as_bytes());
                return Ipv4Verdict::Dns {
                    client: DnsClient {
                        mac,
                        ip: ip.src_addr,
                        port: repr.src_port,
                    },
                    payload: udp.payload(),
                };
            }
            let detail = if repr.dst_port == DNS_PORT {
                "DNS goes only to the gateway (10.0.2.2)"
            } else {
                "UDP is not forwarded"
            };
            Ipv4Verdict::Drop {
                detail,
                ip: ip.dst_addr,
                port: Some(repr.dst_port),
            }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(packet.payload()) else {
                return Ipv4Verdict::Ignore;
            };
            let Ok(repr) = TcpRepr::parse(&tcp, &src, &dst, &checksums) else {
                return Ipv4Verdict::Ignore;
            };
            if repr.control == TcpControl::Syn && repr.ack_number.is_none() {
                Ipv4Verdict::Syn(ConnKey {
                    guest_port: repr.src_port,
                    ip: ip.dst_addr,
                    port: repr.dst_port,
                })
            } else {
                Ipv4Verdict::Tcp
            }
        }
        IpProtocol::Icmp => Ipv4Verdict::Drop {
            detail: "ICMP is not forwarded",
            ip: ip.dst_addr,
            port: None,
        },
        _ => Ipv4Verdict::Drop {
            detail: "only TCP and DNS are forwarded",
            ip: ip.dst_addr,
            port: None,
        },
    }
}
