//! The DNS query reader never panics on any packet, and every reply built
//! from a query it accepts stays within the 512-byte UDP limit.
//! Run: `cargo +nightly fuzz run dns_query` from the repository root.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use sbxrun_egress::dns;
use sbxrun_egress::EgressPolicy;

fuzz_target!(|data: &[u8]| {
    let _ = dns::query_id(data);
    let Ok(q) = dns::parse_query(data) else {
        return;
    };
    let _ = EgressPolicy::Public.allows_name(&q.name);
    let ips: Vec<Ipv4Addr> = (0..20u32).map(Ipv4Addr::from).collect();
    for reply in [
        dns::answer_a(&q, &ips, 60),
        dns::empty_answer(&q),
        dns::refused(&q),
        dns::servfail(&q),
        dns::nxdomain(&q),
    ] {
        assert!(reply.len() <= 512);
        assert_eq!(dns::query_id(&reply), None, "a reply must not read as a query");
    }
});
