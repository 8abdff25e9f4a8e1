//! The gateway's DNS server: answers allowed names with what the broker
//! resolved, pins every answer so a later connect can be traced back to a
//! name, and refuses everything else without asking anyone.
//!
//! Queries are taken off the wire before smoltcp sees them, and answers are
//! built with `smoltcp::wire`: a UDP socket would add nothing but a copy,
//! since the answer waits for the broker anyway.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use super::device::ETHERNET_HEADER_LEN;
use super::stack::NetStack;
use super::{DNS_PORT, GATEWAY_IP, GATEWAY_MAC};
use sbxrun_egress::dns::{self as wire_dns, CLASS_IN, TYPE_A};
use sbxrun_egress::{DnsQuery, EgressEvent, EgressEventKind};

/// Queries waiting for the broker at once; more are answered SERVFAIL so a
/// guest cannot queue unbounded work in the runner.
const MAX_PENDING_QUERIES: usize = 64;
/// TTL of the answers: short, since every connect is checked anyway.
const ANSWER_TTL: u32 = 60;
const TOO_MANY_NAMES: &str = "too many names resolved in this step";
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const HOP_LIMIT: u8 = 64;

/// Where a query came from, so the answer goes back there.
#[derive(Debug, Clone, Copy)]
pub(super) struct DnsClient {
    pub(super) mac: [u8; 6],
    pub(super) ip: Ipv4Addr,
    pub(super) port: u16,
}

/// A query waiting for the broker's answer.
#[derive(Debug)]
pub(super) struct DnsWait {
    query: DnsQuery,
    client: DnsClient,
}

impl NetStack {
    /// A UDP payload sent to the gateway's port 53.
    pub(super) fn on_dns(&mut self, client: DnsClient, payload: &[u8], now: Instant) {
        let query = match wire_dns::parse_query(payload) {
            Ok(query) => query,
            Err(_) => {
                // Answer what is recognisably a query; noise gets nothing.
                if let Some(id) = wire_dns::query_id(payload) {
                    self.answer(client, &wire_dns::formerr(id));
                }
                return;
            }
        };
        if !self.policy.allows_name(&query.name) {
            let reply = wire_dns::refused(&query);
            self.refuse(
                client,
                &query,
                &reply,
                "the policy does not allow this name",
                now,
            );
            return;
        }
        // Only A records are resolved: the guest has no IPv6 route, and
        // other types (MX, TXT, ...) are no use without a connection.
        if query.qtype != TYPE_A || query.qclass != CLASS_IN {
            self.answer(client, &wire_dns::empty_answer(&query));
            return;
        }
        if self.dns.len() >= MAX_PENDING_QUERIES {
            self.answer(client, &wire_dns::servfail(&query));
            return;
        }
        let id = self.next_id();
        self.broker.resolve(id, &query.name);
        self.dns.insert(id, DnsWait { query, client });
    }

    /// The broker's answer to a query.
    pub(super) fn on_resolved(
        &mut self,
        id: u64,
        result: Result<(Vec<IpAddr>, bool), String>,
        now: Instant,
    ) {
        let Some(DnsWait { query, client }) = self.dns.remove(&id) else {
            return;
        };
        let (ips, trusted) = match result {
            Ok(answer) => answer,
            Err(error) => {
                let event = EgressEvent::new(
                    self.at_ms(now),
                    EgressEventKind::BrokerFailed,
                    format!("resolving failed: {error}"),
                )
                .with_name(query.name.as_str());
                self.event(event);
                self.answer(client, &wire_dns::servfail(&query));
                return;
            }
        };
        if ips.is_empty() {
            self.answer(client, &wire_dns::nxdomain(&query));
            return;
        }
        let outcome = if trusted {
            self.pins.pin_trusted(&query.name, &ips)
        } else {
            self.pins.pin(&query.name, &ips)
        };
        if let Some(&first) = outcome.dropped.first() {
            let list: Vec<String> = outcome.dropped.iter().map(IpAddr::to_string).collect();
            let event = EgressEvent::new(
                self.at_ms(now),
                EgressEventKind::DnsRebindingDropped,
                format!(
                    "non-public addresses removed from the answer: {}",
                    list.join(", ")
                ),
            )
            .with_name(query.name.as_str())
            .with_ip(first);
            self.event(event);
        }
        if outcome.full {
            let reply = wire_dns::servfail(&query);
            self.refuse(client, &query, &reply, TOO_MANY_NAMES, now);
            return;
        }
        let v4: Vec<IpAddr> = outcome
            .pinned
            .iter()
            .filter(|ip| ip.is_ipv4())
            .copied()
            .collect();
        if v4.is_empty() {
            self.answer(client, &wire_dns::empty_answer(&query));
            return;
        }
        // The guest gets the name's own mapped address, never the real one
        // (see `mapped`).
        let Some(addr) = self.mapped.map(&query.name, &v4) else {
            let reply = wire_dns::servfail(&query);
            self.refuse(client, &query, &reply, TOO_MANY_NAMES, now);
            return;
        };
        self.answer(client, &wire_dns::answer_a(&query, &[addr], ANSWER_TTL));
    }

    /// Answers `reply` and records why the name was refused.
    fn refuse(
        &mut self,
        client: DnsClient,
        query: &DnsQuery,
        reply: &[u8],
        why: &str,
        now: Instant,
    ) {
        let event = EgressEvent::new(self.at_ms(now), EgressEventKind::DnsRefused, why)
            .with_name(query.name.as_str());
        self.event(event);
        self.answer(client, reply);
    }

    /// Sends a DNS message from the gateway's port 53 to `client`.
    fn answer(&mut self, client: DnsClient, message: &[u8]) {
        self.send_to_guest(udp_frame(client, message));
    }
}

/// An Ethernet frame carrying `payload` from the gateway's DNS port.
fn udp_frame(client: DnsClient, payload: &[u8]) -> Vec<u8> {
    let checksums = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: DNS_PORT,
        dst_port: client.port,
    };
    let ip = Ipv4Repr {
        src_addr: GATEWAY_IP,
        dst_addr: client.ip,
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER_LEN + payload.len(),
        hop_limit: HOP_LIMIT,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GATEWAY_MAC),
        dst_addr: EthernetAddress(client.mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    // The builders in egress::dns never pass 512 bytes, so this fits the MTU.
    let mut frame = vec![0; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + ip.payload_len];
    let mut eth_frame = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut eth_frame);
    let mut ip_packet = Ipv4Packet::new_unchecked(eth_frame.payload_mut());
    ip.emit(&mut ip_packet, &checksums);
    let mut udp_packet = UdpPacket::new_unchecked(ip_packet.payload_mut());
    udp.emit(
        &mut udp_packet,
        &IpAddress::Ipv4(GATEWAY_IP),
        &IpAddress::Ipv4(client.ip),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &checksums,
    );
    frame
}
