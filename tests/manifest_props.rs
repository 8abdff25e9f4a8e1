//! The loaders never panic, whatever the input; units and egress rules
//! survive a print/parse round trip.

use proptest::prelude::*;

use sbxrun_runner::manifest::{load_source, ByteSize, Duration, EgressRule, SourceFile, Syntax};
use sbxrun_runner::plan::{Plan, Selection};

const SEED_YAML: &str = include_str!("../fixtures/manifests/valid/full.yaml");
const SEED_KDL: &str = include_str!("../fixtures/manifests/valid/full.kdl");

/// Loads and, if that works, plans; only a panic fails the property.
fn load_and_plan(text: String, syntax: Syntax) {
    let src = SourceFile::new("p", text, "fixtures/manifests/valid".into(), syntax);
    if let Ok(job) = load_source(src) {
        let _ = Plan::new(&job, &Selection::All);
    }
}

/// `seed` with a few spans replaced by fragments that matter to the parsers.
fn mutate(seed: &str, edits: &[(usize, usize, usize)]) -> String {
    const BITS: &[&str] = &[
        ":",
        "{",
        "}",
        "[",
        "]",
        "-",
        "\n",
        " ",
        "\"",
        "'",
        "&a",
        "*a",
        "<<: ",
        "!",
        "|",
        "#",
        "${{",
        "}}",
        "matrix.",
        "\t",
        "é",
        "/-",
        "#true",
        "\"\"\"",
        "needs",
        "step",
        "=",
        "..",
        "0",
        "99999999999999999999",
        "",
    ];
    let mut s: Vec<char> = seed.chars().collect();
    for &(pos, del, bit) in edits {
        if s.is_empty() {
            break;
        }
        let at = pos % s.len();
        let end = (at + del % 8).min(s.len());
        let insert: Vec<char> = BITS[bit % BITS.len()].chars().collect();
        s.splice(at..end, insert);
    }
    s.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn yaml_loader_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        load_and_plan(text, Syntax::Yaml);
    }

    #[test]
    fn kdl_loader_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        load_and_plan(text, Syntax::Kdl);
    }

    #[test]
    fn yaml_loader_never_panics_on_mutated_manifests(
        edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 1..6)
    ) {
        load_and_plan(mutate(SEED_YAML, &edits), Syntax::Yaml);
    }

    #[test]
    fn kdl_loader_never_panics_on_mutated_manifests(
        edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 1..6)
    ) {
        load_and_plan(mutate(SEED_KDL, &edits), Syntax::Kdl);
    }

    #[test]
    fn durations_round_trip_through_display(ms in 0u64..(400 * 86_400_000)) {
        let d = Duration(std::time::Duration::from_millis(ms));
        prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }

    #[test]
    fn sizes_round_trip_through_display(n in any::<u64>()) {
        let s = ByteSize(n);
        prop_assert_eq!(s.to_string().parse::<ByteSize>(), Ok(s));
    }

    #[test]
    fn ipv4_cidr_rules_round_trip(a in any::<u32>(), prefix in 0u8..=32, port in proptest::option::of(1u16..)) {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let net = std::net::Ipv4Addr::from(a & mask);
        let text = match port {
            Some(p) => format!("{net}/{prefix}:{p}"),
            None => format!("{net}/{prefix}"),
        };
        let rule: EgressRule = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(rule.to_string(), text);
    }
}
