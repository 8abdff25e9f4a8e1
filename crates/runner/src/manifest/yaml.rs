//! YAML → [`Node`] tree, built from the scanner's events so every value keeps
//! its span. Anchors, aliases and merge keys (`<<`) are resolved here;
//! duplicate keys are rejected here (a map type would silently keep one).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};

use super::error::Problem;
use super::node::{Kind, Node, Scalar};
use super::source::{CharIndex, Span};

/// Deeper nesting than this is refused (a manifest never needs it, and it
/// keeps hostile input from exhausting the stack).
const MAX_DEPTH: usize = 64;
/// Cap on nodes after alias expansion ("billion laughs").
const MAX_NODES: usize = 2_000_000;

/// Parses YAML text into a node tree.
pub fn parse(text: &str) -> Result<Node, Problem> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        chars: CharIndex::new(text),
        anchors: HashMap::new(),
        nodes: 0,
    };
    reader.document()
}

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    chars: CharIndex,
    /// Anchor id → (node, its size in nodes).
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl<'a> Reader<'a> {
    fn span(&self, s: YSpan) -> Span {
        let start = self.chars.byte(s.start.index());
        let end = self.chars.byte(s.end.index()).max(start);
        Span::new(start, end - start)
    }

    fn next(&mut self) -> Result<(Event<'a>, Span), Problem> {
        match self.parser.next_event() {
            Some(Ok((ev, span))) => {
                let span = self.span(span);
                Ok((ev, span))
            }
            Some(Err(e)) => {
                let at = self.chars.byte(e.marker().index());
                Err(Problem::new(
                    "yaml::syntax",
                    format!("invalid YAML: {}", e.info()),
                    Span::new(at, 0),
                    "here",
                ))
            }
            None => Err(Problem::new(
                "yaml::syntax",
                "invalid YAML: unexpected end of input",
                Span::default(),
                "here",
            )),
        }
    }

    fn document(&mut self) -> Result<Node, Problem> {
        let mut root = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(Problem::new(
                            "yaml::multiple_documents",
                            "a manifest holds exactly one YAML document",
                            span,
                            "a second document starts here",
                        ));
                    }
                    let (ev, span) = self.next()?;
                    root = Some(self.node(ev, span, 0)?);
                }
                // A stream without document markers still yields
                // DocumentStart first; anything else is an event order we
                // do not want to panic on.
                other => return Err(unexpected(&other, span)),
            }
        }
        Ok(root.unwrap_or_else(|| Node::new(Kind::Scalar(Scalar::Null), Span::default())))
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), Problem> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(Problem::new(
                "yaml::too_large",
                "the manifest expands to too many values (aliases nested too deeply?)",
                span,
                "while expanding this",
            ));
        }
        Ok(())
    }

    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node, Problem> {
        if depth > MAX_DEPTH {
            return Err(Problem::new(
                "yaml::too_deep",
                format!("values are nested more than {MAX_DEPTH} levels deep"),
                span,
                "here",
            ));
        }
        let before = self.nodes;
        self.count(1, span)?;
        let (node, anchor) = match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let scalar = if style == ScalarStyle::Plain && !forced_str {
                    resolve_plain(&value)
                } else {
                    Scalar::Str(value.into_owned())
                };
                (Node::new(Kind::Scalar(scalar), span), anchor)
            }
            Event::Alias(id) => {
                let Some((target, size)) = self.anchors.get(&id).cloned() else {
                    return Err(Problem::new(
                        "yaml::unknown_alias",
                        "alias to an anchor that is not defined before it",
                        span,
                        "unknown alias",
                    ));
                };
                self.count(size, span)?;
                let mut n = target;
                n.head = span;
                (n, 0)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end = loop {
                    let (ev, s) = self.next()?;
                    if let Event::SequenceEnd = ev {
                        break s;
                    }
                    items.push(self.node(ev, s, depth + 1)?);
                };
                (Node::new(Kind::Seq(items), span.join(end)), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let node = self.mapping(span, depth)?;
                (node, anchor)
            }
            other => return Err(unexpected(&other, span)),
        };
        if anchor != 0 {
            let size = self.nodes - before;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }

    fn mapping(&mut self, start: Span, depth: usize) -> Result<Node, Problem> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        // Key text → index in `entries`, so large maps stay linear.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut merged: Vec<(Node, Node)> = Vec::new();
        let end = loop {
            let (ev, s) = self.next()?;
            if let Event::MappingEnd = ev {
                break s;
            }
            let is_merge = matches!(&ev, Event::Scalar(v, ScalarStyle::Plain, _, _) if v == "<<");
            let key = self.node(ev, s, depth + 1)?;
            if let Kind::Seq(_) | Kind::Map(_) = key.kind {
                return Err(Problem::new(
                    "yaml::complex_key",
                    "map keys must be plain values",
                    key.span,
                    "this key is a list or map",
                ));
            }
            let (ev, s) = self.next()?;
            let mut value = self.node(ev, s, depth + 1)?;
            if is_merge {
                merge_sources(&key, value, &mut merged)?;
                continue;
            }
            if matches!(value.kind, Kind::Map(_) | Kind::Seq(_)) {
                value.head = key.span;
            }
            let text = key.key_text();
            if let Some(&first) = seen.get(&text) {
                return Err(Problem::new(
                    "yaml::duplicate_key",
                    format!("duplicate key `{text}`"),
                    key.span,
                    "defined again here",
                )
                .with_note(entries[first].0.span, "first defined here"));
            }
            seen.insert(text, entries.len());
            entries.push((key, value));
        };
        // Explicit keys win over merged ones; among merged maps the first
        // listed wins (YAML merge-key semantics).
        for (k, v) in merged {
            let text = k.key_text();
            if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(text) {
                slot.insert(entries.len());
                entries.push((k, v));
            }
        }
        Ok(Node::new(Kind::Map(entries), start.join(end)))
    }
}

fn unexpected(event: &Event<'_>, span: Span) -> Problem {
    Problem::new(
        "yaml::syntax",
        format!("invalid YAML: unexpected {event:?}"),
        span,
        "here",
    )
}

/// Collects the entries a `<<` value contributes, first source first.
fn merge_sources(key: &Node, value: Node, out: &mut Vec<(Node, Node)>) -> Result<(), Problem> {
    let mut add = |map: Node| -> Result<(), Problem> {
        match map.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let text = k.key_text();
                    if !out.iter().any(|(e, _)| e.key_text() == text) {
                        out.push((k, v));
                    }
                }
                Ok(())
            }
            _ => Err(Problem::new(
                "yaml::bad_merge",
                "a merge key (`<<`) takes a map or a list of maps",
                map.span,
                format!("this is {}", map.describe()),
            )
            .with_note(key.span, "merge key")),
        }
    };
    match value.kind {
        Kind::Seq(items) => items.into_iter().try_for_each(add),
        _ => add(value),
    }
}

/// YAML 1.2 core-schema resolution of a plain scalar.
fn resolve_plain(v: &str) -> Scalar {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = v.parse::<i64>() {
            return Scalar::Int(i);
        }
    }
    if let Some(hex) = v.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Scalar::Int(i);
        }
    }
    if let Some(oct) = v.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Scalar::Int(i);
        }
    }
    if looks_like_float(v) {
        if let Ok(f) = v.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    Scalar::Str(v.to_owned())
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` without a regex.
fn looks_like_float(v: &str) -> bool {
    let s = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let all_digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(int)
        && frac.is_none_or(all_digits)
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exp_ok && (frac.is_some() || exp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_keys(n: &Node) -> Vec<String> {
        match &n.kind {
            Kind::Map(e) => e.iter().map(|(k, _)| k.key_text()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn plain_scalars_resolve_to_core_schema_types() {
        assert_eq!(resolve_plain("12"), Scalar::Int(12));
        assert_eq!(resolve_plain("1.5"), Scalar::Float(1.5));
        assert_eq!(resolve_plain("true"), Scalar::Bool(true));
        assert_eq!(resolve_plain("~"), Scalar::Null);
        assert_eq!(resolve_plain("10m"), Scalar::Str("10m".into()));
        assert_eq!(resolve_plain("1.2.3"), Scalar::Str("1.2.3".into()));
    }

    #[test]
    fn merge_keys_fill_in_missing_entries_only() {
        let n = parse("base: &b { a: 1, b: 2 }\nx:\n  <<: *b\n  b: 3\n").unwrap();
        let Kind::Map(e) = &n.kind else { panic!() };
        let x = &e[1].1;
        assert_eq!(map_keys(x), vec!["b", "a"]);
        let Kind::Map(xe) = &x.kind else { panic!() };
        assert_eq!(xe[0].1.kind, Kind::Scalar(Scalar::Int(3)));
    }

    #[test]
    fn duplicate_keys_are_rejected_with_both_places() {
        let p = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(p.code, "yaml::duplicate_key");
        assert_eq!(p.span.offset, 5);
        assert_eq!(p.notes[0].0.offset, 0);
    }

    #[test]
    fn scalar_spans_cover_the_value_text() {
        let text = "name: héllo\nnext: 'x y'\n";
        let n = parse(text).unwrap();
        let Kind::Map(e) = &n.kind else { panic!() };
        let v = &e[0].1;
        assert_eq!(&text[v.span.offset..v.span.end()], "héllo");
        let k = &e[1].0;
        assert_eq!(&text[k.span.offset..k.span.end()], "next");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(parse(&s).unwrap_err().code, "yaml::too_large");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(parse(&s).unwrap_err().code, "yaml::too_deep");
        // Far deeper input is stopped by the scanner itself, still as an error.
        let s = "[".repeat(100_000);
        assert!(parse(&s).is_err());
    }
}
