//! Which part of the address space an IP belongs to, so the policy can keep
//! a step away from the host's own networks (loopback, private ranges, the
//! cloud metadata endpoint) unless a rule names them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The kind of network an address belongs to. Everything but [`Public`]
/// is out of reach unless a rule names it.
///
/// [`Public`]: AddressClass::Public
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16) and IPv6 unique local
    /// (fc00::/7).
    Private,
    /// 127/8 and ::1.
    Loopback,
    /// 169.254/16 and fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT; also where some clouds put metadata.
    SharedCgnat,
    /// A cloud instance metadata endpoint (169.254.169.254,
    /// fd00:ec2::254): credentials live there.
    Metadata,
    /// 224/4 and ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0 and ::. Connecting to it reaches the host itself.
    Unspecified,
    /// Set aside by the IETF (0/8, 240/4, 192.0.0/24, benchmarking
    /// 198.18/15, IPv6 outside 2000::/3, ...).
    Reserved,
    /// The documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24,
    /// 2001:db8::/32).
    Documentation,
}

impl AddressClass {
    /// The words that follow "address 10.0.0.1 is ..." in a report.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Private => "private",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "in the shared (CGNAT) range",
            AddressClass::Metadata => "a cloud metadata endpoint",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Reserved => "reserved",
            AddressClass::Documentation => "reserved for documentation",
        }
    }

    /// Addresses a TCP connection can never usefully go to. Connecting to
    /// the unspecified address reaches the host's own loopback, so no rule
    /// may open these.
    pub fn is_unroutable(self) -> bool {
        matches!(
            self,
            AddressClass::Unspecified | AddressClass::Multicast | AddressClass::Broadcast
        )
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classifies an address. IPv4-mapped (::ffff:0:0/96), NAT64 (64:ff9b::/96)
/// and 6to4 (2002::/16) addresses are classified by the IPv4 address they
/// carry, since that is where the packets end up.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: u32, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    ip & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let bits = u32::from(ip);
    // Most specific first: the metadata address sits inside link-local,
    // broadcast inside 240/4, 0.0.0.0 inside 0/8.
    let table: &[([u8; 4], u32, AddressClass)] = &[
        ([0, 0, 0, 0], 32, AddressClass::Unspecified),
        ([255, 255, 255, 255], 32, AddressClass::Broadcast),
        ([169, 254, 169, 254], 32, AddressClass::Metadata),
        ([0, 0, 0, 0], 8, AddressClass::Reserved),
        ([10, 0, 0, 0], 8, AddressClass::Private),
        ([100, 64, 0, 0], 10, AddressClass::SharedCgnat),
        ([127, 0, 0, 0], 8, AddressClass::Loopback),
        ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddressClass::Private),
        ([192, 0, 0, 0], 24, AddressClass::Reserved),
        ([192, 0, 2, 0], 24, AddressClass::Documentation),
        ([192, 168, 0, 0], 16, AddressClass::Private),
        ([198, 18, 0, 0], 15, AddressClass::Reserved),
        ([198, 51, 100, 0], 24, AddressClass::Documentation),
        ([203, 0, 113, 0], 24, AddressClass::Documentation),
        ([224, 0, 0, 0], 4, AddressClass::Multicast),
        ([240, 0, 0, 0], 4, AddressClass::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(bits, *net, *prefix))
        .map_or(AddressClass::Public, |&(_, _, class)| class)
}

fn in_v6(ip: u128, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    ip & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    let embedded_low = || classify_v4(Ipv4Addr::from(bits as u32));
    if bits == 0 {
        return AddressClass::Unspecified;
    }
    if bits == 1 {
        return AddressClass::Loopback;
    }
    if in_v6(bits, 0xffff_0000_0000, 96) {
        return embedded_low();
    }
    if in_v6(bits, 0x0064_ff9b << 96, 96) {
        return embedded_low();
    }
    if in_v6(bits, 0x2002 << 112, 16) {
        return classify_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    if bits == u128::from(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)) {
        return AddressClass::Metadata;
    }
    let table: &[(u128, u32, AddressClass)] = &[
        (0xfe80 << 112, 10, AddressClass::LinkLocal),
        (0xfc00 << 112, 7, AddressClass::Private),
        (0xff00 << 112, 8, AddressClass::Multicast),
        (0x2001_0db8 << 96, 32, AddressClass::Documentation),
        // Teredo hides the client address; benchmarking; ORCHIDs. None of
        // them is a place a build step needs to reach.
        (0x2001_0000 << 96, 32, AddressClass::Reserved),
        (0x2001_0002 << 96, 48, AddressClass::Reserved),
        (0x2001_0010 << 96, 28, AddressClass::Reserved),
        (0x2001_0020 << 96, 28, AddressClass::Reserved),
    ];
    if let Some(&(_, _, class)) = table.iter().find(|(net, p, _)| in_v6(bits, *net, *p)) {
        return class;
    }
    // Global unicast is 2000::/3; everything else (including NAT64
    // local-use 64:ff9b:1::/48, discard 100::/64, IPv4-compatible ::/96)
    // is not the public internet.
    if in_v6(bits, 0x2000 << 112, 3) {
        AddressClass::Public
    } else {
        AddressClass::Reserved
    }
}

/// The address as the policy compares it: an IPv4-mapped IPv6 address
/// becomes the IPv4 address, so `::ffff:10.0.0.1` and `10.0.0.1` match the
/// same rules and pins.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether `ip` lies in `addr/prefix`. A prefix longer than the address
/// matches nothing; families never match each other (after
/// [`canonical`]).
pub fn cidr_contains(addr: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (canonical_cidr(addr, prefix), canonical(ip)) {
        (Some((IpAddr::V4(net), p)), IpAddr::V4(ip)) => {
            in_v4(u32::from(ip), net.octets(), u32::from(p))
        }
        (Some((IpAddr::V6(net), p)), IpAddr::V6(ip)) => {
            in_v6(u128::from(ip), u128::from(net), u32::from(p))
        }
        _ => false,
    }
}

/// A CIDR written in IPv4-mapped form (`::ffff:10.0.0.0/104`) becomes its
/// IPv4 equivalent; an impossible prefix becomes `None`.
fn canonical_cidr(addr: IpAddr, prefix: u8) -> Option<(IpAddr, u8)> {
    match addr {
        IpAddr::V4(_) if prefix <= 32 => Some((addr, prefix)),
        IpAddr::V6(v6) if prefix <= 128 => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => Some((IpAddr::V4(v4), prefix - 96)),
            _ => Some((addr, prefix)),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().expect("test address"))
    }

    #[test]
    fn ipv4_special_ranges_are_classified() {
        use AddressClass::*;
        for (ip, want) in [
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.169.253", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("192.0.2.7", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.7", Documentation),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("192.0.0.8", Reserved),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv4_neighbours_of_special_ranges_are_public() {
        for ip in [
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.0",
            "223.255.255.255",
            "1.1.1.1",
            "93.184.216.34",
        ] {
            assert_eq!(class(ip), AddressClass::Public, "{ip}");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_classified() {
        use AddressClass::*;
        for (ip, want) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", Private),
            ("fdff::1", Private),
            ("fd00:ec2::254", Metadata),
            ("fd00:ec2::253", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2001::1", Reserved),
            ("::2", Reserved),
            ("100::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("2606:4700::1111", Public),
            ("2a00:1450:4001::1", Public),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_carrying_ipv4_are_classified_by_the_ipv4() {
        use AddressClass::*;
        for (ip, want) in [
            ("::ffff:10.0.0.1", Private),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:1.1.1.1", Public),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::101:101", Public),
            ("2002:0a00:0001::1", Private),
            ("2002:0101:0101::1", Public),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn cidr_contains_matches_by_prefix_and_family() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert!(cidr_contains(ip("10.0.0.0"), 8, ip("10.9.9.9")));
        assert!(!cidr_contains(ip("10.0.0.0"), 8, ip("11.0.0.0")));
        assert!(cidr_contains(ip("0.0.0.0"), 0, ip("8.8.8.8")));
        assert!(cidr_contains(ip("1.2.3.4"), 32, ip("1.2.3.4")));
        assert!(!cidr_contains(ip("1.2.3.4"), 32, ip("1.2.3.5")));
        assert!(cidr_contains(ip("10.0.0.0"), 8, ip("::ffff:10.1.1.1")));
        assert!(cidr_contains(ip("::ffff:10.0.0.0"), 104, ip("10.1.1.1")));
        assert!(!cidr_contains(ip("::"), 0, ip("10.1.1.1")));
        assert!(cidr_contains(ip("2001:db8::"), 32, ip("2001:db8:1::1")));
        assert!(!cidr_contains(ip("10.0.0.0"), 33, ip("10.0.0.0")));
        assert!(!cidr_contains(ip("::"), 129, ip("::")));
    }
}
