//! Policy decisions, one behaviour per test: the wire form, names and DNS
//! pins here; connects, messages and properties in `policy_connect_tests.rs`.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::manifest::Spanned;
use sbxrun_egress::*;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A policy from manifest-style entries, through the manifest's own parser.
pub(super) fn allow(entries: &[&str]) -> EgressPolicy {
    let rules = entries
        .iter()
        .map(|e| {
            Spanned::new(
                e.parse::<EgressRule>().expect("test rule"),
                Default::default(),
            )
        })
        .collect();
    egress_policy(&Egress::Allow(rules))
}

pub(super) fn pins(entries: &[(&str, &str)]) -> PinSet {
    let mut set = PinSet::new();
    for (name, addr) in entries {
        let out = set.pin(name, &[ip(addr)]);
        assert!(out.stored(), "{name} -> {addr}: {out:?}");
    }
    set
}

pub(super) fn names(list: &[&str]) -> ConnectDecision {
    ConnectDecision::Allow(Grant::Names(list.iter().map(|s| s.to_string()).collect()))
}

// ---- wire form ----

#[test]
fn from_manifest_drops_spans_and_turns_ips_into_full_cidrs() {
    let policy = allow(&[
        "PyPI.org:443",
        "*.pythonhosted.org",
        "10.1.2.3",
        "[::1]:53",
        "10.0.0.0/8",
    ]);
    assert_eq!(
        policy,
        EgressPolicy::Allow(vec![
            PolicyRule {
                host: RuleHost::Domain("pypi.org".into()),
                port: Some(443)
            },
            PolicyRule {
                host: RuleHost::Wildcard("pythonhosted.org".into()),
                port: None
            },
            PolicyRule {
                host: RuleHost::Cidr {
                    addr: ip("10.1.2.3"),
                    prefix: 32
                },
                port: None
            },
            PolicyRule {
                host: RuleHost::Cidr {
                    addr: ip("::1"),
                    prefix: 128
                },
                port: Some(53)
            },
            PolicyRule {
                host: RuleHost::Cidr {
                    addr: ip("10.0.0.0"),
                    prefix: 8
                },
                port: None
            },
        ])
    );
}

#[test]
fn from_manifest_strips_the_trailing_dot_of_rule_names() {
    assert_eq!(allow(&["pypi.org."]), allow(&["pypi.org"]));
    assert_eq!(allow(&["*.x.org."]), allow(&["*.x.org"]));
}

#[test]
fn from_manifest_keeps_none_and_public() {
    assert_eq!(egress_policy(&Egress::None), EgressPolicy::None);
    assert_eq!(egress_policy(&Egress::Public), EgressPolicy::Public);
}

#[test]
fn policy_round_trips_through_json() {
    for policy in [
        EgressPolicy::None,
        EgressPolicy::Public,
        allow(&["a.org:443", "*.b.org", "10.0.0.0/8:5432", "2001:db8::/32"]),
    ] {
        let json = serde_json::to_string(&policy).expect("serialize");
        let back: EgressPolicy = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, policy, "{json}");
    }
}

#[test]
fn policy_json_is_tagged_and_readable() {
    assert_eq!(
        serde_json::to_string(&EgressPolicy::None).expect("serialize"),
        r#""none""#
    );
    let json = serde_json::to_value(allow(&["a.org:443", "10.0.0.0/8"])).expect("serialize");
    assert_eq!(
        json,
        serde_json::json!({ "allow": [
            { "host": { "domain": "a.org" }, "port": 443 },
            { "host": { "cidr": { "addr": "10.0.0.0", "prefix": 8 } }, "port": null },
        ]})
    );
}

#[test]
fn policy_json_with_unknown_fields_is_refused() {
    let json = r#"{"allow":[{"host":{"domain":"a.org"},"port":null,"extra":1}]}"#;
    assert!(serde_json::from_str::<EgressPolicy>(json).is_err());
}

// ---- names ----

#[test]
fn policy_none_resolves_nothing() {
    assert!(!EgressPolicy::None.allows_name("example.com"));
}

#[test]
fn policy_public_resolves_any_valid_name() {
    let p = EgressPolicy::Public;
    assert!(p.allows_name("example.com"));
    assert!(p.allows_name("_dmarc.Example.COM."));
    assert!(p.allows_name_on_port("example.com", 22));
    assert!(!p.allows_name("exa mple.com"));
    assert!(!p.allows_name(""));
}

#[test]
fn domain_rule_matches_exactly_ignoring_case_and_one_trailing_dot() {
    let p = allow(&["pypi.org"]);
    assert!(p.allows_name("pypi.org"));
    assert!(p.allows_name("PyPI.Org"));
    assert!(p.allows_name("pypi.org."));
    assert!(!p.allows_name("pypi.org.."));
    assert!(!p.allows_name("www.pypi.org"));
    assert!(!p.allows_name("evilpypi.org"));
    assert!(!p.allows_name("pypi.org.evil.com"));
}

#[test]
fn wildcard_rule_matches_names_below_the_suffix_but_not_the_suffix() {
    let p = allow(&["*.x.org"]);
    assert!(p.allows_name("a.x.org"));
    assert!(p.allows_name("a.b.x.org"));
    assert!(p.allows_name("A.X.ORG."));
    assert!(!p.allows_name("x.org"));
    assert!(!p.allows_name("ax.org"));
    assert!(!p.allows_name(".x.org"));
    assert!(!p.allows_name("a.x.org.evil"));
}

#[test]
fn address_rules_do_not_allow_names() {
    let p = allow(&["10.0.0.0/8", "1.2.3.4"]);
    assert!(!p.allows_name("1.2.3.4"));
    assert!(!p.allows_name("example.com"));
}

#[test]
fn names_that_are_not_host_names_are_never_allowed() {
    let p = allow(&["*.x.org"]);
    let long_label = format!("{}.x.org", "a".repeat(64));
    let long_name = format!("{}x.org", "a.".repeat(125));
    assert!(long_name.len() > 253);
    for bad in [
        "a..x.org",
        "a x.x.org",
        "a\0.x.org",
        "ä.x.org",
        "a/b.x.org",
        "*.x.org",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(!p.allows_name(bad), "{bad:?}");
        assert!(!EgressPolicy::Public.allows_name(bad), "{bad:?}");
    }
    let longest_label = format!("{}.x.org", "a".repeat(63));
    assert!(p.allows_name(&longest_label));
}

#[test]
fn name_rule_with_a_port_matches_only_that_port() {
    let p = allow(&["pypi.org:443", "*.x.org:8443", "any.org"]);
    assert!(p.allows_name("pypi.org"));
    assert!(p.allows_name_on_port("pypi.org", 443));
    assert!(!p.allows_name_on_port("pypi.org", 80));
    assert!(p.allows_name_on_port("a.x.org", 8443));
    assert!(!p.allows_name_on_port("a.x.org", 443));
    assert!(p.allows_name_on_port("any.org", 1));
}

#[test]
fn hand_written_wire_rules_match_case_insensitively() {
    let p = EgressPolicy::Allow(vec![
        PolicyRule {
            host: RuleHost::Domain("PyPI.org.".into()),
            port: None,
        },
        PolicyRule {
            host: RuleHost::Wildcard("X.Org".into()),
            port: None,
        },
        PolicyRule {
            host: RuleHost::Wildcard(String::new()),
            port: None,
        },
    ]);
    assert!(p.allows_name("pypi.org"));
    assert!(p.allows_name("a.x.org"));
    assert!(!p.allows_name("org"));
    assert!(!p.allows_name("example.com"));
}

// ---- pins ----

#[test]
fn pin_drops_non_public_addresses_from_dns_answers() {
    let mut set = PinSet::new();
    let out = set.pin(
        "a.org",
        &[
            ip("1.1.1.1"),
            ip("10.0.0.1"),
            ip("169.254.169.254"),
            ip("::ffff:127.0.0.1"),
        ],
    );
    assert_eq!(out.pinned, vec![ip("1.1.1.1")]);
    assert_eq!(
        out.dropped,
        vec![
            ip("10.0.0.1"),
            ip("169.254.169.254"),
            ip("::ffff:127.0.0.1")
        ]
    );
    assert!(out.stored());
    assert_eq!(set.names_for(ip("10.0.0.1")).count(), 0);
    assert_eq!(set.names_for(ip("1.1.1.1")).collect::<Vec<_>>(), ["a.org"]);
}

#[test]
fn pin_of_only_non_public_addresses_stores_nothing() {
    let mut set = PinSet::new();
    let out = set.pin("a.org", &[ip("127.0.0.1")]);
    assert!(!out.stored());
    assert!(!out.full);
    assert!(set.is_empty());
}

#[test]
fn pin_trusted_keeps_non_public_addresses() {
    let mut set = PinSet::new();
    let out = set.pin_trusted("db.internal.org", &[ip("10.0.0.5")]);
    assert!(out.stored());
    assert!(out.dropped.is_empty());
    assert!(set.is_pinned("db.internal.org", ip("10.0.0.5")));
}

#[test]
fn pins_are_keyed_by_canonical_address_and_normalized_name() {
    let mut set = PinSet::new();
    assert!(set.pin("A.Org.", &[ip("::ffff:1.1.1.1")]).stored());
    assert!(set.is_pinned("a.org", ip("1.1.1.1")));
    assert!(set.is_pinned("a.ORG", ip("::ffff:1.1.1.1")));
    assert_eq!(set.names_for(ip("1.1.1.1")).collect::<Vec<_>>(), ["a.org"]);
}

#[test]
fn pinning_the_same_pair_twice_uses_one_entry() {
    let mut set = PinSet::new();
    assert!(set.pin("a.org", &[ip("1.1.1.1"), ip("1.1.1.1")]).stored());
    assert!(set.pin("a.org", &[ip("1.1.1.1")]).stored());
    assert!(set.pin("b.org", &[ip("1.1.1.1")]).stored());
    assert_eq!(set.len(), 2);
    assert_eq!(
        set.names_for(ip("1.1.1.1")).collect::<Vec<_>>(),
        ["a.org", "b.org"]
    );
}

#[test]
fn pin_set_refuses_new_pins_when_full_and_stays_bounded() {
    let mut set = PinSet::new();
    for i in 0..(MAX_PINS as u32 + 100) {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0101_0000 + i));
        let out = set.pin(&format!("n{i}.org"), &[addr]);
        assert_eq!(out.stored(), (i as usize) < MAX_PINS, "pin {i}");
        assert_eq!(out.full, (i as usize) >= MAX_PINS, "pin {i}");
    }
    assert_eq!(set.len(), MAX_PINS);
    assert_eq!(set.capacity(), MAX_PINS);
    // A pair already held is no new entry, so it still succeeds.
    assert!(set.pin("n0.org", &[ip("1.1.0.0")]).stored());
}

#[test]
fn full_pin_set_stores_no_part_of_an_answer() {
    let mut set = PinSet::with_capacity(2);
    assert!(set.pin("a.org", &[ip("1.1.1.1")]).stored());
    let out = set.pin("b.org", &[ip("2.2.2.2"), ip("3.3.3.3")]);
    assert!(out.full);
    assert!(out.pinned.is_empty());
    assert_eq!(set.len(), 1);
    assert_eq!(set.names_for(ip("2.2.2.2")).count(), 0);
}

#[test]
fn pin_refuses_names_that_are_not_host_names() {
    let mut set = PinSet::new();
    assert!(!set.pin("a b.org", &[ip("1.1.1.1")]).stored());
    assert!(set.is_empty());
}

#[test]
fn trusted_pin_is_not_downgraded_by_a_later_dns_answer() {
    let mut set = PinSet::new();
    assert!(set.pin_trusted("a.org", &[ip("1.1.1.1")]).stored());
    assert!(set.pin("a.org", &[ip("1.1.1.1")]).stored());
    assert_eq!(set.len(), 1);
}
