//! Policy decisions on connects, their messages, and properties over
//! arbitrary names and addresses (the helpers live in `policy_tests.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::tests::{allow, ip, names, pins};
use sbxrun_egress::*;

// ---- connect ----

#[test]
fn policy_none_denies_every_connect() {
    assert_eq!(
        EgressPolicy::None.check_connect(ip("1.1.1.1"), 443, &PinSet::new()),
        ConnectDecision::Deny(DenyReason::NoNetwork)
    );
}

#[test]
fn policy_public_allows_public_addresses_without_a_name_check() {
    assert_eq!(
        EgressPolicy::Public.check_connect(ip("1.1.1.1"), 443, &PinSet::new()),
        ConnectDecision::Allow(Grant::Address)
    );
    assert_eq!(
        EgressPolicy::Public.check_connect(ip("2606:4700::1111"), 22, &PinSet::new()),
        ConnectDecision::Allow(Grant::Address)
    );
}

#[test]
fn policy_public_denies_the_hosts_own_networks() {
    for (addr, class) in [
        ("10.0.0.1", AddressClass::Private),
        ("127.0.0.1", AddressClass::Loopback),
        ("169.254.169.254", AddressClass::Metadata),
        ("::ffff:169.254.169.254", AddressClass::Metadata),
        ("64:ff9b::a9fe:a9fe", AddressClass::Metadata),
        ("fd00:ec2::254", AddressClass::Metadata),
        ("100.100.100.200", AddressClass::SharedCgnat),
        ("fe80::1", AddressClass::LinkLocal),
    ] {
        assert_eq!(
            EgressPolicy::Public.check_connect(ip(addr), 80, &PinSet::new()),
            ConnectDecision::Deny(DenyReason::NonPublicAddress {
                ip: ip(addr),
                class
            }),
            "{addr}"
        );
    }
}

#[test]
fn policy_public_ignores_operator_pins_to_private_addresses() {
    let mut set = PinSet::new();
    assert!(set.pin_trusted("db.corp.org", &[ip("10.0.0.5")]).stored());
    assert!(matches!(
        EgressPolicy::Public.check_connect(ip("10.0.0.5"), 5432, &set),
        ConnectDecision::Deny(DenyReason::NonPublicAddress { .. })
    ));
}

#[test]
fn unspecified_multicast_and_broadcast_are_denied_even_by_a_matching_rule() {
    let p = allow(&[
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.0/4",
    ]);
    for addr in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"] {
        assert!(
            matches!(
                p.check_connect(ip(addr), 80, &PinSet::new()),
                ConnectDecision::Deny(DenyReason::Unroutable { .. })
            ),
            "{addr}"
        );
        assert!(
            matches!(
                EgressPolicy::Public.check_connect(ip(addr), 80, &PinSet::new()),
                ConnectDecision::Deny(DenyReason::Unroutable { .. })
            ),
            "{addr}"
        );
    }
}

#[test]
fn cidr_rule_allows_addresses_inside_it_without_a_name_check() {
    let p = allow(&["10.0.0.0/8", "1.2.3.4", "[2001:db8::/32]:443"]);
    let none = PinSet::new();
    let granted = ConnectDecision::Allow(Grant::Address);
    assert_eq!(p.check_connect(ip("10.9.8.7"), 5432, &none), granted);
    assert_eq!(p.check_connect(ip("::ffff:10.9.8.7"), 5432, &none), granted);
    assert_eq!(p.check_connect(ip("1.2.3.4"), 80, &none), granted);
    assert_eq!(p.check_connect(ip("2001:db8::5"), 443, &none), granted);
    assert!(matches!(
        p.check_connect(ip("2001:db8::5"), 80, &none),
        ConnectDecision::Deny(_)
    ));
    assert!(matches!(
        p.check_connect(ip("1.2.3.5"), 80, &none),
        ConnectDecision::Deny(DenyReason::NotAllowed { .. })
    ));
}

#[test]
fn cidr_rule_with_a_port_matches_only_that_port() {
    let p = allow(&["10.0.0.0/8:5432"]);
    assert_eq!(
        p.check_connect(ip("10.0.0.1"), 5432, &PinSet::new()),
        ConnectDecision::Allow(Grant::Address)
    );
    assert_eq!(
        p.check_connect(ip("10.0.0.1"), 22, &PinSet::new()),
        ConnectDecision::Deny(DenyReason::NonPublicAddress {
            ip: ip("10.0.0.1"),
            class: AddressClass::Private
        })
    );
}

#[test]
fn broad_cidr_rule_does_not_reach_private_loopback_or_metadata() {
    let p = allow(&["0.0.0.0/0", "::/0", "169.254.0.0/16", "fd00::/8"]);
    let none = PinSet::new();
    assert_eq!(
        p.check_connect(ip("8.8.8.8"), 53, &none),
        ConnectDecision::Allow(Grant::Address)
    );
    assert_eq!(
        p.check_connect(ip("169.254.1.1"), 80, &none),
        ConnectDecision::Allow(Grant::Address)
    );
    assert_eq!(
        p.check_connect(ip("fd00::1"), 80, &none),
        ConnectDecision::Allow(Grant::Address)
    );
    for addr in [
        "10.0.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "::1",
    ] {
        assert!(
            matches!(
                p.check_connect(ip(addr), 80, &none),
                ConnectDecision::Deny(DenyReason::NonPublicAddress { .. })
            ),
            "{addr}"
        );
    }
}

#[test]
fn metadata_endpoint_is_reachable_only_when_named_exactly() {
    let p = allow(&["169.254.169.254:80"]);
    assert_eq!(
        p.check_connect(ip("169.254.169.254"), 80, &PinSet::new()),
        ConnectDecision::Allow(Grant::Address)
    );
}

#[test]
fn pinned_allowed_name_grants_its_address_with_a_name_check() {
    let p = allow(&["pypi.org", "*.pythonhosted.org:443"]);
    let set = pins(&[
        ("pypi.org", "151.101.0.223"),
        ("files.pythonhosted.org", "151.101.0.223"),
        ("other.org", "151.101.0.223"),
    ]);
    assert_eq!(
        p.check_connect(ip("151.101.0.223"), 443, &set),
        names(&["pypi.org", "files.pythonhosted.org"])
    );
    assert_eq!(
        p.check_connect(ip("151.101.0.223"), 80, &set),
        names(&["pypi.org"])
    );
}

#[test]
fn pinned_name_not_allowed_on_the_port_is_denied_with_the_names() {
    let p = allow(&["pypi.org:443"]);
    let set = pins(&[("pypi.org", "151.101.0.223")]);
    let denied = p.check_connect(ip("151.101.0.223"), 22, &set);
    assert_eq!(
        denied,
        ConnectDecision::Deny(DenyReason::NotAllowed {
            ip: ip("151.101.0.223"),
            port: 22,
            names: vec!["pypi.org".into()]
        })
    );
}

#[test]
fn unpinned_public_address_is_not_allowed_under_an_allow_list() {
    let p = allow(&["pypi.org"]);
    assert_eq!(
        p.check_connect(ip("151.101.0.223"), 443, &PinSet::new()),
        ConnectDecision::Deny(DenyReason::NotAllowed {
            ip: ip("151.101.0.223"),
            port: 443,
            names: vec![]
        })
    );
}

#[test]
fn private_address_is_reachable_by_name_only_through_an_operator_pin() {
    let p = allow(&["db.corp.org:5432"]);
    let mut set = PinSet::new();
    // DNS rebinding: the answer is dropped, so the connect finds no pin.
    let out = set.pin("db.corp.org", &[ip("10.0.0.5")]);
    assert_eq!(out.dropped, vec![ip("10.0.0.5")]);
    assert_eq!(
        p.check_connect(ip("10.0.0.5"), 5432, &set),
        ConnectDecision::Deny(DenyReason::NonPublicAddress {
            ip: ip("10.0.0.5"),
            class: AddressClass::Private
        })
    );
    assert!(set.pin_trusted("db.corp.org", &[ip("10.0.0.5")]).stored());
    assert_eq!(
        p.check_connect(ip("10.0.0.5"), 5432, &set),
        names(&["db.corp.org"])
    );
    assert!(p.allows_server_name("db.corp.org", ip("10.0.0.5"), 5432, &set));
}

#[test]
fn operator_pin_of_a_name_outside_the_policy_grants_nothing() {
    let p = allow(&["pypi.org"]);
    let mut set = PinSet::new();
    assert!(set.pin_trusted("db.corp.org", &[ip("10.0.0.5")]).stored());
    assert!(matches!(
        p.check_connect(ip("10.0.0.5"), 5432, &set),
        ConnectDecision::Deny(DenyReason::NonPublicAddress { .. })
    ));
}

#[test]
fn server_name_must_be_allowed_on_the_port_and_pinned_to_the_address() {
    let p = allow(&["pypi.org:443", "*.x.org"]);
    let set = pins(&[("pypi.org", "151.101.0.223"), ("a.x.org", "1.1.1.1")]);
    let cdn = ip("151.101.0.223");
    assert!(p.allows_server_name("pypi.org", cdn, 443, &set));
    assert!(p.allows_server_name("PYPI.org.", cdn, 443, &set));
    assert!(!p.allows_server_name("pypi.org", cdn, 80, &set));
    // Allowed, but resolved to another address: domain fronting.
    assert!(!p.allows_server_name("a.x.org", cdn, 443, &set));
    // Pinned, but not allowed.
    assert!(!p.allows_server_name("evil.org", cdn, 443, &set));
    assert!(!p.allows_server_name("", cdn, 443, &set));
    assert!(!EgressPolicy::None.allows_server_name("pypi.org", cdn, 443, &set));
}

// ---- messages ----

#[test]
fn deny_reasons_read_as_sentences() {
    let cases = [
        (
            DenyReason::NoNetwork,
            "the step has no network access (egress: none)",
        ),
        (
            DenyReason::NonPublicAddress {
                ip: ip("10.0.0.1"),
                class: AddressClass::Private,
            },
            "address 10.0.0.1 is private and no rule names it",
        ),
        (
            DenyReason::NonPublicAddress {
                ip: ip("169.254.169.254"),
                class: AddressClass::Metadata,
            },
            "address 169.254.169.254 is a cloud metadata endpoint and no rule names it",
        ),
        (
            DenyReason::Unroutable {
                ip: ip("0.0.0.0"),
                class: AddressClass::Unspecified,
            },
            "address 0.0.0.0 is unspecified and is never reachable",
        ),
        (
            DenyReason::NotAllowed {
                ip: ip("2001:db8::1"),
                port: 443,
                names: vec![],
            },
            "no rule allows [2001:db8::1]:443 and no allowed name resolved to it",
        ),
        (
            DenyReason::NotAllowed {
                ip: ip("1.1.1.1"),
                port: 22,
                names: vec!["a.org".into()],
            },
            "1.1.1.1 was resolved for a.org, which no rule allows on port 22",
        ),
        (
            DenyReason::NotAllowed {
                ip: ip("1.1.1.1"),
                port: 22,
                names: ["a.org", "b.org", "c.org", "d.org", "e.org"]
                    .map(String::from)
                    .to_vec(),
            },
            "1.1.1.1 was resolved for a.org, b.org, c.org and 2 more, which no rule allows on port 22",
        ),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
    }
}

// ---- properties ----

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        any::<u32>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
    ]
}

proptest! {
    #[test]
    fn name_checks_never_panic_on_arbitrary_strings(name in any::<String>()) {
        let p = allow(&["pypi.org", "*.x.org:443"]);
        let _ = p.allows_name(&name);
        let _ = p.allows_name_on_port(&name, 443);
        let _ = EgressPolicy::Public.allows_name(&name);
        let _ = p.allows_server_name(&name, IpAddr::V4(Ipv4Addr::LOCALHOST), 443, &PinSet::new());
    }

    #[test]
    fn allowed_names_are_always_valid_host_names(name in "[a-zA-Z0-9._\\- ]{0,80}") {
        if EgressPolicy::Public.allows_name(&name) {
            prop_assert!(normalize_name(&name).is_some());
        }
    }

    #[test]
    fn public_policy_allows_exactly_the_public_class(addr in any_ip(), port in any::<u16>()) {
        let decision = EgressPolicy::Public.check_connect(addr, port, &PinSet::new());
        let public = classify(addr) == AddressClass::Public;
        prop_assert_eq!(decision == ConnectDecision::Allow(Grant::Address), public);
    }

    #[test]
    fn dns_pins_never_open_a_non_public_address(
        addr in any_ip(),
        port in any::<u16>(),
    ) {
        let p = allow(&["*.x.org"]);
        let mut set = PinSet::new();
        let _ = set.pin("a.x.org", &[addr]);
        let decision = p.check_connect(addr, port, &set);
        if classify(addr) != AddressClass::Public {
            prop_assert!(matches!(decision, ConnectDecision::Deny(_)));
        } else {
            prop_assert_eq!(decision, names(&["a.x.org"]));
        }
    }

    #[test]
    fn pin_set_never_exceeds_its_capacity(
        answers in proptest::collection::vec(
            ("[a-c]{1,2}\\.org", proptest::collection::vec(any_ip(), 0..5)),
            0..60,
        )
    ) {
        let mut set = PinSet::with_capacity(16);
        for (name, ips) in &answers {
            let _ = set.pin_trusted(name, ips);
            prop_assert!(set.len() <= 16);
        }
    }
}
