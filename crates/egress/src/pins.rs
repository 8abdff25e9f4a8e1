//! The per-VM memory of which names resolved to which addresses. A guest may
//! only connect to an address by name if the VMM itself gave it that
//! address for an allowed name, so the pins are what ties a TCP connect
//! back to the DNS question that justified it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::address::{canonical, classify, AddressClass};
use super::policy::normalize_name;

/// How many (name, address) pairs one VM may hold. A guest can ask for as
/// many names as it likes; the VMM's memory must not follow it.
pub const MAX_PINS: usize = 4096;

/// Names the VMM resolved for a guest, by address.
#[derive(Debug, Clone)]
pub struct PinSet {
    by_ip: BTreeMap<IpAddr, Vec<Pin>>,
    len: usize,
    cap: usize,
}

#[derive(Debug, Clone)]
struct Pin {
    name: String,
    /// Given by the operator (`--resolve name=ip`), not by DNS: may point
    /// at a non-public address.
    trusted: bool,
}

/// What [`PinSet::pin`] did with an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "dropped addresses are DNS-rebinding events and a full set is a refusal"]
pub struct PinOutcome {
    /// The addresses now pinned to the name, in the order given, without
    /// duplicates. Only these should be handed to the guest.
    pub pinned: Vec<IpAddr>,
    /// Non-public addresses removed from an ordinary DNS answer: a public
    /// name that resolves into the host's networks is a rebinding attempt.
    pub dropped: Vec<IpAddr>,
    /// The set had no room for the new pairs, so none were stored.
    pub full: bool,
}

impl PinOutcome {
    /// Whether the answer was stored (false when the set was full or the
    /// name is not a host name).
    pub fn stored(&self) -> bool {
        !self.full && !self.pinned.is_empty()
    }
}

impl Default for PinSet {
    fn default() -> Self {
        PinSet::with_capacity(MAX_PINS)
    }
}

impl PinSet {
    /// An empty set holding at most [`MAX_PINS`] pairs.
    pub fn new() -> Self {
        PinSet::default()
    }

    /// An empty set holding at most `cap` pairs.
    pub fn with_capacity(cap: usize) -> Self {
        PinSet {
            by_ip: BTreeMap::new(),
            len: 0,
            cap,
        }
    }

    /// Remembers an ordinary DNS answer. Non-public addresses are dropped
    /// and reported in [`PinOutcome::dropped`]; when the set cannot hold
    /// every new pair, nothing is stored and [`PinOutcome::full`] is set.
    pub fn pin(&mut self, name: &str, ips: &[IpAddr]) -> PinOutcome {
        self.insert(name, ips, false)
    }

    /// Remembers an operator-provided address (`--resolve name=ip`), which
    /// may be non-public: the operator named it, so it is not rebinding.
    pub fn pin_trusted(&mut self, name: &str, ips: &[IpAddr]) -> PinOutcome {
        self.insert(name, ips, true)
    }

    fn insert(&mut self, name: &str, ips: &[IpAddr], trusted: bool) -> PinOutcome {
        let mut out = PinOutcome::default();
        let Some(name) = normalize_name(name) else {
            return out;
        };
        let mut fresh: Vec<IpAddr> = Vec::new();
        for &ip in ips {
            let key = canonical(ip);
            if !trusted && classify(key) != AddressClass::Public {
                out.dropped.push(ip);
                continue;
            }
            if out.pinned.iter().any(|&p| canonical(p) == key) {
                continue;
            }
            out.pinned.push(ip);
            let known = self
                .by_ip
                .get(&key)
                .is_some_and(|pins| pins.iter().any(|p| p.name == name));
            if !known && !fresh.contains(&key) {
                fresh.push(key);
            }
        }
        if self.len.saturating_add(fresh.len()) > self.cap {
            out.pinned.clear();
            out.full = true;
            return out;
        }
        for &ip in &out.pinned {
            let pins = self.by_ip.entry(canonical(ip)).or_default();
            match pins.iter_mut().find(|p| p.name == name) {
                // An operator pin stays trusted when DNS later agrees.
                Some(p) => p.trusted |= trusted,
                None => pins.push(Pin {
                    name: name.clone(),
                    trusted,
                }),
            }
        }
        self.len += fresh.len();
        out
    }

    /// The names pinned to `ip`, in the order they were first pinned.
    pub fn names_for(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        self.pins_for(ip).map(|p| p.name.as_str())
    }

    /// The names pinned to `ip` that may justify a connection to it: all of
    /// them for a public address, only operator pins for any other.
    pub(crate) fn reachable_names_for(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        let public = classify(canonical(ip)) == AddressClass::Public;
        self.pins_for(ip)
            .filter(move |p| public || p.trusted)
            .map(|p| p.name.as_str())
    }

    /// Whether `name` is pinned to `ip` in a way that may justify a
    /// connection: by DNS to a public address, or by the operator.
    pub fn is_pinned(&self, name: &str, ip: IpAddr) -> bool {
        match normalize_name(name) {
            Some(name) => self.reachable_names_for(ip).any(|n| n == name),
            None => false,
        }
    }

    fn pins_for(&self, ip: IpAddr) -> impl Iterator<Item = &Pin> {
        self.by_ip.get(&canonical(ip)).into_iter().flatten()
    }

    /// How many (name, address) pairs are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most pairs this set will hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }
}
