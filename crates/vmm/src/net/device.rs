//! The smoltcp device between the stack and its queues: frames the stack
//! already vetted go in, frames smoltcp sends come out. Nothing here
//! touches the guest directly, so the stack decides what smoltcp sees.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::MTU;

/// Ethernet header length (no VLAN tags: the guest gets none).
pub(super) const ETHERNET_HEADER_LEN: usize = 14;

/// Queues on both sides of smoltcp.
#[derive(Debug, Default)]
pub(super) struct FrameQueues {
    /// Vetted guest frames for smoltcp to process.
    pub(super) rx: VecDeque<Vec<u8>>,
    /// Frames smoltcp produced, for the guest.
    pub(super) tx: Vec<Vec<u8>>,
}

impl phy::Device for FrameQueues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + ETHERNET_HEADER_LEN;
        // smoltcp may queue one frame per socket per poll; the stack moves
        // them out after every poll, so there is no point in a burst limit.
        caps.max_burst_size = None;
        caps
    }
}

/// One received frame.
pub(super) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// A slot for one outgoing frame.
pub(super) struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}
