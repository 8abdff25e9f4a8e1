//! The in-guest agent's shared pieces. `proto` is the single definition of
//! the host<->guest wire protocol; the host crate depends on it.

pub mod proto;
