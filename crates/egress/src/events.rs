//! What the step's report says about its network: every refused name,
//! denied connection and dropped answer, as structured events. A guest can
//! cause millions of these, so the log keeps the first few hundred in full
//! and only counts the rest.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::policy::DenyReason;

/// How many events a log keeps by default.
pub const DEFAULT_EVENT_LIMIT: usize = 256;
/// The longest `detail` kept, in bytes; longer ones are cut.
pub const MAX_DETAIL: usize = 512;
/// The longest `name` kept, in bytes (a DNS name is at most 253).
pub const MAX_EVENT_NAME: usize = 253;

/// One egress event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEvent {
    /// Milliseconds since the step started.
    pub at_ms: u64,
    /// What happened.
    pub kind: EgressEventKind,
    /// The DNS name, server name or Host involved, if any.
    pub name: Option<String>,
    /// The address involved, if any.
    pub ip: Option<IpAddr>,
    /// The port involved, if any.
    pub port: Option<u16>,
    /// A sentence for the report.
    pub detail: String,
}

/// The kinds of egress event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressEventKind {
    /// A DNS question for a name the policy does not allow.
    DnsRefused,
    /// Non-public addresses removed from the answer for a public name.
    DnsRebindingDropped,
    /// A TCP connect the policy denies.
    ConnectDenied,
    /// The TLS server name or HTTP Host is not an allowed name pinned to
    /// the address connected to.
    ServerNameMismatch,
    /// A connection that needed a name check sent neither TLS nor HTTP, or
    /// a packet of a protocol the VMM does not forward.
    ProtocolDropped,
    /// The broker could not open an allowed connection.
    BrokerFailed,
}

impl EgressEventKind {
    /// The kind as it is spelled in reports (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            EgressEventKind::DnsRefused => "dns-refused",
            EgressEventKind::DnsRebindingDropped => "dns-rebinding-dropped",
            EgressEventKind::ConnectDenied => "connect-denied",
            EgressEventKind::ServerNameMismatch => "server-name-mismatch",
            EgressEventKind::ProtocolDropped => "protocol-dropped",
            EgressEventKind::BrokerFailed => "broker-failed",
        }
    }

    /// Every kind, in declaration order.
    pub const ALL: [EgressEventKind; 6] = [
        EgressEventKind::DnsRefused,
        EgressEventKind::DnsRebindingDropped,
        EgressEventKind::ConnectDenied,
        EgressEventKind::ServerNameMismatch,
        EgressEventKind::ProtocolDropped,
        EgressEventKind::BrokerFailed,
    ];
}

impl EgressEvent {
    /// An event with no name, address or port; add them with the `with_`
    /// methods.
    pub fn new(at_ms: u64, kind: EgressEventKind, detail: impl Into<String>) -> Self {
        EgressEvent {
            at_ms,
            kind,
            name: None,
            ip: None,
            port: None,
            detail: detail.into(),
        }
    }

    /// A denied connect, with the reason as its detail.
    pub fn connect_denied(at_ms: u64, ip: IpAddr, port: u16, reason: &DenyReason) -> Self {
        EgressEvent::new(at_ms, EgressEventKind::ConnectDenied, reason.to_string())
            .with_ip(ip)
            .with_port(port)
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the address.
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

/// How many events of each kind were recorded, kept or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EventCounts {
    /// [`EgressEventKind::DnsRefused`] events.
    pub dns_refused: u64,
    /// [`EgressEventKind::DnsRebindingDropped`] events.
    pub dns_rebinding_dropped: u64,
    /// [`EgressEventKind::ConnectDenied`] events.
    pub connect_denied: u64,
    /// [`EgressEventKind::ServerNameMismatch`] events.
    pub server_name_mismatch: u64,
    /// [`EgressEventKind::ProtocolDropped`] events.
    pub protocol_dropped: u64,
    /// [`EgressEventKind::BrokerFailed`] events.
    pub broker_failed: u64,
}

impl EventCounts {
    /// The count for one kind.
    pub fn get(&self, kind: EgressEventKind) -> u64 {
        match kind {
            EgressEventKind::DnsRefused => self.dns_refused,
            EgressEventKind::DnsRebindingDropped => self.dns_rebinding_dropped,
            EgressEventKind::ConnectDenied => self.connect_denied,
            EgressEventKind::ServerNameMismatch => self.server_name_mismatch,
            EgressEventKind::ProtocolDropped => self.protocol_dropped,
            EgressEventKind::BrokerFailed => self.broker_failed,
        }
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        EgressEventKind::ALL
            .iter()
            .fold(0u64, |sum, &k| sum.saturating_add(self.get(k)))
    }

    fn bump(&mut self, kind: EgressEventKind) {
        let slot = match kind {
            EgressEventKind::DnsRefused => &mut self.dns_refused,
            EgressEventKind::DnsRebindingDropped => &mut self.dns_rebinding_dropped,
            EgressEventKind::ConnectDenied => &mut self.connect_denied,
            EgressEventKind::ServerNameMismatch => &mut self.server_name_mismatch,
            EgressEventKind::ProtocolDropped => &mut self.protocol_dropped,
            EgressEventKind::BrokerFailed => &mut self.broker_failed,
        };
        *slot = slot.saturating_add(1);
    }
}

/// A log's contents once the step is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogParts {
    /// The first events, in the order recorded.
    pub events: Vec<EgressEvent>,
    /// Every event recorded, by kind, including those not kept.
    pub counts: EventCounts,
    /// How many events were counted but not kept.
    pub dropped: u64,
}

/// The egress events of one step: the first `limit` in full, all of them
/// counted. The first events are the ones kept because the first denial
/// usually explains the failures after it.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: Vec<EgressEvent>,
    limit: usize,
    counts: EventCounts,
    dropped: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::with_limit(DEFAULT_EVENT_LIMIT)
    }
}

impl EventLog {
    /// A log keeping [`DEFAULT_EVENT_LIMIT`] events.
    pub fn new() -> Self {
        EventLog::default()
    }

    /// A log keeping at most `limit` events.
    pub fn with_limit(limit: usize) -> Self {
        EventLog {
            events: Vec::new(),
            limit,
            counts: EventCounts::default(),
            dropped: 0,
        }
    }

    /// Counts the event and keeps it if there is room. Over-long names and
    /// details are cut so a kept event has a bounded size.
    pub fn record(&mut self, mut event: EgressEvent) {
        self.counts.bump(event.kind);
        if self.events.len() >= self.limit {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        if let Some(name) = &mut event.name {
            clip(name, MAX_EVENT_NAME);
        }
        clip(&mut event.detail, MAX_DETAIL);
        if self.events.len() == self.events.capacity() {
            // Grow by doubling, but never past the limit.
            let want = (self.events.len() * 2).max(4).min(self.limit);
            self.events.reserve_exact(want - self.events.len());
        }
        self.events.push(event);
    }

    /// The events kept so far.
    pub fn events(&self) -> &[EgressEvent] {
        &self.events
    }

    /// How many events were counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Every event recorded so far, by kind.
    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// The kept events, the counts and the number dropped.
    pub fn into_parts(self) -> EventLogParts {
        EventLogParts {
            events: self.events,
            counts: self.counts,
            dropped: self.dropped,
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut, and gives the memory back.
fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    const MARK: char = '…';
    let mut cut = max.saturating_sub(MARK.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push(MARK);
    text.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EgressEventKind, detail: &str) -> EgressEvent {
        EgressEvent::new(0, kind, detail)
    }

    #[test]
    fn event_log_keeps_the_first_events_and_counts_the_rest() {
        let mut log = EventLog::with_limit(3);
        for i in 0..5u64 {
            log.record(EgressEvent::new(i, EgressEventKind::ConnectDenied, "x"));
        }
        log.record(event(EgressEventKind::DnsRefused, "y"));
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.counts().connect_denied, 5);
        assert_eq!(log.counts().dns_refused, 1);
        assert_eq!(log.counts().total(), 6);
        let parts = log.into_parts();
        assert_eq!(
            parts.events.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(parts.dropped, 3);
    }

    #[test]
    fn ten_thousand_records_keep_memory_bounded() {
        let mut log = EventLog::new();
        let huge = "x".repeat(64 * 1024);
        for i in 0..10_000u64 {
            let kind = EgressEventKind::ALL[(i % 6) as usize];
            log.record(
                EgressEvent::new(i, kind, huge.as_str())
                    .with_name(huge.as_str())
                    .with_ip(IpAddr::from([10, 0, 0, 1])),
            );
        }
        assert_eq!(log.dropped(), 10_000 - DEFAULT_EVENT_LIMIT as u64);
        assert_eq!(log.counts().total(), 10_000);
        for kind in EgressEventKind::ALL {
            assert!(log.counts().get(kind) >= 1666, "{kind:?}");
        }
        let parts = log.into_parts();
        assert_eq!(parts.events.len(), DEFAULT_EVENT_LIMIT);
        assert!(parts.events.capacity() <= DEFAULT_EVENT_LIMIT);
        for e in &parts.events {
            assert!(e.detail.len() <= MAX_DETAIL && e.detail.capacity() <= MAX_DETAIL);
            let name = e.name.as_deref().unwrap_or_default();
            assert!(name.len() <= MAX_EVENT_NAME);
        }
    }

    #[test]
    fn event_log_capacity_never_exceeds_an_odd_limit() {
        let mut log = EventLog::with_limit(5);
        for _ in 0..20 {
            log.record(event(EgressEventKind::BrokerFailed, "b"));
        }
        assert!(log.into_parts().events.capacity() <= 5);
    }

    #[test]
    fn zero_limit_log_only_counts() {
        let mut log = EventLog::with_limit(0);
        log.record(event(EgressEventKind::ProtocolDropped, "p"));
        assert!(log.events().is_empty());
        assert_eq!(log.dropped(), 1);
        assert_eq!(log.counts().protocol_dropped, 1);
    }

    #[test]
    fn long_details_are_cut_on_a_character_boundary() {
        let mut log = EventLog::new();
        log.record(event(EgressEventKind::DnsRefused, &"é".repeat(1000)));
        let detail = &log.events()[0].detail;
        assert!(detail.len() <= MAX_DETAIL);
        assert!(detail.ends_with('…'));
        assert!(detail.starts_with("éé"));
    }

    #[test]
    fn events_serialize_with_kebab_case_kinds() {
        let ev = EgressEvent::connect_denied(
            12,
            IpAddr::from([10, 0, 0, 1]),
            22,
            &DenyReason::NonPublicAddress {
                ip: IpAddr::from([10, 0, 0, 1]),
                class: crate::AddressClass::Private,
            },
        );
        let json = serde_json::to_value(&ev).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "at_ms": 12,
                "kind": "connect-denied",
                "name": null,
                "ip": "10.0.0.1",
                "port": 22,
                "detail": "address 10.0.0.1 is private and no rule names it",
            })
        );
        let back: EgressEvent = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, ev);
        for (kind, text) in EgressEventKind::ALL.iter().zip([
            "dns-refused",
            "dns-rebinding-dropped",
            "connect-denied",
            "server-name-mismatch",
            "protocol-dropped",
            "broker-failed",
        ]) {
            assert_eq!(
                serde_json::to_value(kind).expect("serialize"),
                serde_json::json!(text)
            );
        }
    }

    #[test]
    fn counts_serialize_by_kind() {
        let mut log = EventLog::new();
        log.record(event(EgressEventKind::DnsRebindingDropped, "r"));
        let json = serde_json::to_value(log.counts()).expect("serialize");
        assert_eq!(json["dns-rebinding-dropped"], 1);
        assert_eq!(json["broker-failed"], 0);
    }

    #[test]
    fn kind_names_match_their_serde_spelling() {
        for kind in EgressEventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}
