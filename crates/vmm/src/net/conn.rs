//! Guest TCP connections: the policy check on the SYN, the hand-off to the
//! broker, the server-name check on the first bytes, and the proxy between
//! the smoltcp socket and the upstream `TcpStream`.
//!
//! A guest SYN is held, not answered, while the broker connects: when the
//! broker fails, the held SYN is given to smoltcp with no socket to take it
//! and the guest gets a reset, i.e. ECONNREFUSED, as from a real host. The
//! smoltcp socket's own buffers are the only buffers: bytes go from its
//! receive buffer straight into the upstream socket and from the upstream
//! socket straight into its send buffer, so a slow side stalls the other
//! through TCP's window instead of filling memory.
//!
//! A connection allowed only because an allowed name resolved to its
//! address must start with a TLS ClientHello or an HTTP/1.x request naming
//! an allowed site pinned to that address; anything else is reset. So
//! protocols other than TLS and HTTP (SSH, databases, ...) need an IP or
//! CIDR rule. The upstream's bytes are not read before the check either,
//! so a server that speaks first just waits.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use super::stack::NetStack;
use sbxrun_egress::{
    sniff, ConnectDecision, EgressEvent, EgressEventKind, EgressPolicy, Grant, PinSet, Sniff,
    SNIFF_LIMIT,
};

/// Guest connections open or being opened at once; more SYNs are reset.
pub(super) const MAX_CONNECTIONS: usize = 256;
/// Each direction of a connection buffers at most this much.
const BUFFER_SIZE: usize = 64 * 1024;
/// DNS over TCP or TLS would bypass the gateway's resolver.
const DNS_TCP_PORTS: [u16; 2] = [53, 853];

/// A guest connection, by the guest's port and the destination (the
/// guest's address is always [`GUEST_IP`](super::GUEST_IP)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    pub(super) guest_port: u16,
    pub(super) ip: Ipv4Addr,
    pub(super) port: u16,
}

/// The connection table.
#[derive(Debug, Default)]
pub(super) struct Conns {
    by_key: HashMap<ConnKey, Conn>,
    /// Broker connect requests in flight.
    pending: HashMap<u64, ConnKey>,
}

impl Conns {
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The upstream sockets and what the proxy waits for on each.
    pub(super) fn interests<'a>(
        &'a self,
        sockets: &'a smoltcp::iface::SocketSet<'static>,
    ) -> impl Iterator<Item = (BorrowedFd<'a>, Interest)> + 'a {
        self.by_key
            .values()
            .filter_map(move |conn| match &conn.state {
                State::Connecting { .. } => None,
                State::Open(open) => {
                    let sock = sockets.get::<tcp::Socket>(open.handle);
                    let interest = open.interest(sock);
                    (interest.readable || interest.writable)
                        .then(|| (open.stream.as_fd(), interest))
                }
            })
    }
}

/// Which readiness of an upstream socket would let the proxy move bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Interest {
    pub(super) readable: bool,
    pub(super) writable: bool,
}

#[derive(Debug)]
struct Conn {
    /// The allowed names that made the address reachable; `None` when an
    /// address rule did and the bytes are not inspected.
    names: Option<Vec<String>>,
    /// Where the connection really goes: the guest's destination, or the
    /// real address behind a mapped one.
    upstream: IpAddr,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for the broker; the guest's SYN is held.
    Connecting {
        syn: Vec<u8>,
    },
    Open(Open),
}

#[derive(Debug)]
struct Open {
    handle: SocketHandle,
    stream: TcpStream,
    /// The server-name check passed (or was not needed): bytes may flow.
    checked: bool,
    /// The guest's FIN was passed upstream.
    upstream_write_shut: bool,
    /// The upstream sent EOF; the guest side is closing.
    upstream_eof: bool,
}

/// What the proxy decided for a connection this round.
enum Outcome {
    Keep,
    /// Reset the guest side (the upstream socket is dropped with the
    /// connection), optionally with an event.
    Abort(Option<EgressEvent>),
}

impl Open {
    fn interest(&self, sock: &tcp::Socket<'_>) -> Interest {
        // A socket that is done waits for the reap, not for the upstream:
        // polling for it would only spin on stale readiness.
        let live = self.checked && sock.is_active();
        Interest {
            readable: live && !self.upstream_eof && sock.can_send(),
            writable: live && sock.recv_queue() > 0,
        }
    }

    /// Moves what can be moved without blocking.
    fn pump(&mut self, key: ConnKey, sock: &mut tcp::Socket<'_>, check: &NameCheck<'_>) -> Outcome {
        // Done, or a reset is on its way: `reap_conns` removes these.
        if matches!(
            sock.state(),
            tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait
        ) {
            return Outcome::Keep;
        }
        let guest_fin = matches!(
            sock.state(),
            tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing
        );
        if !self.checked {
            if let Some(names) = check.names {
                match self.check_server_name(key, sock, guest_fin, names, check) {
                    Outcome::Keep if self.checked => {}
                    other => return other,
                }
            } else {
                self.checked = true;
            }
        }
        if let Err(e) = self.send_upstream(sock) {
            return abort_io(check, key, "writing upstream", &e);
        }
        if guest_fin && sock.recv_queue() == 0 && !self.upstream_write_shut {
            self.upstream_write_shut = true;
            // Already closed upstream is fine: its reads will say so.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if let Err(e) = self.recv_upstream(sock) {
            return abort_io(check, key, "reading upstream", &e);
        }
        Outcome::Keep
    }

    /// The first bytes of a connection allowed by name must name an allowed
    /// site pinned to this address; nothing is forwarded before that.
    fn check_server_name(
        &mut self,
        key: ConnKey,
        sock: &mut tcp::Socket<'_>,
        guest_fin: bool,
        names: &[String],
        check: &NameCheck<'_>,
    ) -> Outcome {
        if sock.recv_queue() == 0 {
            // Opened and closed without a byte: nothing to check or pass on.
            return if guest_fin {
                Outcome::Abort(None)
            } else {
                Outcome::Keep
            };
        }
        // Nothing was read from the receive buffer yet, so its first bytes
        // are contiguous and `peek` sees all of them up to its size.
        let first = match sock.peek(SNIFF_LIMIT) {
            Ok(first) => first,
            Err(_) => return Outcome::Abort(None),
        };
        let event = |kind, detail: String| {
            EgressEvent::new(check.at_ms, kind, detail)
                .with_ip(check.upstream)
                .with_port(key.port)
        };
        let claimed = match sniff(first) {
            Sniff::NeedMore if !guest_fin && first.len() < SNIFF_LIMIT => return Outcome::Keep,
            Sniff::Tls {
                server_name: Some(name),
            }
            | Sniff::Http { host: Some(name) } => name,
            Sniff::Tls { server_name: None } => {
                return Outcome::Abort(Some(event(
                    EgressEventKind::ServerNameMismatch,
                    "TLS without a server name to a site allowed only by name".to_owned(),
                )))
            }
            Sniff::Http { host: None } => {
                return Outcome::Abort(Some(event(
                    EgressEventKind::ServerNameMismatch,
                    "HTTP without a Host to a site allowed only by name".to_owned(),
                )))
            }
            Sniff::NeedMore | Sniff::Other => {
                return Outcome::Abort(Some(event(
                    EgressEventKind::ProtocolDropped,
                    format!(
                        "neither TLS nor HTTP to {}, which is reachable only through a name \
                         ({}); other protocols need an IP or CIDR rule",
                        check.upstream,
                        names.join(", ")
                    ),
                )))
            }
        };
        if check
            .policy
            .allows_server_name(&claimed, check.upstream, key.port, check.pins)
        {
            self.checked = true;
            return Outcome::Keep;
        }
        Outcome::Abort(Some(
            event(
                EgressEventKind::ServerNameMismatch,
                format!(
                    "the connection names {claimed}, but {} was resolved for {}",
                    check.upstream,
                    names.join(", ")
                ),
            )
            .with_name(claimed),
        ))
    }

    /// Guest → upstream, straight from the socket's receive buffer.
    fn send_upstream(&mut self, sock: &mut tcp::Socket<'_>) -> io::Result<()> {
        while sock.can_recv() {
            let written = sock.recv(|buf| match self.stream.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match written {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                // The socket cannot receive after all: nothing to move.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Upstream → guest, straight into the socket's send buffer.
    fn recv_upstream(&mut self, sock: &mut tcp::Socket<'_>) -> io::Result<()> {
        while !self.upstream_eof && sock.can_send() {
            let read = sock.send(|buf| match self.stream.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match read {
                Ok(Ok(0)) => {
                    // `can_send` promised room, so 0 is the upstream's EOF:
                    // the guest gets a FIN after the queued bytes.
                    self.upstream_eof = true;
                    sock.close();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

/// What the server-name check needs besides the connection.
struct NameCheck<'a> {
    names: Option<&'a [String]>,
    upstream: IpAddr,
    policy: &'a EgressPolicy,
    pins: &'a PinSet,
    at_ms: u64,
}

fn abort_io(check: &NameCheck<'_>, key: ConnKey, what: &str, e: &io::Error) -> Outcome {
    // A reset from the far end is ordinary; it is not an egress event.
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        return Outcome::Abort(None);
    }
    Outcome::Abort(Some(
        EgressEvent::new(
            check.at_ms,
            EgressEventKind::BrokerFailed,
            format!("{what} failed: {e}"),
        )
        .with_ip(check.upstream)
        .with_port(key.port),
    ))
}

impl NetStack {
    /// A SYN for a connection the stack has not seen.
    pub(super) fn on_syn(&mut self, key: ConnKey, frame: Vec<u8>, now: Instant) {
        if let Some(conn) = self.conns.by_key.get_mut(&key) {
            match &mut conn.state {
                // A retransmission while the broker connects: keep the
                // newest, there is only ever one SYN to answer.
                State::Connecting { syn } => *syn = frame,
                State::Open(_) => self.feed_smoltcp(frame, now),
            }
            return;
        }
        let ip = match self.upstream_of(key.ip) {
            Ok(ip) => ip,
            Err(detail) => {
                let event =
                    EgressEvent::new(self.at_ms(now), EgressEventKind::ConnectDenied, detail)
                        .with_ip(IpAddr::V4(key.ip))
                        .with_port(key.port);
                self.event(event);
                return self.feed_smoltcp(frame, now);
            }
        };
        let denied = |stack: &Self, kind, detail: &str| {
            EgressEvent::new(stack.at_ms(now), kind, detail)
                .with_ip(ip)
                .with_port(key.port)
        };
        // In every refusal below the SYN goes to smoltcp with no socket to
        // take it, and smoltcp answers with a reset.
        if DNS_TCP_PORTS.contains(&key.port) {
            let event = denied(
                self,
                EgressEventKind::ProtocolDropped,
                "DNS over TCP or TLS is not forwarded; the gateway (10.0.2.2) answers DNS",
            );
            self.event(event);
            return self.feed_smoltcp(frame, now);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            let event = denied(
                self,
                EgressEventKind::ConnectDenied,
                "too many open connections (at most 256)",
            );
            self.event(event);
            return self.feed_smoltcp(frame, now);
        }
        let names = match self.policy.check_connect(ip, key.port, &self.pins) {
            ConnectDecision::Allow(Grant::Address) => None,
            ConnectDecision::Allow(Grant::Names(names)) => Some(names),
            ConnectDecision::Deny(reason) => {
                let event = EgressEvent::connect_denied(self.at_ms(now), ip, key.port, &reason);
                self.event(event);
                return self.feed_smoltcp(frame, now);
            }
        };
        let id = self.next_id();
        self.broker
            .connect(id, ip, key.port, names.as_deref().unwrap_or_default());
        self.conns.pending.insert(id, key);
        self.conns.by_key.insert(
            key,
            Conn {
                names,
                upstream: ip,
                state: State::Connecting { syn: frame },
            },
        );
    }

    /// The real destination of a guest connection to `dst`: itself, or
    /// the address behind a mapped one. Mapped addresses nobody handed out
    /// lead nowhere.
    fn upstream_of(&self, dst: Ipv4Addr) -> Result<IpAddr, &'static str> {
        if !super::mapped::in_range(dst) {
            return Ok(IpAddr::V4(dst));
        }
        self.mapped
            .lookup(dst)
            .and_then(|m| m.real.first().copied())
            .ok_or("no name was resolved to this address")
    }

    /// The broker's answer to a connect.
    pub(super) fn on_connected(
        &mut self,
        id: u64,
        result: Result<TcpStream, String>,
        now: Instant,
    ) {
        let Some(key) = self.conns.pending.remove(&id) else {
            return;
        };
        let Some(conn) = self.conns.by_key.remove(&key) else {
            return;
        };
        let State::Connecting { syn } = conn.state else {
            // Not reachable: only connecting entries have pending ids.
            self.conns.by_key.insert(key, conn);
            return;
        };
        // The broker hands over sockets already non-blocking (O_NONBLOCK
        // lives on the open file, so it crossed with the descriptor); this
        // thread's seccomp filter has no ioctl(FIONBIO) to set it again.
        let stream = match result {
            Ok(stream) => stream,
            Err(error) => {
                let event = EgressEvent::new(
                    self.at_ms(now),
                    EgressEventKind::BrokerFailed,
                    format!("connecting failed: {error}"),
                )
                .with_ip(IpAddr::V4(key.ip))
                .with_port(key.port);
                self.event(event);
                // No socket takes the SYN: the guest gets a reset.
                return self.feed_smoltcp(syn, now);
            }
        };
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER_SIZE]),
            tcp::SocketBuffer::new(vec![0; BUFFER_SIZE]),
        );
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(key.ip)),
            port: key.port,
        };
        if sock.listen(endpoint).is_err() {
            // Only port 0 is refused, and smoltcp drops such SYNs anyway.
            return self.feed_smoltcp(syn, now);
        }
        let handle = self.sockets.add(sock);
        self.conns.by_key.insert(
            key,
            Conn {
                names: conn.names,
                upstream: conn.upstream,
                state: State::Open(Open {
                    handle,
                    stream,
                    checked: false,
                    upstream_write_shut: false,
                    upstream_eof: false,
                }),
            },
        );
        // Processed at once, so this listener takes exactly this SYN.
        self.feed_smoltcp(syn, now);
    }

    /// Moves bytes on every open connection and applies the outcomes.
    pub(super) fn pump_conns(&mut self, now: Instant) {
        let at_ms = self.at_ms(now);
        let mut events = Vec::new();
        for (key, conn) in &mut self.conns.by_key {
            let State::Open(open) = &mut conn.state else {
                continue;
            };
            let check = NameCheck {
                names: conn.names.as_deref(),
                upstream: conn.upstream,
                policy: &self.policy,
                pins: &self.pins,
                at_ms,
            };
            let sock = self.sockets.get_mut::<tcp::Socket>(open.handle);
            match open.pump(*key, sock, &check) {
                Outcome::Keep => {}
                Outcome::Abort(event) => {
                    sock.abort();
                    // Nothing more goes upstream; the reap drops the stream.
                    let _ = open.stream.shutdown(Shutdown::Both);
                    open.upstream_eof = true;
                    events.extend(event);
                }
            }
        }
        for event in events {
            self.event(event);
        }
    }

    /// Forgets connections whose socket is done, freeing the socket.
    pub(super) fn reap_conns(&mut self) {
        let sockets = &mut self.sockets;
        self.conns.by_key.retain(|_, conn| {
            let State::Open(open) = &conn.state else {
                return true;
            };
            let sock = sockets.get::<tcp::Socket>(open.handle);
            let done = match sock.state() {
                // Listening after its SYN was processed: the guest reset
                // the half-open connection.
                tcp::State::Listen => true,
                // Both FINs are acknowledged; a late retransmission just
                // gets a reset, so lingering buys nothing.
                tcp::State::TimeWait => true,
                // Removed once the reset is out (the tuple goes with it).
                tcp::State::Closed => sock.remote_endpoint().is_none(),
                _ => false,
            };
            if done {
                sockets.remove(open.handle);
            }
            !done
        });
    }
}
