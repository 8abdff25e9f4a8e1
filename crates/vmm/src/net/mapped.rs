//! Guest-facing addresses for resolved names.
//!
//! The gateway never tells the guest a name's real address. Each name it
//! resolves gets an address of its own from 198.18.0.0/15 (reserved for
//! benchmarking, never routed on the internet), and a connection to that
//! address goes to the name's real address. Three reasons:
//!
//! - A real address can be one the guest cannot route to the gateway at
//!   all: a name the operator mapped to 127.0.0.1 with `--resolve` would
//!   otherwise reach the guest's own loopback.
//! - The guest learns nothing about the host's network from DNS.
//! - One address, one name: a connection through a mapped address was made
//!   for exactly that name, which the report can say.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// First address handed out (198.18.0.1; .0 is skipped).
const FIRST: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// The /15 holds 131,072 addresses; far fewer are ever mapped.
const RANGE_BITS: u32 = 17;
const NETWORK: u32 = u32::from_be_bytes([198, 18, 0, 0]);

/// Whether `ip` lies in the range mapped addresses come from.
pub(super) fn in_range(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> RANGE_BITS == NETWORK >> RANGE_BITS
}

/// Where a mapped address leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mapping {
    /// The name the address was handed out for.
    pub(super) name: String,
    /// The name's real addresses, in the order the resolver gave them.
    pub(super) real: Vec<IpAddr>,
}

/// The per-VM table of mapped addresses. Bounded: at most `cap` names.
#[derive(Debug)]
pub(super) struct MappedAddrs {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, Mapping>,
    cap: usize,
}

impl MappedAddrs {
    pub(super) fn with_capacity(cap: usize) -> Self {
        MappedAddrs {
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            cap: cap.min((1 << RANGE_BITS) - 2),
        }
    }

    /// The guest-facing address of `name`, now leading to `real` (a later
    /// answer replaces the earlier one). `None` when the table is full.
    pub(super) fn map(&mut self, name: &str, real: &[IpAddr]) -> Option<Ipv4Addr> {
        let mapping = Mapping {
            name: name.to_owned(),
            real: real.to_vec(),
        };
        if let Some(&addr) = self.by_name.get(name) {
            self.by_addr.insert(addr, mapping);
            return Some(addr);
        }
        if self.by_name.len() >= self.cap {
            return None;
        }
        let index = u32::try_from(self.by_name.len()).ok()?;
        let addr = Ipv4Addr::from(FIRST.checked_add(index)?);
        self.by_name.insert(name.to_owned(), addr);
        self.by_addr.insert(addr, mapping);
        Some(addr)
    }

    /// Where a guest connection to `addr` goes, if `addr` was handed out.
    pub(super) fn lookup(&self, addr: Ipv4Addr) -> Option<&Mapping> {
        self.by_addr.get(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_name_gets_its_own_stable_address() {
        let mut m = MappedAddrs::with_capacity(8);
        let a = m.map("a.test", &[ip("127.0.0.1")]).unwrap();
        let b = m.map("b.test", &[ip("93.184.216.34")]).unwrap();
        assert_ne!(a, b);
        assert!(in_range(a) && in_range(b));
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        // A new answer for a known name keeps its address.
        assert_eq!(m.map("a.test", &[ip("127.0.0.2")]), Some(a));
        assert_eq!(m.lookup(a).unwrap().real, vec![ip("127.0.0.2")]);
        assert_eq!(m.lookup(b).unwrap().name, "b.test");
    }

    #[test]
    fn a_full_table_maps_nothing_new() {
        let mut m = MappedAddrs::with_capacity(1);
        assert!(m.map("a.test", &[ip("1.1.1.1")]).is_some());
        assert!(m.map("b.test", &[ip("1.1.1.1")]).is_none());
        assert!(m.map("a.test", &[ip("1.0.0.1")]).is_some());
    }

    #[test]
    fn the_range_is_198_18_slash_15() {
        assert!(in_range(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(in_range(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!in_range(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(!in_range(Ipv4Addr::new(198, 17, 255, 255)));
    }

    #[test]
    fn an_address_never_handed_out_leads_nowhere() {
        let mut m = MappedAddrs::with_capacity(4);
        let a = m.map("a.test", &[ip("1.1.1.1")]).unwrap();
        assert!(m.lookup(Ipv4Addr::new(198, 18, 0, 9)).is_none());
        assert!(m.lookup(a).is_some());
    }
}
