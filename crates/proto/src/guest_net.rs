//! The guest's network addresses: the VMM answers on the gateway address
//! and the runner writes the same values into the guest's interface setup.

use std::net::Ipv4Addr;

/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway's address; it also answers DNS on port 53.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The prefix length of the guest's network.
pub const PREFIX_LEN: u8 = 24;
