//! The manifest loaders and the planner never panic on any input.
//! Run: `cargo +nightly fuzz run manifest` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbxrun_runner::manifest::{load_source, SourceFile, Syntax};
use sbxrun_runner::plan::{Plan, Selection};

fuzz_target!(|data: &[u8]| {
    // First byte picks the syntax, the rest is the manifest.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let syntax = if pick & 1 == 0 { Syntax::Yaml } else { Syntax::Kdl };
    let src = SourceFile::new("fuzz", text.to_owned(), ".".into(), syntax);
    if let Ok(job) = load_source(src) {
        let _ = Plan::new(&job, &Selection::All);
    }
});
