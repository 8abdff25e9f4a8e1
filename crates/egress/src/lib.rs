//! Per-step network egress, the part without I/O: the policy the runner
//! sends to the VMM, the DNS messages the VMM answers the guest with, the
//! first-bytes sniffer that reads a TLS server name or HTTP Host, and the
//! bounded log of denials that ends up in the step's report.
//!
//! Everything here parses bytes written by a hostile guest: no function
//! panics on any input, and every length is checked before use.

#![forbid(unsafe_code)]

mod address;

pub mod dns;
pub mod events;
mod pins;
pub mod policy;
pub mod sniff;

pub use dns::{DnsError, DnsQuery};
pub use events::{EgressEvent, EgressEventKind, EventCounts, EventLog, EventLogParts};
pub use policy::{
    classify, normalize_name, normalize_pattern, AddressClass, ConnectDecision, DenyReason,
    EgressPolicy, Grant, PinOutcome, PinSet, PolicyRule, RuleHost, MAX_PINS,
};
pub use sniff::{sniff, Sniff, SNIFF_LIMIT};
