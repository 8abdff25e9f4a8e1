//! The stack driven by a guest made of a second smoltcp interface, with a
//! broker that connects for real to servers on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use smoltcp::socket::tcp;

use super::test_guest::{a_records, dns_query, rcode, Harness};
use super::{NetInput, GATEWAY_IP};
use sbxrun_egress::dns::{TYPE_A, TYPE_AAAA};
use sbxrun_egress::{EgressEventKind, EgressPolicy, PolicyRule, RuleHost};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn allow(rules: &[RuleHost]) -> Option<EgressPolicy> {
    Some(EgressPolicy::Allow(
        rules
            .iter()
            .map(|host| PolicyRule {
                host: host.clone(),
                port: None,
            })
            .collect(),
    ))
}

fn domain(name: &str) -> RuleHost {
    RuleHost::Domain(name.to_owned())
}

/// A server on 127.0.0.1 that reads the request head (up to a blank
/// line, or EOF), then writes `response` and closes. Its thread returns
/// every byte it read.
fn server(response: Vec<u8>) -> (u16, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        // A request ending in "\r\n\r\n" is answered at once, anything
        // else once the guest's FIN arrives.
        while !seen.ends_with(b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = conn.write_all(&response);
        let _ = conn.shutdown(Shutdown::Both);
        seen
    });
    (port, thread)
}

/// Reads everything the guest socket receives until the peer closes.
fn read_to_end(h: &mut Harness, sock: smoltcp::iface::SocketHandle, max_steps: usize) -> Vec<u8> {
    let mut got = Vec::new();
    h.run_until(max_steps, |h| {
        let s = h.tcp(sock);
        let mut buf = [0; 4096];
        while let Ok(n) = s.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        !s.may_recv() && s.state() != tcp::State::SynSent && s.state() != tcp::State::SynReceived
    });
    got
}

/// The first address the gateway maps a name to.
const FIRST_MAPPED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

#[test]
fn dns_a_for_allowed_name_answers_its_mapped_address() {
    let public = [IpAddr::V4(PUBLIC)];
    let mut h = Harness::new(
        allow(&[domain("svc.test")]),
        &[("svc.test", &public, false)],
    );
    let sock = h.send_query(GATEWAY_IP, 7, "svc.test", TYPE_A);
    let answer = h.answer(sock);
    let query_len = dns_query(7, "svc.test", TYPE_A).len();
    assert_eq!(answer[..2], 7u16.to_be_bytes());
    assert_eq!(rcode(&answer), 0);
    // The guest sees the name's mapped address, never the real one.
    assert_eq!(a_records(&answer, query_len), [FIRST_MAPPED]);
    assert_eq!(h.log().resolves, ["svc.test"]);
    assert!(h.log().events.is_empty());
}

#[test]
fn dns_aaaa_for_allowed_name_is_empty_without_asking_the_broker() {
    let public = [IpAddr::V4(PUBLIC)];
    let mut h = Harness::new(
        allow(&[domain("svc.test")]),
        &[("svc.test", &public, false)],
    );
    let sock = h.send_query(GATEWAY_IP, 8, "svc.test", TYPE_AAAA);
    let answer = h.answer(sock);
    assert_eq!(rcode(&answer), 0);
    assert_eq!(answer.len(), dns_query(8, "svc.test", TYPE_AAAA).len());
    assert!(h.log().resolves.is_empty());
}

#[test]
fn dns_for_name_not_allowed_is_refused_without_asking_the_broker() {
    let public = [IpAddr::V4(PUBLIC)];
    let mut h = Harness::new(
        allow(&[domain("svc.test")]),
        &[("other.test", &public, false)],
    );
    let sock = h.send_query(GATEWAY_IP, 9, "other.test", TYPE_A);
    let answer = h.answer(sock);
    assert_eq!(rcode(&answer), 5);
    assert!(h.log().resolves.is_empty());
    assert_eq!(h.log().kinds(), [EgressEventKind::DnsRefused]);
    assert_eq!(h.log().events[0].name.as_deref(), Some("other.test"));
}

#[test]
fn dns_answer_drops_private_addresses_of_an_untrusted_name() {
    let ips = [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), IpAddr::V4(PUBLIC)];
    let mut h = Harness::new(allow(&[domain("svc.test")]), &[("svc.test", &ips, false)]);
    let sock = h.send_query(GATEWAY_IP, 10, "svc.test", TYPE_A);
    let answer = h.answer(sock);
    let query_len = dns_query(10, "svc.test", TYPE_A).len();
    assert_eq!(a_records(&answer, query_len), [FIRST_MAPPED]);
    assert_eq!(h.log().kinds(), [EgressEventKind::DnsRebindingDropped]);
    // Only the public address is behind it.
    assert_eq!(
        h.stack.mapped.lookup(FIRST_MAPPED).unwrap().real,
        [IpAddr::V4(PUBLIC)]
    );
}

#[test]
fn dns_broker_failure_is_servfail_and_garbage_is_formerr() {
    let mut h = Harness::new(allow(&[RuleHost::Wildcard("test".to_owned())]), &[]);
    let sock = h.send_query(GATEWAY_IP, 11, "gone.test", TYPE_A);
    assert_eq!(rcode(&h.answer(sock)), 2);
    // A query header with no question.
    let sock = h.udp_socket(5353);
    let to = smoltcp::wire::IpEndpoint::new(GATEWAY_IP.into(), 53);
    let garbage = [0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    h.sockets
        .get_mut::<smoltcp::socket::udp::Socket>(sock)
        .send_slice(&garbage, to)
        .expect("send");
    let answer = h.answer(sock);
    assert_eq!(answer[..2], [0x12, 0x34]);
    assert_eq!(rcode(&answer), 1);
}

#[test]
fn dns_to_another_server_is_dropped_with_an_event() {
    let mut h = Harness::new(allow(&[domain("svc.test")]), &[]);
    let sock = h.send_query(Ipv4Addr::new(8, 8, 8, 8), 12, "svc.test", TYPE_A);
    h.run(200);
    let got = h
        .sockets
        .get_mut::<smoltcp::socket::udp::Socket>(sock)
        .recv()
        .is_ok();
    assert!(!got, "no answer from 8.8.8.8");
    assert_eq!(h.log().kinds(), [EgressEventKind::ProtocolDropped]);
    assert_eq!(h.log().events[0].port, Some(53));
    assert!(h.log().resolves.is_empty());
}

#[test]
fn http_through_an_allowed_name_reaches_the_server_byte_exact() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let (port, server) = server(response.clone());
    let mut h = Harness::new(
        allow(&[domain("svc.test")]),
        &[("svc.test", &[LOCALHOST], true)],
    );
    let q = h.send_query(GATEWAY_IP, 1, "svc.test", TYPE_A);
    let answer = h.answer(q);
    let query_len = dns_query(1, "svc.test", TYPE_A).len();
    // A real guest would reach its own loopback at 127.0.0.1: the mapped
    // address is what makes an operator's `--resolve name=127.0.0.1` work.
    assert_eq!(a_records(&answer, query_len), [FIRST_MAPPED]);

    let sock = h.tcp_connect(FIRST_MAPPED, port, 64 * 1024);
    h.run_until(500, |h| h.tcp(sock).may_send());
    let request = b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n";
    h.tcp(sock).send_slice(request).expect("send");
    let got = read_to_end(&mut h, sock, 5000);
    assert_eq!(got, response);
    assert_eq!(server.join().expect("server"), request);
    assert_eq!(
        h.log().connects,
        [(LOCALHOST, port, vec!["svc.test".to_owned()])]
    );
    assert!(h.log().events.is_empty(), "{:?}", h.log().events);
    // Both sides closed: the connection and its socket are gone.
    h.tcp(sock).close();
    h.run_until(500, |h| h.stack.connection_count() == 0);
}

#[test]
fn host_naming_another_site_is_reset_and_the_server_sees_no_byte() {
    let (port, server) = server(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
    let mut h = Harness::new(
        allow(&[domain("svc.test"), domain("other.test")]),
        &[("svc.test", &[LOCALHOST], true)],
    );
    let q = h.send_query(GATEWAY_IP, 2, "svc.test", TYPE_A);
    h.answer(q);
    let sock = h.tcp_connect(Ipv4Addr::LOCALHOST, port, 64 * 1024);
    h.run_until(500, |h| h.tcp(sock).may_send());
    h.tcp(sock)
        .send_slice(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .expect("send");
    h.run_until(500, |h| h.tcp(sock).state() == tcp::State::Closed);
    assert_eq!(h.log().kinds(), [EgressEventKind::ServerNameMismatch]);
    assert_eq!(h.log().events[0].name.as_deref(), Some("other.test"));
    assert_eq!(server.join().expect("server"), b"");
    h.run_until(100, |h| h.stack.connection_count() == 0);
}

#[test]
fn syn_to_an_address_not_allowed_is_reset_with_an_event() {
    let mut h = Harness::new(allow(&[domain("svc.test")]), &[]);
    let target = Ipv4Addr::new(10, 9, 9, 9);
    let sock = h.tcp_connect(target, 80, 4096);
    h.run_until(200, |h| h.tcp(sock).state() == tcp::State::Closed);
    assert_eq!(h.log().kinds(), [EgressEventKind::ConnectDenied]);
    assert_eq!(h.log().events[0].ip, Some(IpAddr::V4(target)));
    assert!(h.log().connects.is_empty());
}

#[test]
fn policy_none_denies_dns_and_connects() {
    let public = [IpAddr::V4(PUBLIC)];
    let mut h = Harness::new(None, &[("svc.test", &public, false)]);
    let q = h.send_query(GATEWAY_IP, 3, "svc.test", TYPE_A);
    assert_eq!(rcode(&h.answer(q)), 5);
    let sock = h.tcp_connect(PUBLIC, 443, 4096);
    h.run_until(200, |h| h.tcp(sock).state() == tcp::State::Closed);
    assert_eq!(
        h.log().kinds(),
        [EgressEventKind::DnsRefused, EgressEventKind::ConnectDenied]
    );
    assert!(h.log().resolves.is_empty());
    assert!(h.log().connects.is_empty());
}

#[test]
fn upstream_connect_failure_resets_the_guest() {
    // Bound and dropped: nothing listens on this port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let loopback = RuleHost::Cidr {
        addr: LOCALHOST,
        prefix: 32,
    };
    let mut h = Harness::new(allow(&[loopback]), &[]);
    let sock = h.tcp_connect(Ipv4Addr::LOCALHOST, port, 4096);
    h.run_until(200, |h| h.tcp(sock).state() == tcp::State::Closed);
    assert_eq!(h.log().kinds(), [EgressEventKind::BrokerFailed]);
    assert_eq!(h.stack.connection_count(), 0);
}

#[test]
fn one_mebibyte_upstream_to_guest_arrives_byte_exact() {
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (port, server) = server(body.clone());
    let loopback = RuleHost::Cidr {
        addr: LOCALHOST,
        prefix: 32,
    };
    let mut h = Harness::new(allow(&[loopback]), &[]);
    // A small guest window: the stack must hold back, not drop or queue.
    let sock = h.tcp_connect(Ipv4Addr::LOCALHOST, port, 8 * 1024);
    h.run_until(500, |h| h.tcp(sock).may_send());
    h.tcp(sock).send_slice(b"x\r\n\r\n").expect("send");
    let got = read_to_end(&mut h, sock, 200_000);
    assert_eq!(got.len(), body.len());
    assert!(got == body, "bytes differ");
    assert_eq!(server.join().expect("server"), b"x\r\n\r\n");
    assert!(h.log().events.is_empty(), "{:?}", h.log().events);
}

#[test]
fn frames_the_guest_refused_are_delivered_after_rx_space() {
    let mut h = Harness::new(allow(&[domain("svc.test")]), &[]);
    // Let ARP settle first, so the query is the only frame held back.
    let q = h.send_query(GATEWAY_IP, 4, "nope.test", TYPE_A);
    h.answer(q);
    h.port.lock().expect("port").refuse = true;
    let q = h.send_query(GATEWAY_IP, 5, "nope.test", TYPE_A);
    h.run(20);
    let pending = h
        .sockets
        .get_mut::<smoltcp::socket::udp::Socket>(q)
        .recv()
        .is_ok();
    assert!(!pending);
    h.port.lock().expect("port").refuse = false;
    let now = h.now;
    h.stack.handle(NetInput::RxSpace, now);
    assert_eq!(rcode(&h.answer(q)), 5);
}

#[test]
fn guest_half_close_reaches_the_server_and_the_answer_still_comes_back() {
    let (port, server) = server(b"done".to_vec());
    let loopback = RuleHost::Cidr {
        addr: LOCALHOST,
        prefix: 32,
    };
    let mut h = Harness::new(allow(&[loopback]), &[]);
    let sock = h.tcp_connect(Ipv4Addr::LOCALHOST, port, 4096);
    h.run_until(500, |h| h.tcp(sock).may_send());
    h.tcp(sock).send_slice(b"upload").expect("send");
    h.tcp(sock).close();
    let got = read_to_end(&mut h, sock, 5000);
    assert_eq!(got, b"done");
    assert_eq!(server.join().expect("server"), b"upload");
    h.run_until(500, |h| h.stack.connection_count() == 0);
}

#[test]
fn other_protocol_to_a_site_allowed_by_name_is_reset() {
    let (port, server) = server(Vec::new());
    let mut h = Harness::new(
        allow(&[domain("svc.test")]),
        &[("svc.test", &[LOCALHOST], true)],
    );
    let q = h.send_query(GATEWAY_IP, 6, "svc.test", TYPE_A);
    h.answer(q);
    let sock = h.tcp_connect(Ipv4Addr::LOCALHOST, port, 4096);
    h.run_until(500, |h| h.tcp(sock).may_send());
    h.tcp(sock)
        .send_slice(b"SSH-2.0-OpenSSH_9.2\r\n")
        .expect("send");
    h.run_until(500, |h| h.tcp(sock).state() == tcp::State::Closed);
    assert_eq!(h.log().kinds(), [EgressEventKind::ProtocolDropped]);
    assert_eq!(server.join().expect("server"), b"");
}
