//! The first-bytes sniffer never panics, never asks for more once
//! `SNIFF_LIMIT` bytes have arrived, and never changes its mind.
//! Run: `cargo +nightly fuzz run sniff` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbxrun_egress::{sniff, Sniff, SNIFF_LIMIT};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if data.len() >= SNIFF_LIMIT {
        assert_ne!(verdict, Sniff::NeedMore);
    }
    // Once a prefix decides, more bytes must not change the answer: the
    // VMM acts on the first decision.
    if let Some(half) = data.get(..data.len() / 2) {
        let early = sniff(half);
        if early != Sniff::NeedMore {
            assert_eq!(early, verdict);
        }
    }
});
