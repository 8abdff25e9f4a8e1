//! The runner's half of a step's network: it answers one VMM's requests to
//! resolve names and to open TCP connections, checking the step's policy a
//! second time, and collects the VMM's egress events for the report.
//!
//! The VMM holds no host network of its own (its jail takes it away); every
//! socket the guest's traffic leaves through is opened here and handed over
//! the broker channel. So even a VMM the guest took over can reach only
//! what this policy allows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sbxrun_egress::{
    ConnectDecision, EgressEvent, EgressEventKind, EgressPolicy, EventLog, PinSet,
};
use sbxrun_proto::netchan::{self, NetReply, NetRequest};

/// How long the broker waits for a host connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests (resolutions and connects) one VM may have in flight at once;
/// more are refused rather than queued, so a guest cannot pile up threads.
const MAX_IN_FLIGHT: usize = 32;

/// Name overrides (`--resolve name=ip`): answered without DNS and trusted
/// to point at non-public addresses, since the operator named them.
pub type Overrides = BTreeMap<String, Vec<IpAddr>>;

/// Parses one `--resolve name=ip[,ip...]` value.
pub fn parse_override(text: &str) -> Result<(String, Vec<IpAddr>), String> {
    let (name, ips) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not `name=ip`"))?;
    let name = sbxrun_egress::normalize_name(name)
        .ok_or_else(|| format!("`{name}` in `{text}` is not a host name"))?;
    let ips = ips
        .split(',')
        .map(|ip| {
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("`{ip}` in `{text}` is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, ips))
}

/// What one step's broker needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub policy: EgressPolicy,
    pub overrides: Arc<Overrides>,
    pub connect_timeout: Duration,
}

struct State {
    policy: EgressPolicy,
    overrides: Arc<Overrides>,
    connect_timeout: Duration,
    pins: Mutex<PinSet>,
    events: Mutex<EventLog>,
    in_flight: AtomicUsize,
    started: Instant,
}

impl State {
    fn at_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn record(&self, event: EgressEvent) {
        if let Ok(mut log) = self.events.lock() {
            log.record(event);
        }
    }
}

/// A running broker for one VM. Dropping it (or [`Broker::finish`]) stops it.
pub struct Broker {
    state: Arc<State>,
    sock: UnixDatagram,
    thread: Option<JoinHandle<()>>,
}

impl Broker {
    /// Sends the step's policy to the VMM and starts answering it.
    pub fn start(sock: UnixDatagram, config: BrokerConfig) -> io::Result<Broker> {
        netchan::send(
            &sock,
            &NetReply::Policy {
                policy: config.policy.clone(),
            },
            None::<&File>,
        )
        .map_err(io::Error::other)?;
        let state = Arc::new(State {
            policy: config.policy,
            overrides: config.overrides,
            connect_timeout: config.connect_timeout,
            pins: Mutex::new(PinSet::new()),
            events: Mutex::new(EventLog::new()),
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
        });
        let reader = sock.try_clone()?;
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("egress-broker".into())
            .spawn(move || serve(reader, thread_state))?;
        Ok(Broker {
            state,
            sock,
            thread: Some(thread),
        })
    }

    /// Stops answering and returns every event of the step.
    pub fn finish(mut self) -> EventLog {
        self.stop();
        match self.state.events.lock() {
            Ok(mut log) => std::mem::take(&mut *log),
            Err(_) => EventLog::new(),
        }
    }

    fn stop(&mut self) {
        self.drain_events();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Broker {
    /// Records the events the VMM sent just before the step ended and the
    /// reader has not taken yet; shutting the socket down would drop them.
    /// Requests still queued get no answer: the step is over.
    fn drain_events(&self) {
        if self.sock.set_nonblocking(true).is_err() {
            return;
        }
        while let Ok(Some((request, _))) = netchan::recv::<NetRequest>(&self.sock) {
            if let NetRequest::Event { event } = request {
                self.state.record(event);
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(sock: UnixDatagram, state: Arc<State>) {
    loop {
        let (request, stray) = match netchan::recv::<NetRequest>(&sock) {
            Ok(Some(got)) => got,
            // The VMM is gone, or we were stopped.
            Ok(None) | Err(netchan::NetChanError::Io(_)) => return,
            Err(e) => {
                state.record(EgressEvent::new(
                    state.at_ms(),
                    EgressEventKind::BrokerFailed,
                    format!("the VMM sent a bad broker message: {e}"),
                ));
                continue;
            }
        };
        // The VMM has no business sending descriptors.
        drop(stray);
        match request {
            NetRequest::Event { event } => state.record(event),
            NetRequest::Resolve { id, name } => {
                let reply_sock = sock.try_clone();
                spawn_worker(&state, reply_sock, move |state, out| {
                    let reply = resolve(state, id, &name);
                    let _ = netchan::send(out, &reply, None::<&File>);
                })
            }
            NetRequest::Connect { id, ip, port, .. } => {
                let reply_sock = sock.try_clone();
                spawn_worker(&state, reply_sock, move |state, out| {
                    match connect(state, ip, port) {
                        Ok(stream) => {
                            let reply = NetReply::Connected { id, error: None };
                            let _ = netchan::send(out, &reply, Some(&stream));
                        }
                        Err(error) => {
                            let reply = NetReply::Connected {
                                id,
                                error: Some(error),
                            };
                            let _ = netchan::send(out, &reply, None::<&File>);
                        }
                    }
                })
            }
        }
    }
}

/// Runs `work` on its own thread (resolving and connecting block), unless
/// the VM already has [`MAX_IN_FLIGHT`] requests running; then the request
/// is dropped and the VMM's own timeout answers the guest.
fn spawn_worker(
    state: &Arc<State>,
    reply_sock: io::Result<UnixDatagram>,
    work: impl FnOnce(&State, &UnixDatagram) + Send + 'static,
) {
    let Ok(out) = reply_sock else { return };
    if state.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        state.record(EgressEvent::new(
            state.at_ms(),
            EgressEventKind::BrokerFailed,
            format!("more than {MAX_IN_FLIGHT} resolutions and connects at once; one was dropped"),
        ));
        return;
    }
    let worker_state = state.clone();
    let spawned = std::thread::Builder::new()
        .name("egress-worker".into())
        .spawn(move || {
            work(&worker_state, &out);
            worker_state.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        // The closure, and its decrement, never ran.
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn resolve(state: &State, id: u64, name: &str) -> NetReply {
    let refused = |error: String| NetReply::Resolved {
        id,
        addresses: Vec::new(),
        trusted: false,
        error: Some(error),
    };
    if !state.policy.allows_name(name) {
        state.record(
            EgressEvent::new(
                state.at_ms(),
                EgressEventKind::DnsRefused,
                "the runner refused to resolve a name the policy does not allow",
            )
            .with_name(name),
        );
        return refused("name not allowed".into());
    }
    let Some(key) = sbxrun_egress::normalize_name(name) else {
        return refused("not a host name".into());
    };
    let (found, trusted) = match state.overrides.get(&key) {
        Some(ips) => (ips.clone(), true),
        None => match (key.as_str(), 0u16).to_socket_addrs() {
            Ok(addrs) => (addrs.map(|a: SocketAddr| a.ip()).collect(), false),
            Err(e) => return refused(format!("cannot resolve {key}: {e}")),
        },
    };
    // The guest only gets IPv4.
    let v4: Vec<IpAddr> = found.into_iter().filter(IpAddr::is_ipv4).collect();
    let outcome = match state.pins.lock() {
        Ok(mut pins) if trusted => pins.pin_trusted(&key, &v4),
        Ok(mut pins) => pins.pin(&key, &v4),
        Err(_) => return refused("broker state poisoned".into()),
    };
    if !outcome.dropped.is_empty() {
        let dropped: Vec<String> = outcome.dropped.iter().map(IpAddr::to_string).collect();
        state.record(
            EgressEvent::new(
                state.at_ms(),
                EgressEventKind::DnsRebindingDropped,
                format!(
                    "non-public addresses dropped from the answer: {}",
                    dropped.join(", ")
                ),
            )
            .with_name(key.as_str()),
        );
    }
    if outcome.full {
        return refused("too many names resolved by this step".into());
    }
    NetReply::Resolved {
        id,
        addresses: outcome.pinned,
        trusted,
        error: None,
    }
}

fn connect(state: &State, ip: IpAddr, port: u16) -> Result<TcpStream, String> {
    let decision = match state.pins.lock() {
        Ok(pins) => state.policy.check_connect(ip, port, &pins),
        Err(_) => return Err("broker state poisoned".into()),
    };
    if let ConnectDecision::Deny(reason) = decision {
        state.record(
            EgressEvent::connect_denied(state.at_ms(), ip, port, &reason)
                .with_name("(checked again by the runner)"),
        );
        return Err(reason.to_string());
    }
    let stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), state.connect_timeout)
        .map_err(|e| {
            state.record(
                EgressEvent::new(
                    state.at_ms(),
                    EgressEventKind::BrokerFailed,
                    format!("cannot connect: {e}"),
                )
                .with_ip(ip)
                .with_port(port),
            );
            format!("cannot connect to {ip}:{port}: {e}")
        })?;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbxrun_egress::{PolicyRule, RuleHost};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn allow(rules: &[(&str, Option<u16>)]) -> EgressPolicy {
        EgressPolicy::Allow(
            rules
                .iter()
                .map(|(host, port)| PolicyRule {
                    host: RuleHost::Domain((*host).into()),
                    port: *port,
                })
                .collect(),
        )
    }

    fn broker(policy: EgressPolicy, overrides: Overrides) -> (Broker, UnixDatagram) {
        let (runner, vmm) = netchan::pair().unwrap();
        let b = Broker::start(
            runner,
            BrokerConfig {
                policy: policy.clone(),
                overrides: Arc::new(overrides),
                connect_timeout: Duration::from_secs(2),
            },
        )
        .unwrap();
        let (first, _) = netchan::recv::<NetReply>(&vmm).unwrap().unwrap();
        assert_eq!(first, NetReply::Policy { policy });
        (b, vmm)
    }

    fn ask(vmm: &UnixDatagram, req: NetRequest) -> (NetReply, Option<File>) {
        netchan::send(vmm, &req, None::<&File>).unwrap();
        netchan::recv::<NetReply>(vmm).unwrap().unwrap()
    }

    #[test]
    fn parse_override_accepts_names_and_address_lists() {
        let (name, ips) = parse_override("Svc.Test=127.0.0.1,10.0.0.2").unwrap();
        assert_eq!(name, "svc.test");
        assert_eq!(ips.len(), 2);
        assert!(parse_override("svc.test").is_err());
        assert!(parse_override("svc.test=nope").is_err());
        assert!(parse_override("bad name=1.2.3.4").is_err());
    }

    #[test]
    fn an_allowed_override_resolves_trusted_and_connects_for_real() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let overrides = Overrides::from([("svc.test".into(), vec!["127.0.0.1".parse().unwrap()])]);
        let (b, vmm) = broker(allow(&[("svc.test", None)]), overrides);
        let (reply, _) = ask(
            &vmm,
            NetRequest::Resolve {
                id: 1,
                name: "svc.test".into(),
            },
        );
        assert_eq!(
            reply,
            NetReply::Resolved {
                id: 1,
                addresses: vec!["127.0.0.1".parse().unwrap()],
                trusted: true,
                error: None
            }
        );
        let (reply, fd) = ask(
            &vmm,
            NetRequest::Connect {
                id: 2,
                ip: "127.0.0.1".parse().unwrap(),
                port,
                names: vec!["svc.test".into()],
            },
        );
        assert_eq!(reply, NetReply::Connected { id: 2, error: None });
        let mut stream = TcpStream::from(std::os::fd::OwnedFd::from(fd.expect("a socket")));
        stream.set_nonblocking(false).unwrap();
        stream.write_all(b"ping").unwrap();
        let (mut accepted, _) = server.accept().unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(b.finish().events().is_empty());
    }

    #[test]
    fn the_runner_refuses_what_the_policy_denies_even_if_the_vmm_asks() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let (b, vmm) = broker(allow(&[("svc.test", None)]), Overrides::new());
        let (reply, _) = ask(
            &vmm,
            NetRequest::Resolve {
                id: 1,
                name: "evil.test".into(),
            },
        );
        assert!(matches!(reply, NetReply::Resolved { error: Some(_), .. }));
        // Never resolved as trusted: loopback stays out of reach.
        let (reply, fd) = ask(
            &vmm,
            NetRequest::Connect {
                id: 2,
                ip: "127.0.0.1".parse().unwrap(),
                port,
                names: vec![],
            },
        );
        assert!(matches!(reply, NetReply::Connected { error: Some(_), .. }));
        assert!(fd.is_none());
        server.set_nonblocking(true).unwrap();
        assert!(server.accept().is_err(), "nothing may reach the server");
        let log = b.finish();
        let kinds: Vec<_> = log.events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![EgressEventKind::DnsRefused, EgressEventKind::ConnectDenied]
        );
    }

    #[test]
    fn events_from_the_vmm_are_kept() {
        let (b, vmm) = broker(EgressPolicy::None, Overrides::new());
        let event = EgressEvent::new(5, EgressEventKind::ProtocolDropped, "udp to 8.8.8.8:53");
        netchan::send(
            &vmm,
            &NetRequest::Event {
                event: event.clone(),
            },
            None::<&File>,
        )
        .unwrap();
        // Finishing right away still keeps what the VMM sent: the reader
        // may not have taken it yet, and `finish` drains the rest.
        assert_eq!(b.finish().events(), &[event]);
        drop(vmm);
    }
}
