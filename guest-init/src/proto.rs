//! Host<->guest wire protocol (placeholder; defined by the guest-init work).
