//! A step's egress policy in the wire form the VMM and the broker apply:
//! the manifest's spans dropped, an IP turned into a full-length CIDR,
//! names lowercase without a trailing dot.

use sbxrun_egress::{normalize_pattern, EgressPolicy, PolicyRule, RuleHost};

use crate::manifest::{Egress, EgressRule, HostPattern};

/// The wire form of a manifest policy.
pub fn egress_policy(egress: &Egress) -> EgressPolicy {
    match egress {
        Egress::None => EgressPolicy::None,
        Egress::Public => EgressPolicy::Public,
        Egress::Allow(rules) => EgressPolicy::Allow(rules.iter().map(|r| policy_rule(r)).collect()),
    }
}

/// The wire form of one manifest rule.
fn policy_rule(rule: &EgressRule) -> PolicyRule {
    let host = match &rule.host {
        HostPattern::Domain(d) => RuleHost::Domain(normalize_pattern(d)),
        HostPattern::Wildcard(s) => RuleHost::Wildcard(normalize_pattern(s)),
        HostPattern::Ip(ip) => RuleHost::Cidr {
            addr: *ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        },
        HostPattern::Cidr { addr, prefix } => RuleHost::Cidr {
            addr: *addr,
            prefix: *prefix,
        },
    };
    PolicyRule {
        host,
        port: rule.port,
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "policy_connect_tests.rs"]
mod connect_tests;
