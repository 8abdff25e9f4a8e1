//! The egress policy as the VMM and the runner's broker apply it: which
//! names the guest may resolve, and which TCP connections it may open.
//!
//! The manifest's `Egress` keeps spans for diagnostics; [`EgressPolicy`]
//! is the plain form the runner sends to the VMM as JSON. Decisions are
//! pure functions of the policy, the address and the names the VMM pinned
//! while answering the guest's DNS ([`PinSet`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::address::{canonical, cidr_contains};
pub use super::address::{classify, AddressClass};
pub use super::pins::{PinOutcome, PinSet, MAX_PINS};

/// A step's egress policy, as sent from the runner to the VMM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressPolicy {
    /// No network at all.
    #[default]
    None,
    /// Any public address; the host's own networks stay out of reach.
    Public,
    /// Only what the rules name.
    Allow(Vec<PolicyRule>),
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// What the rule matches.
    pub host: RuleHost,
    /// The one port allowed, or any port.
    pub port: Option<u16>,
}

/// What an allow rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleHost {
    /// One DNS name, lowercase, without a trailing dot.
    Domain(String),
    /// Every name strictly below this suffix (written `*.suffix`; the
    /// suffix itself is not matched).
    Wildcard(String),
    /// An address range; a single address is a /32 or /128.
    Cidr {
        /// The network address.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

/// May the guest open this connection, and on what grounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Open it.
    Allow(Grant),
    /// Refuse it.
    Deny(DenyReason),
}

/// Why a connection is allowed, which decides what is checked next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An address rule (or the `public` policy) covers the address; the
    /// bytes on the connection are not inspected.
    Address,
    /// The address is reachable only because these allowed names were
    /// resolved to it. The first bytes (TLS SNI or HTTP Host) must name one
    /// of them: several sites share an address on a CDN.
    Names(Vec<String>),
}

/// Why a connection was refused; [`Display`](fmt::Display) reads as a
/// sentence in the step's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The policy is `none`.
    NoNetwork,
    /// The address is not public and no address rule names its range.
    NonPublicAddress {
        /// The address the guest asked for.
        ip: IpAddr,
        /// What kind of address it is.
        class: AddressClass,
    },
    /// Unspecified, multicast or broadcast: never a TCP peer. (Connecting
    /// to 0.0.0.0 would reach the host itself.)
    Unroutable {
        /// The address the guest asked for.
        ip: IpAddr,
        /// What kind of address it is.
        class: AddressClass,
    },
    /// A public address no rule covers and no allowed name resolved to on
    /// this port.
    NotAllowed {
        /// The address the guest asked for.
        ip: IpAddr,
        /// The port the guest asked for.
        port: u16,
        /// Names that were resolved to this address but are not allowed on
        /// this port.
        names: Vec<String>,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoNetwork => f.write_str("the step has no network access (egress: none)"),
            DenyReason::NonPublicAddress { ip, class } => {
                write!(
                    f,
                    "address {ip} is {} and no rule names it",
                    class.describe()
                )
            }
            DenyReason::Unroutable { ip, class } => {
                write!(
                    f,
                    "address {ip} is {} and is never reachable",
                    class.describe()
                )
            }
            DenyReason::NotAllowed { ip, port, names } if names.is_empty() => write!(
                f,
                "no rule allows {} and no allowed name resolved to it",
                SocketAddr::new(*ip, *port)
            ),
            DenyReason::NotAllowed { ip, port, names } => {
                const SHOWN: usize = 3;
                let mut list = names
                    .iter()
                    .take(SHOWN)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if names.len() > SHOWN {
                    list.push_str(&format!(" and {} more", names.len() - SHOWN));
                }
                write!(
                    f,
                    "{ip} was resolved for {list}, which no rule allows on port {port}"
                )
            }
        }
    }
}

impl EgressPolicy {
    /// May the guest resolve `name` (on any port)? Invalid host names never
    /// may.
    pub fn allows_name(&self, name: &str) -> bool {
        self.name_rule(name, None)
    }

    /// May the guest reach `name` on `port`? A name rule with a port
    /// matches only that port.
    pub fn allows_name_on_port(&self, name: &str, port: u16) -> bool {
        self.name_rule(name, Some(port))
    }

    fn name_rule(&self, name: &str, port: Option<u16>) -> bool {
        let Some(name) = normalize_name(name) else {
            return false;
        };
        match self {
            EgressPolicy::None => false,
            EgressPolicy::Public => true,
            EgressPolicy::Allow(rules) => rules
                .iter()
                .any(|r| port.is_none_or(|p| r.allows_port(p)) && r.host.matches_name(&name)),
        }
    }

    /// Decides a TCP connect from the guest to `ip:port`.
    ///
    /// Under an allow list, an address rule opens the address directly; a
    /// non-public address needs a rule whose range starts in the same kind
    /// of network (`10.0.0.0/8` reaches 10.1.2.3, `0.0.0.0/0` does not, and
    /// the metadata endpoint needs `169.254.169.254` itself). Otherwise the
    /// address must be pinned to a name allowed on `port`; for a non-public
    /// address, only an operator pin ([`PinSet::pin_trusted`]) counts.
    pub fn check_connect(&self, ip: IpAddr, port: u16, pins: &PinSet) -> ConnectDecision {
        let target = canonical(ip);
        let class = classify(target);
        let deny = ConnectDecision::Deny;
        match self {
            EgressPolicy::None => deny(DenyReason::NoNetwork),
            _ if class.is_unroutable() => deny(DenyReason::Unroutable { ip, class }),
            EgressPolicy::Public if class == AddressClass::Public => {
                ConnectDecision::Allow(Grant::Address)
            }
            EgressPolicy::Public => deny(DenyReason::NonPublicAddress { ip, class }),
            EgressPolicy::Allow(rules) => {
                if rules
                    .iter()
                    .any(|r| r.allows_port(port) && r.host.reaches_address(target, class))
                {
                    return ConnectDecision::Allow(Grant::Address);
                }
                let names: Vec<String> = pins
                    .reachable_names_for(target)
                    .filter(|n| self.allows_name_on_port(n, port))
                    .map(str::to_owned)
                    .collect();
                if !names.is_empty() {
                    return ConnectDecision::Allow(Grant::Names(names));
                }
                if class != AddressClass::Public {
                    return deny(DenyReason::NonPublicAddress { ip, class });
                }
                let names = pins.names_for(target).map(str::to_owned).collect();
                deny(DenyReason::NotAllowed { ip, port, names })
            }
        }
    }

    /// For a [`Grant::Names`] connection: is the TLS server name or HTTP
    /// Host the guest sent allowed on `port`, and was it resolved to `ip`?
    /// Both must hold, or the guest could reach one site through another's
    /// address.
    pub fn allows_server_name(
        &self,
        server_name: &str,
        ip: IpAddr,
        port: u16,
        pins: &PinSet,
    ) -> bool {
        self.allows_name_on_port(server_name, port) && pins.is_pinned(server_name, ip)
    }
}

impl PolicyRule {
    fn allows_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

impl RuleHost {
    /// `name` must already be normalized. Rules are compared
    /// case-insensitively too, since the wire form may be written by hand.
    fn matches_name(&self, name: &str) -> bool {
        match self {
            RuleHost::Domain(d) => strip_dot(d).eq_ignore_ascii_case(name),
            RuleHost::Wildcard(suffix) => {
                let suffix = strip_dot(suffix);
                // `name` is ASCII, so any byte index is a char boundary.
                name.len() > suffix.len() + 1
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            RuleHost::Cidr { .. } => false,
        }
    }

    /// A rule reaches a non-public address only if the rule's own network
    /// is of the same kind: a broad range written for the internet must not
    /// sweep in loopback or the metadata endpoint.
    fn reaches_address(&self, target: IpAddr, class: AddressClass) -> bool {
        match *self {
            RuleHost::Cidr { addr, prefix } => {
                cidr_contains(addr, prefix, target)
                    && (class == AddressClass::Public || classify(canonical(addr)) == class)
            }
            RuleHost::Domain(_) | RuleHost::Wildcard(_) => false,
        }
    }
}

fn strip_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

/// A rule's name or wildcard suffix in wire form: lowercase, without the
/// trailing dot.
pub fn normalize_pattern(s: &str) -> String {
    strip_dot(s).to_ascii_lowercase()
}

/// Longest DNS name in text form, without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// `name` lowercased and without one trailing dot, if it is a host name:
/// labels of 1 to 63 letters, digits, `-` or `_`, at most 253 characters.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = strip_dot(name);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            (1..=MAX_LABEL).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}
