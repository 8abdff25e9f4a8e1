//! The network egress policy of a step: `none`, `public`, or an allow-list
//! of domains (`pypi.org`), wildcard domains (`*.pythonhosted.org`), IPs and
//! CIDRs, each with an optional port (`10.1.2.3/32:5432`, `[::1]:443`);
//! and what a denial does to the step's verdict (`on_violation`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Serialize};

use super::de::Spanned;
use super::error::did_you_mean;

/// A step's egress policy: what it may reach.
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

/// What a step's egress denials mean for its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Denials are reported, the verdict stands (the default).
    #[default]
    Record,
    /// A step that passed but had a denial fails.
    Fail,
}

/// A step's (or the job's default) `egress` setting, as written. Either
/// part may be left out; each falls back to `defaults.egress` on its own,
/// so a job-wide `on_violation: fail` survives a step that widens its
/// allow-list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EgressSetting {
    /// What the step may reach.
    pub policy: Option<Egress>,
    /// What a denial does to the verdict.
    pub on_violation: Option<OnViolation>,
}

/// The names of the policies that have one (`egress: none`,
/// `policy: public`).
const NAMED: [&str; 2] = ["none", "public"];

/// `none` or `public`, with a near-miss suggestion for anything else.
fn named_policy<E: de::Error>(s: &str) -> Result<Egress, E> {
    match s {
        "none" => Ok(Egress::None),
        "public" => Ok(Egress::Public),
        other => Err(match did_you_mean(other, NAMED) {
            Some(m) => E::custom(format_args!(
                "unknown egress policy `{other}`; did you mean `{m}`?"
            )),
            None => E::custom(format_args!(
                "unknown egress policy `{other}`; expected `none`, `public` or `{{ allow: [...] }}`"
            )),
        }),
    }
}

/// The value of `policy:` in the map form: only the named policies, since
/// an allow-list is written with `allow:`.
struct Named(Egress);

impl<'de> Deserialize<'de> for Named {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Named;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or `public`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Named, E> {
                named_policy(s).map(Named)
            }
        }
        d.deserialize_str(V)
    }
}

/// The map form: `{ allow: [...], on_violation: fail }` or
/// `{ policy: public, on_violation: fail }`. Derived, so unknown keys get
/// the manifest's did-you-mean diagnostic.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressMap {
    #[serde(default)]
    allow: Option<Vec<Spanned<EgressRule>>>,
    #[serde(default)]
    policy: Option<Named>,
    #[serde(default)]
    on_violation: Option<OnViolation>,
}

impl Serialize for EgressSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The short string form whenever it says everything, so the model
        // of `egress: public` reads as written.
        match (&self.policy, self.on_violation) {
            (Some(Egress::None), None) => return s.serialize_str("none"),
            (Some(Egress::Public), None) => return s.serialize_str("public"),
            _ => {}
        }
        let mut m = s.serialize_map(None)?;
        match &self.policy {
            Some(Egress::Allow(rules)) => m.serialize_entry("allow", rules)?,
            Some(Egress::None) => m.serialize_entry("policy", "none")?,
            Some(Egress::Public) => m.serialize_entry("policy", "public")?,
            None => {}
        }
        if let Some(v) = self.on_violation {
            m.serialize_entry("on_violation", &v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for EgressSetting {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EgressSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none`, `public` or `{ allow: [...] }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EgressSetting, E> {
                Ok(EgressSetting {
                    policy: Some(named_policy(s)?),
                    on_violation: None,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<EgressSetting, A::Error> {
                let m = EgressMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let policy = match (m.allow, m.policy) {
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom(
                            "`allow` and `policy` cannot both be set; an allow-list is a policy of its own, so keep either `allow` or `policy`",
                        ))
                    }
                    (Some(rules), None) => Some(Egress::Allow(rules)),
                    (None, Some(Named(p))) => Some(p),
                    (None, None) => None,
                };
                if policy.is_none() && m.on_violation.is_none() {
                    return Err(de::Error::custom(
                        "the egress map sets nothing; give `allow`, `policy` or `on_violation`",
                    ));
                }
                Ok(EgressSetting {
                    policy,
                    on_violation: m.on_violation,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for EgressSetting {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Egress".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rule = g.subschema_for::<EgressRule>();
        let on_violation = g.subschema_for::<OnViolation>();
        schemars::json_schema!({
            "description": "Network egress: `none` (default), `public`, or a map: `{ allow: [...] }` or `{ policy: none|public }`, optionally with `on_violation: record|fail` (what a denied attempt does to a step that passed). Each part left out falls back to `defaults.egress`.",
            "oneOf": [
                { "type": "string", "enum": NAMED },
                {
                    "type": "object",
                    "properties": {
                        "allow": { "type": "array", "items": rule },
                        "policy": { "type": "string", "enum": NAMED },
                        "on_violation": on_violation,
                    },
                    "additionalProperties": false,
                    "minProperties": 1,
                    "not": { "required": ["allow", "policy"] },
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

    fn load(syntax: super::super::Syntax, text: &str) -> super::super::Job {
        let src = super::super::SourceFile::new("t", text.to_owned(), ".".into(), syntax);
        match super::super::load_source(src) {
            Ok(job) => job,
            Err(e) => panic!("{}", super::super::render(&e, true)),
        }
    }

    fn problem(text: &str) -> String {
        let src = super::super::SourceFile::new(
            "t",
            text.to_owned(),
            ".".into(),
            super::super::Syntax::Yaml,
        );
        match super::super::load_source(src) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| format!("{p} / {:?}", p.help))
                .collect(),
        }
    }

    fn settings(job: &super::super::Job, step: &str) -> super::super::Settings {
        match job.step(step) {
            Some(s) => job.settings(s),
            None => panic!("no step {step}"),
        }
    }

    #[test]
    fn on_violation_is_read_from_both_map_forms_and_defaults_to_record() {
        let job = load(
            super::super::Syntax::Yaml,
            "name: j\nsteps:\n  a: { run: x, egress: { allow: [pypi.org], on_violation: fail } }\n  \
             b: { run: x, egress: { policy: public, on_violation: fail } }\n  \
             c: { run: x, egress: public }\n",
        );
        let a = settings(&job, "a");
        assert!(matches!(a.egress, Egress::Allow(ref r) if r.len() == 1));
        assert_eq!(a.on_violation, OnViolation::Fail);
        let b = settings(&job, "b");
        assert_eq!(
            (b.egress, b.on_violation),
            (Egress::Public, OnViolation::Fail)
        );
        let c = settings(&job, "c");
        assert_eq!(
            (c.egress, c.on_violation),
            (Egress::Public, OnViolation::Record)
        );
    }

    #[test]
    fn policy_and_on_violation_fall_back_to_defaults_each_on_its_own() {
        let job = load(
            super::super::Syntax::Yaml,
            "name: j\ndefaults: { egress: { allow: [pypi.org], on_violation: fail } }\nsteps:\n  \
             widen: { run: x, egress: public }\n  \
             lenient: { run: x, egress: { on_violation: record } }\n  \
             plain: { run: x }\n",
        );
        let widen = settings(&job, "widen");
        assert_eq!(
            (widen.egress, widen.on_violation),
            (Egress::Public, OnViolation::Fail)
        );
        let lenient = settings(&job, "lenient");
        assert!(matches!(lenient.egress, Egress::Allow(_)));
        assert_eq!(lenient.on_violation, OnViolation::Record);
        assert_eq!(settings(&job, "plain").on_violation, OnViolation::Fail);
    }

    #[test]
    fn kdl_on_violation_gives_the_same_model_as_yaml() {
        let yaml = load(
            super::super::Syntax::Yaml,
            "name: j\nsteps:\n  a: { run: x, egress: { allow: [pypi.org], on_violation: fail } }\n",
        );
        let kdl = load(
            super::super::Syntax::Kdl,
            "name j\nstep a {\n  run x\n  egress {\n    allow \"pypi.org\"\n    on-violation fail\n  }\n}\n",
        );
        assert_eq!(yaml.to_json(), kdl.to_json());
        assert_eq!(
            yaml.to_json()["steps"]["a"]["egress"],
            serde_json::json!({ "allow": ["pypi.org"], "on_violation": "fail" })
        );
    }

    #[test]
    fn bad_on_violation_values_and_shapes_are_diagnosed() {
        let p = problem(
            "name: j\nsteps:\n  a: { run: x, egress: { policy: public, on_violation: fial } }\n",
        );
        assert!(
            p.contains("unknown value `fial`") && p.contains("did you mean `fail`?"),
            "{p}"
        );
        let p = problem("name: j\nsteps:\n  a: { run: x, egress: { policy: publik } }\n");
        assert!(p.contains("did you mean `public`?"), "{p}");
        let p = problem(
            "name: j\nsteps:\n  a: { run: x, egress: { allow: [a.org], policy: public } }\n",
        );
        assert!(p.contains("cannot both be set"), "{p}");
        let p = problem("name: j\nsteps:\n  a: { run: x, egress: {} }\n");
        assert!(p.contains("sets nothing"), "{p}");
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
