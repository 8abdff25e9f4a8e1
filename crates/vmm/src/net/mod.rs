//! The VMM's userspace network stack: terminates every Ethernet frame the
//! guest sends on its virtio-net device and enforces the step's egress
//! policy on it.
//!
//! The guest sees a /24 with a gateway that also answers DNS. The gateway
//! is a [`smoltcp`] interface in "any IP" mode, so it accepts TCP for every
//! destination; a connection exists only once the policy allowed it and
//! the runner's broker opened the upstream socket (this process never opens
//! a host socket itself). DNS is answered here, for allowed names only, and
//! the answers are pinned so that a later connect can be traced back to a
//! name. Everything else (UDP, ICMP, IPv6, other ethertypes) goes nowhere.
//!
//! Data flow: [`NetInput`] messages (guest frames, broker replies, the
//! policy) → [`NetStack`] → frames for the guest through [`GuestPort`],
//! requests to the runner through [`BrokerClient`]. [`run_net_thread`] is
//! the event loop that drives it.

// Only `thread.rs` needs one unsafe block, to hand the eventfd to poll(2).
#![deny(unsafe_code)]

mod conn;
mod device;
mod dns;
mod mapped;
mod stack;
mod thread;

use std::net::{IpAddr, TcpStream};
use std::time::Instant;

use sbxrun_egress::{EgressEvent, EgressPolicy};

pub use stack::NetStack;
pub(crate) use thread::run_net_thread;

pub use sbxrun_proto::guest_net::{GATEWAY_IP, GUEST_IP, PREFIX_LEN};
/// The guest's MAC address (the virtio-net device reports it in its config).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The gateway's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The IP MTU of the guest's link (frames are at most 14 bytes longer).
pub const MTU: usize = 1500;
/// The DNS port the gateway answers on.
pub const DNS_PORT: u16 = 53;

/// Where frames for the guest go (implemented over the virtio-net device).
pub trait GuestPort: Send {
    /// Hands one Ethernet frame to the guest. Returns false when the guest
    /// has no receive buffer now: the stack keeps the frame and retries
    /// after [`NetInput::RxSpace`].
    fn deliver(&mut self, frame: &[u8]) -> bool;
}

/// Requests to the runner's broker. Every call returns at once; the reply
/// comes back later as [`NetInput::Broker`] with the same `id`.
pub trait BrokerClient: Send {
    /// Resolves `name` (already allowed by the policy) to addresses.
    fn resolve(&mut self, id: u64, name: &str);
    /// Opens a TCP connection to `ip:port`. `names` are the allowed names
    /// that made the address reachable (empty when an address rule did),
    /// so the broker can check them again.
    fn connect(&mut self, id: u64, ip: IpAddr, port: u16, names: &[String]);
    /// Records an egress event for the step's report.
    fn event(&mut self, event: EgressEvent);
}

/// A reply from the broker.
#[derive(Debug)]
pub enum BrokerReply {
    /// The answer to [`BrokerClient::resolve`]: the addresses, and whether
    /// they were given by the operator (`--resolve`) rather than by DNS, so
    /// that non-public ones are kept.
    Resolved {
        /// The id of the request.
        id: u64,
        /// The addresses and the "trusted" flag, or why resolving failed.
        result: Result<(Vec<IpAddr>, bool), String>,
    },
    /// The answer to [`BrokerClient::connect`].
    Connected {
        /// The id of the request.
        id: u64,
        /// The connected socket, or why connecting failed.
        result: Result<TcpStream, String>,
    },
}

/// What the network thread is told.
#[derive(Debug)]
pub enum NetInput {
    /// A frame the guest sent.
    GuestFrame(Vec<u8>),
    /// The guest posted receive buffers: retry the frames it refused.
    RxSpace,
    /// The policy of the step that starts now.
    SetPolicy {
        /// The step's policy.
        policy: EgressPolicy,
        /// When the step started; event times count from here.
        step_started: Instant,
    },
    /// A reply from the broker.
    Broker(BrokerReply),
    /// Stop the thread.
    Shutdown,
}

#[cfg(test)]
mod loopback_tests;
#[cfg(test)]
mod test_guest;
#[cfg(test)]
mod thread_tests;
