//! The job's JSON Schema beyond what the model's shape gives: the grammar
//! of durations and sizes, and the rules between fields that `validate`
//! enforces (`run` xor `command`, one source per input, no cache with
//! public egress). Each rule is built
//! from the table or constant the loader itself uses, and errs towards
//! accepting: an editor must never flag a manifest `sbxrun validate`
//! accepts, while what only the loader can see (files on disk, references
//! between steps, magnitudes of durations) is left to it.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use super::model::Job;

/// The job schema's `$id`; editors and other tools key on it.
pub const JOB_SCHEMA_ID: &str = "https://sbxrun.dev/schemas/job.schema.json";

/// The JSON Schema of the job format, as checked in at
/// `schemas/job.schema.json`.
pub fn job_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Job>();
    schema.insert("$id".into(), JOB_SCHEMA_ID.into());
    schema.to_value()
}

/// A regex character class of exactly the characters `str::trim` strips
/// (`char::is_whitespace`), as `\uXXXX` escapes that ECMA-262 and Rust
/// regexes read alike.
fn trimmed_class() -> String {
    let mut class = String::from("[");
    let mut run: Option<(u32, u32)> = None;
    let push = |class: &mut String, (a, b): (u32, u32)| {
        class.push_str(&format!("\\u{a:04X}"));
        if b > a {
            class.push_str(&format!("-\\u{b:04X}"));
        }
    };
    // All of Unicode's white space is in the BMP, so `\uXXXX` reaches it;
    // the test below checks every code point.
    for c in (0..=0xFFFF)
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace())
    {
        let c = u32::from(c);
        run = match run {
            Some((a, b)) if b + 1 == c => Some((a, c)),
            Some(r) => {
                push(&mut class, r);
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    if let Some(r) = run {
        push(&mut class, r);
    }
    class.push(']');
    class
}

/// The language `Duration::from_str` accepts, less overflow: numbers
/// followed by units from `units` (largest first), each unit at most once
/// and in order, with whitespace around the whole.
pub(super) fn duration_pattern(units: &[(&str, u64)]) -> String {
    let alternatives: Vec<String> = (0..units.len())
        .map(|first| {
            let mut alt = format!("[0-9]+{}", units[first].0);
            for (unit, _) in &units[first + 1..] {
                alt.push_str(&format!("(?:[0-9]+{unit})?"));
            }
            alt
        })
        .collect();
    let ws = trimmed_class();
    format!("^{ws}*(?:{}){ws}*$", alternatives.join("|"))
}

/// The language `ByteSize::from_str` accepts, less overflow: one number
/// and one unit from `units`, with whitespace around.
pub(super) fn size_pattern(units: &[(&str, u64)]) -> String {
    let names: Vec<&str> = units.iter().map(|(u, _)| *u).collect();
    let ws = trimmed_class();
    format!("^{ws}*[0-9]+(?:{}){ws}*$", names.join("|"))
}

/// `{ key: <not null> }` is present: serde reads a `null` as left out.
fn set(key: &str) -> Value {
    json!({ "required": [key], "properties": { key: { "not": { "type": "null" } } } })
}

fn unset(key: &str) -> Value {
    json!({ "not": set(key) })
}

/// An image that may be a container image, whose own command lets a step
/// go without `run` or `command`. `default` and path-like names never
/// are; a bare name might be a directory next to the manifest, which only
/// the loader can tell, so it is given the benefit of the doubt.
fn maybe_container_image() -> Value {
    json!({
        "type": ["string", "number", "boolean"],
        "not": { "anyOf": [
            { "const": "default" },
            { "type": "string", "pattern": "^(?:/|\\./|\\.\\./|\\.\\.?$)" }
        ] }
    })
}

/// What a step must say to run something, given whether the job's
/// `defaults.image` may be a container image.
fn step_command_rule(container_default: bool) -> Value {
    let image_ok = if container_default {
        json!({ "anyOf": [
            unset("image"),
            { "properties": { "image": maybe_container_image() } }
        ] })
    } else {
        json!({ "required": ["image"], "properties": { "image": maybe_container_image() } })
    };
    json!({
        "oneOf": [
            set("run"),
            set("command"),
            { "allOf": [unset("run"), unset("command"), image_ok] }
        ]
    })
}

/// `egress` (a step's or the defaults') whose policy is `public`.
fn public_egress() -> Value {
    json!({ "anyOf": [
        { "const": "public" },
        { "type": "object", "required": ["policy"], "properties": { "policy": { "const": "public" } } }
    ] })
}

/// A step `cache` that asks for caching (`true` or a map).
fn caches() -> Value {
    json!({
        "required": ["cache"],
        "properties": { "cache": { "anyOf": [{ "const": true }, { "type": "object" }] } }
    })
}

/// A step may not ask for caching when its egress is `public`, its own or,
/// when its `egress` sets no policy, the defaults'.
fn step_cache_rule(public_default: bool) -> Value {
    let own_public = json!({ "required": ["egress"], "properties": { "egress": public_egress() } });
    let public = if public_default {
        let own_policy = json!({
            "required": ["egress"],
            "properties": { "egress": { "anyOf": [
                { "type": "string" },
                { "type": "object", "anyOf": [set("allow"), set("policy")] }
            ] } }
        });
        json!({ "anyOf": [own_public, { "not": own_policy }] })
    } else {
        own_public
    };
    json!({ "not": { "allOf": [caches(), public] } })
}

/// Job-level rules: what a step must say depends on the job's `defaults`
/// (`image` for `run` xor `command`, `egress` for `cache`), which a step
/// schema alone cannot see.
pub(super) fn job_rules(schema: &mut Schema) {
    let defaults_image = json!({
        "required": ["defaults"],
        "properties": { "defaults": {
            "required": ["image"],
            "properties": { "image": maybe_container_image() }
        } }
    });
    let defaults_public = json!({
        "required": ["defaults"],
        "properties": { "defaults": {
            "required": ["egress"],
            "properties": { "egress": public_egress() }
        } }
    });
    let steps_must =
        |rule: Value| json!({ "properties": { "steps": { "additionalProperties": rule } } });
    schema.insert(
        "allOf".into(),
        json!([
            {
                "if": defaults_image,
                "then": steps_must(step_command_rule(true)),
                "else": steps_must(step_command_rule(false))
            },
            {
                "if": defaults_public,
                "then": steps_must(step_cache_rule(true)),
                "else": steps_must(step_cache_rule(false))
            }
        ]),
    );
}

/// An input takes exactly one of `host` and `step`; `path` only with `step`.
pub(super) fn input_rules(schema: &mut Schema) {
    schema.insert(
        "anyOf".into(),
        json!([
            { "allOf": [set("host"), unset("step"), unset("path")] },
            { "allOf": [set("step"), unset("host")] }
        ]),
    );
}

/// Non-blank text: what `validate` asks of the job's name.
pub(super) struct NonBlank;

impl JsonSchema for NonBlank {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NonBlank".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let class = trimmed_class();
        let not_ws = format!("[^{}", &class[1..]);
        // A number or boolean is read as its text, never blank.
        json_schema!({ "type": ["string", "number", "boolean"], "pattern": not_ws })
    }
}

/// A path under the step's work dir, checked as `validate` does: not
/// empty, not absolute, no `..` component.
pub(super) struct WorkPath;

impl JsonSchema for WorkPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkPath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A number or boolean is read as its text, which is a fine path.
        json_schema!({
            "type": ["string", "number", "boolean"],
            "description": "A path relative to the step's work dir, without `..`.",
            "minLength": 1,
            "not": { "type": "string", "pattern": "^/|(?:^|/)\\.\\.(?:/|$)" }
        })
    }
}

/// One matrix key's values: at least one, none twice, each usable in an
/// instance id.
pub(super) struct MatrixValues;

impl JsonSchema for MatrixValues {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MatrixValues".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "minItems": 1,
            "uniqueItems": true,
            "items": { "anyOf": [
                { "type": "string", "pattern": "^[^\\[\\],=\\n]+$" },
                { "type": ["number", "boolean"] }
            ] }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::units::{ByteSize, Duration, UnitError, DURATION_UNITS, SIZE_UNITS};
    use super::*;

    /// A JSON Schema validator's reading of `pattern`, as editors see it.
    fn pattern(pattern: &str) -> jsonschema::Validator {
        let schema = json!({ "type": "string", "pattern": pattern });
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    /// Strings around the grammar's edges: every unit, pairs of units in
    /// both orders, repeats, case, signs, decimals, inner and outer
    /// whitespace of several kinds.
    fn probes(units: &[(&str, u64)]) -> Vec<String> {
        let mut out: Vec<String> = [
            "",
            " ",
            "0",
            "30",
            "s",
            "ms",
            "1",
            "1 s",
            " 1s",
            "1s ",
            "\t1s\n",
            "\u{85}1s",
            "\u{a0}1s\u{3000}",
            "\u{feff}1s",
            "\u{200b}1s",
            "1s\u{2028}",
            "-1s",
            "+1s",
            "1.5s",
            "1,5s",
            "1_000s",
            "1e3s",
            "0x10s",
            "١s",
            "1S",
            "1MS",
            "1sec",
            "30sec",
            "1hm",
            "1mms",
            "1m1",
            "1m 1s",
            "01s",
            "00ms",
            "1d2h3m4s5ms",
            "1d5ms",
            "1h1d",
            "ms1",
            "99999999999999999999d",
            "18446744073709551615ms",
            "512mb",
            "512MiB",
            "1G1M",
            "5 MiB",
            "1Kib",
            "1kB",
            "10B",
            "1b",
            "0B",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for (a, _) in units {
            out.push(format!("7{a}"));
            out.push(format!("7{a}x"));
            out.push(format!("{a}7"));
            out.push(format!("7{}", a.to_uppercase()));
            for (b, _) in units {
                out.push(format!("1{a}2{b}"));
                out.push(format!("1{a}{b}"));
                out.push(format!("1{a}2{b}3"));
            }
        }
        out
    }

    /// Whether the parser accepts `s` as far as a pattern can tell:
    /// magnitude is for `validate`'s ranges, which every duration and size
    /// field has, so a number too large to hold is judged by the same text
    /// with small numbers.
    fn accepts(s: &str, parse: impl Fn(&str) -> Result<(), UnitError>) -> bool {
        match parse(s) {
            Ok(()) => true,
            Err(UnitError::Overflow(_)) => {
                let mut small = String::new();
                for c in s.chars() {
                    if !(c.is_ascii_digit() && small.ends_with(|p: char| p.is_ascii_digit())) {
                        small.push(if c.is_ascii_digit() { '1' } else { c });
                    }
                }
                parse(&small).is_ok()
            }
            Err(_) => false,
        }
    }

    #[test]
    fn the_duration_pattern_accepts_what_the_parser_accepts() {
        let pattern = pattern(&duration_pattern(DURATION_UNITS));
        let mut strings = probes(DURATION_UNITS);
        strings.extend(probes(SIZE_UNITS));
        for s in strings {
            let parsed = s.parse::<Duration>();
            let expected = accepts(&s, |t| t.parse::<Duration>().map(|_| ()));
            assert_eq!(pattern.is_valid(&json!(s)), expected, "{s:?}: {parsed:?}");
        }
    }

    #[test]
    fn the_size_pattern_accepts_what_the_parser_accepts() {
        let pattern = pattern(&size_pattern(SIZE_UNITS));
        let mut strings = probes(SIZE_UNITS);
        strings.extend(probes(DURATION_UNITS));
        for s in strings {
            let parsed = s.parse::<ByteSize>();
            let expected = accepts(&s, |t| t.parse::<ByteSize>().map(|_| ()));
            assert_eq!(pattern.is_valid(&json!(s)), expected, "{s:?}: {parsed:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_unit_text_is_judged_alike(s in "[0-9dhmsKMGTiBb .\t\u{a0}-]{0,9}") {
            let duration = pattern(&duration_pattern(DURATION_UNITS));
            let size = pattern(&size_pattern(SIZE_UNITS));
            proptest::prop_assert_eq!(
                duration.is_valid(&json!(s)),
                accepts(&s, |t| t.parse::<Duration>().map(|_| ()))
            );
            proptest::prop_assert_eq!(
                size.is_valid(&json!(s)),
                accepts(&s, |t| t.parse::<ByteSize>().map(|_| ()))
            );
        }
    }

    #[test]
    fn units_need_no_regex_escaping() {
        for (u, _) in DURATION_UNITS.iter().chain(SIZE_UNITS) {
            assert!(u.bytes().all(|b| b.is_ascii_alphabetic()), "{u}");
        }
    }

    #[test]
    fn the_trimmed_class_is_what_trim_strips() {
        let class = pattern(&format!("^{}$", trimmed_class()));
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let s = c.to_string();
            let in_class = class.is_valid(&json!(s));
            assert_eq!(in_class, s.trim().is_empty(), "U+{:04X}", u32::from(c));
        }
    }
}
