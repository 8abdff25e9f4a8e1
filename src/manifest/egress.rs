//! The network egress policy of a step: `none`, `public`, or an allow-list
//! of domains (`pypi.org`), wildcard domains (`*.pythonhosted.org`), IPs and
//! CIDRs, each with an optional port (`10.1.2.3/32:5432`, `[::1]:443`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Serialize};

use super::de::Spanned;
use super::error::did_you_mean;

/// A step's egress policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Egress {
    /// No network at all (the default).
    #[default]
    None,
    /// The public internet; private, loopback, link-local and metadata
    /// ranges stay denied.
    Public,
    /// Only what the rules name.
    Allow(Vec<Spanned<EgressRule>>),
}

/// What an allow rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// An exact domain name, lowercase.
    Domain(String),
    /// `*.suffix`: any name below `suffix` (not `suffix` itself).
    Wildcard(String),
    /// One address.
    Ip(IpAddr),
    /// An address range.
    Cidr {
        /// The network address.
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRule {
    /// The hosts matched.
    pub host: HostPattern,
    /// The one port allowed, or any port.
    pub port: Option<u16>,
}

/// Why an egress entry did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// Not a domain, wildcard, IP or CIDR.
    #[error("`{0}` is not a domain, `*.domain`, IP address or CIDR")]
    NotAHost(String),
    /// A bad port.
    #[error("invalid port `{0}` (must be 1-65535)")]
    Port(String),
    /// A CIDR prefix longer than the address.
    #[error("invalid prefix length in `{0}`")]
    Prefix(String),
    /// A CIDR with bits set after the prefix (`10.1.2.3/8`).
    #[error("`{0}` has host bits set; did you mean `{1}`?")]
    HostBits(String, String),
}

impl FromStr for EgressRule {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, EgressError> {
        let (host, port) = split_port(text)?;
        Ok(EgressRule {
            host: parse_host(host, text)?,
            port,
        })
    }
}

/// Splits `host:port`, `[v6]:port` and `cidr:port`; a bare IPv6 address
/// keeps its colons.
fn split_port(text: &str) -> Result<(&str, Option<u16>), EgressError> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(EgressError::Port(p.to_owned())),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(EgressError::NotAHost(text.to_owned()));
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, port(p)?)),
                None => Err(EgressError::NotAHost(text.to_owned())),
            },
        };
    }
    match text.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 address (or CIDR).
        Some((host, _)) if host.contains(':') => Ok((text, None)),
        Some((host, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Ok((host, port(p)?))
        }
        Some(_) => Err(EgressError::NotAHost(text.to_owned())),
        None => Ok((text, None)),
    }
}

fn parse_host(host: &str, whole: &str) -> Result<HostPattern, EgressError> {
    if let Some((addr, prefix)) = host.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| EgressError::NotAHost(whole.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= max && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(EgressError::Prefix(whole.to_owned())),
        };
        let net = network(addr, prefix);
        if net != addr {
            return Err(EgressError::HostBits(
                whole.to_owned(),
                format!("{net}/{prefix}"),
            ));
        }
        return Ok(HostPattern::Cidr { addr, prefix });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        return if is_domain(suffix) {
            Ok(HostPattern::Wildcard(suffix.to_ascii_lowercase()))
        } else {
            Err(EgressError::NotAHost(whole.to_owned()))
        };
    }
    if is_domain(host) && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ok(HostPattern::Domain(host.to_ascii_lowercase()));
    }
    Err(EgressError::NotAHost(whole.to_owned()))
}

/// `addr` with the bits after `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// An RFC 1123 host name with at least two labels.
fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(
            self.host,
            HostPattern::Ip(IpAddr::V6(_))
                | HostPattern::Cidr {
                    addr: IpAddr::V6(_),
                    ..
                }
        );
        let host = match &self.host {
            HostPattern::Domain(d) => d.clone(),
            HostPattern::Wildcard(d) => format!("*.{d}"),
            HostPattern::Ip(ip) => ip.to_string(),
            HostPattern::Cidr { addr, prefix } => format!("{addr}/{prefix}"),
        };
        match self.port {
            Some(p) if v6 => write!(f, "[{host}]:{p}"),
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

impl Serialize for EgressRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EgressRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a domain, `*.domain`, IP or CIDR, optionally with `:port`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EgressRule, E> {
                s.parse()
                    .map_err(|e| E::custom(format_args!("invalid egress entry: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

impl schemars::JsonSchema for EgressRule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EgressRule".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A domain (`pypi.org`), wildcard domain (`*.pythonhosted.org`), IP or CIDR, with an optional `:port` (`10.1.2.0/24:5432`, `[2001:db8::1]:443`).",
        })
    }
}

/// The map form: `{ allow: [...] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowList {
    allow: Vec<Spanned<EgressRule>>,
}

impl Serialize for Egress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Egress::None => s.serialize_str("none"),
            Egress::Public => s.serialize_str("public"),
            Egress::Allow(rules) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("allow", rules)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Egress {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Egress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none`, `public` or `{ allow: [...] }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Egress, E> {
                match s {
                    "none" => Ok(Egress::None),
                    "public" => Ok(Egress::Public),
                    other => Err(match did_you_mean(other, ["none", "public"]) {
                        Some(m) => E::custom(format_args!(
                            "unknown egress policy `{other}`; did you mean `{m}`?"
                        )),
                        None => E::custom(format_args!(
                            "unknown egress policy `{other}`; expected `none`, `public` or `{{ allow: [...] }}`"
                        )),
                    }),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Egress, A::Error> {
                let list = AllowList::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Egress::Allow(list.allow))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Egress {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Egress".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rule = g.subschema_for::<EgressRule>();
        schemars::json_schema!({
            "description": "Network egress: `none` (default), `public`, or `{ allow: [...] }`.",
            "oneOf": [
                { "type": "string", "enum": ["none", "public"] },
                {
                    "type": "object",
                    "properties": { "allow": { "type": "array", "items": rule } },
                    "required": ["allow"],
                    "additionalProperties": false,
                },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Result<EgressRule, EgressError> {
        s.parse()
    }

    #[test]
    fn egress_entries_of_every_kind_parse() {
        assert_eq!(
            rule("PyPI.org").unwrap().host,
            HostPattern::Domain("pypi.org".into())
        );
        assert_eq!(
            rule("*.pythonhosted.org").unwrap().host,
            HostPattern::Wildcard("pythonhosted.org".into())
        );
        let r = rule("10.1.2.3/32:5432").unwrap();
        assert_eq!(r.port, Some(5432));
        assert!(matches!(r.host, HostPattern::Cidr { prefix: 32, .. }));
        assert_eq!(rule("[2001:db8::1]:443").unwrap().port, Some(443));
        assert!(matches!(
            rule("2001:db8::/32").unwrap().host,
            HostPattern::Cidr { prefix: 32, .. }
        ));
        assert!(matches!(rule("::1").unwrap().host, HostPattern::Ip(_)));
        assert_eq!(rule("example.com:8080").unwrap().port, Some(8080));
    }

    #[test]
    fn egress_entries_that_are_not_hosts_are_rejected() {
        assert!(matches!(rule("localhost"), Err(EgressError::NotAHost(_))));
        assert!(matches!(
            rule("http://x.org"),
            Err(EgressError::NotAHost(_))
        ));
        assert!(matches!(rule("*.*.org"), Err(EgressError::NotAHost(_))));
        assert!(matches!(rule("999.1.1.1"), Err(EgressError::NotAHost(_))));
        assert!(matches!(rule("x.org:0"), Err(EgressError::Port(_))));
        assert!(matches!(rule("x.org:70000"), Err(EgressError::Port(_))));
        assert!(matches!(rule("10.0.0.0/33"), Err(EgressError::Prefix(_))));
        assert!(matches!(rule("bad_-.org"), Err(EgressError::NotAHost(_))));
    }

    #[test]
    fn cidr_with_host_bits_suggests_the_network() {
        assert_eq!(
            rule("10.1.2.3/8"),
            Err(EgressError::HostBits(
                "10.1.2.3/8".into(),
                "10.0.0.0/8".into()
            ))
        );
    }

    #[test]
    fn egress_rules_display_as_they_parse() {
        for s in [
            "pypi.org",
            "*.a.org:443",
            "10.0.0.0/8:22",
            "[::1]:53",
            "1.2.3.4",
        ] {
            assert_eq!(rule(s).unwrap().to_string(), s);
        }
    }
}
