//! KDL (v2) → [`Node`] tree. KDL has nodes, not maps and lists, so this
//! reader knows the few places where the job format needs them:
//!
//! - `step "id" { ... }` nodes form the `steps` map;
//! - `input host="./src" to="."` nodes form the `inputs` list;
//! - list fields take their items as arguments (`needs "a" "b"`,
//!   `output "out/prog"`) and repeated nodes add to the list;
//! - under `env` and `matrix` child names are user keys, kept as written;
//!   everywhere else `kebab-case` names become the model's `snake_case`.
//!
//! Otherwise a node with one argument is a scalar, a node with properties
//! and/or children is a map.

use std::collections::HashMap;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};

use super::error::Problem;
use super::node::{Kind, Node, Scalar};
use super::source::Span;

/// Fields whose value is a list, by KDL node name; the second name is the
/// model field they fill.
const LIST_FIELDS: &[(&str, &str)] = &[
    ("needs", "needs"),
    ("secrets", "secrets"),
    ("command", "command"),
    ("retry-on", "retry_on"),
    ("output", "outputs"),
    ("outputs", "outputs"),
    ("allow", "allow"),
];

/// Deeper nesting than this is refused.
const MAX_DEPTH: usize = 32;

/// Parses KDL text into a node tree.
pub fn parse(text: &str) -> Result<Node, Vec<Problem>> {
    let doc: KdlDocument = text.parse().map_err(|e: kdl::KdlError| {
        e.diagnostics
            .into_iter()
            .map(|d| {
                let span = Span::new(d.span.offset(), d.span.len());
                let message = d.message.unwrap_or_else(|| "invalid KDL".to_owned());
                // `timeout 10m`: a bare value starting with a digit is a
                // number in KDL; durations and sizes must be quoted.
                let under = text.get(span.offset..span.end()).unwrap_or("");
                let help = if under.starts_with(|c: char| c.is_ascii_digit())
                    && under.contains(|c: char| c.is_ascii_alphabetic())
                {
                    Some(format!(
                        "values with units are strings in KDL: write \"{under}\""
                    ))
                } else {
                    d.help
                };
                Problem::new(
                    "kdl::syntax",
                    format!("invalid KDL: {}", lowercase_first(&message)),
                    span,
                    d.label.unwrap_or_else(|| "here".to_owned()),
                )
                .with_opt_help(help)
            })
            .collect::<Vec<_>>()
    })?;
    let reader = Reader { text };
    let span = Span::new(0, 0);
    reader.fields(&doc, Ctx::Top, span, 0).map_err(|p| vec![p])
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Where in the job a block of nodes sits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    Fields,
    /// Children are user keys (env names) with one value each.
    UserKeys,
    /// Children are matrix keys, each with a list of values.
    Matrix,
}

struct Reader<'t> {
    text: &'t str,
}

fn span_of(s: miette::SourceSpan) -> Span {
    Span::new(s.offset(), s.len())
}

impl Reader<'_> {
    /// The span of an entry's value (a property's span covers `key=value`).
    fn value_span(&self, e: &KdlEntry) -> Span {
        let whole = span_of(e.span());
        let Some(name) = e.name() else {
            return whole;
        };
        let after_name = span_of(name.span()).end();
        let rest = self.text.get(after_name..whole.end()).unwrap_or("");
        let skip = rest
            .find('=')
            .map(|i| i + 1 + rest[i + 1..].len() - rest[i + 1..].trim_start().len())
            .unwrap_or(0);
        let start = (after_name + skip).min(whole.end());
        Span::new(start, whole.end() - start)
    }

    fn scalar(&self, e: &KdlEntry) -> Node {
        let s = match e.value() {
            KdlValue::String(s) => Scalar::Str(s.clone()),
            KdlValue::Integer(i) => match i64::try_from(*i) {
                Ok(i) => Scalar::Int(i),
                Err(_) => Scalar::Str(i.to_string()),
            },
            KdlValue::Float(f) => Scalar::Float(*f),
            KdlValue::Bool(b) => Scalar::Bool(*b),
            KdlValue::Null => Scalar::Null,
        };
        Node::new(Kind::Scalar(s), self.value_span(e))
    }

    fn args<'n>(&self, node: &'n KdlNode) -> impl Iterator<Item = &'n KdlEntry> {
        node.entries().iter().filter(|e| e.name().is_none())
    }

    fn props<'n>(&self, node: &'n KdlNode) -> impl Iterator<Item = &'n KdlEntry> {
        node.entries().iter().filter(|e| e.name().is_some())
    }

    /// A block of nodes as a map.
    fn fields(
        &self,
        doc: &KdlDocument,
        ctx: Ctx,
        head: Span,
        depth: usize,
    ) -> Result<Node, Problem> {
        if depth > MAX_DEPTH {
            return Err(Problem::new(
                "kdl::too_deep",
                format!("nodes are nested more than {MAX_DEPTH} levels deep"),
                head,
                "here",
            ));
        }
        let mut map = MapBuilder::default();
        let mut steps: Option<MapBuilder> = None;
        let mut steps_key = Span::default();
        for node in doc.nodes() {
            let raw = node.name().value();
            let name_span = span_of(node.name().span());
            if ctx == Ctx::Top && raw == "step" {
                let (id, body) = self.step(node, depth)?;
                if steps.is_none() {
                    steps_key = name_span;
                }
                steps
                    .get_or_insert_with(MapBuilder::default)
                    .insert(id, body)?;
                continue;
            }
            let key_name = match ctx {
                Ctx::UserKeys | Ctx::Matrix => raw.to_owned(),
                Ctx::Top | Ctx::Fields => raw.replace('-', "_"),
            };
            let list_field = match ctx {
                Ctx::Top | Ctx::Fields => {
                    LIST_FIELDS.iter().find(|(k, _)| *k == raw).map(|(_, f)| *f)
                }
                Ctx::UserKeys | Ctx::Matrix => None,
            };
            let key_name = list_field.unwrap_or(&key_name).to_owned();
            if ctx == Ctx::Matrix || list_field.is_some() {
                let items = self.list(node)?;
                map.append_list(Node::string(key_name, name_span), items, node_span(node));
                continue;
            }
            if matches!(ctx, Ctx::Top | Ctx::Fields) && (raw == "input" || raw == "inputs") {
                let item = self.props_map(node, name_span)?;
                map.append_list(
                    Node::string("inputs", name_span),
                    vec![item],
                    node_span(node),
                );
                continue;
            }
            let child_ctx = match (ctx, raw) {
                (Ctx::Top | Ctx::Fields, "env") => Ctx::UserKeys,
                (Ctx::Top | Ctx::Fields, "matrix") => Ctx::Matrix,
                _ => Ctx::Fields,
            };
            let value = self.value(node, child_ctx, name_span, depth)?;
            map.insert(Node::string(key_name, name_span), value)?;
        }
        let mut node = map.finish(head);
        if let (Some(steps), Kind::Map(entries)) = (steps, &mut node.kind) {
            let mut steps = steps.finish(steps_key);
            steps.head = steps_key;
            entries.push((Node::string("steps", steps_key), steps));
        }
        Ok(node)
    }

    /// `step "id" { ... }` → (id, body).
    fn step(&self, node: &KdlNode, depth: usize) -> Result<(Node, Node), Problem> {
        let args: Vec<&KdlEntry> = self.args(node).collect();
        let name_span = span_of(node.name().span());
        let [id] = args.as_slice() else {
            return Err(Problem::new(
                "kdl::step_id",
                "a step node takes exactly one argument, its id: `step \"build\" { ... }`",
                name_span,
                format!("{} arguments here", args.len()),
            ));
        };
        if let Some(p) = self.props(node).next() {
            return Err(unexpected_property(
                self,
                p,
                "step settings go in its `{ ... }` block",
            ));
        }
        let id_node = self.scalar(id);
        let body = match node.children() {
            Some(doc) => {
                let mut b = self.fields(doc, Ctx::Fields, id_node.span, depth + 1)?;
                b.head = id_node.span;
                b
            }
            None => Node::new(Kind::Map(Vec::new()), id_node.span),
        };
        Ok((id_node, body))
    }

    /// A list field: its arguments, one item each.
    fn list(&self, node: &KdlNode) -> Result<Vec<Node>, Problem> {
        if let Some(p) = self.props(node).next() {
            return Err(unexpected_property(
                self,
                p,
                "list items are arguments: `needs \"a\" \"b\"`",
            ));
        }
        if let Some(children) = node.children() {
            return Err(Problem::new(
                "kdl::unexpected_children",
                format!(
                    "`{}` takes its items as arguments, not a block",
                    node.name().value()
                ),
                span_of(children.span()),
                "unexpected block",
            ));
        }
        Ok(self.args(node).map(|e| self.scalar(e)).collect())
    }

    /// A node whose properties form a map (`input host="x" to="."`).
    fn props_map(&self, node: &KdlNode, head: Span) -> Result<Node, Problem> {
        if let Some(a) = self.args(node).next() {
            return Err(Problem::new(
                "kdl::unexpected_argument",
                format!(
                    "`{}` takes properties, not arguments: `input host=\"./src\"` or `input step=\"build\"`",
                    node.name().value()
                ),
                span_of(a.span()),
                "unexpected argument",
            ));
        }
        let mut map = MapBuilder::default();
        for p in self.props(node) {
            map.insert(self.prop_key(p), self.scalar(p))?;
        }
        if let Some(children) = node.children() {
            for c in children.nodes() {
                let key =
                    Node::string(c.name().value().replace('-', "_"), span_of(c.name().span()));
                let value = self.value(c, Ctx::Fields, key.span, 0)?;
                map.insert(key, value)?;
            }
        }
        let mut n = map.finish(head);
        n.head = head;
        Ok(n)
    }

    fn prop_key(&self, p: &KdlEntry) -> Node {
        match p.name() {
            Some(name) => Node::string(name.value().replace('-', "_"), span_of(name.span())),
            None => Node::string("", span_of(p.span())),
        }
    }

    /// Any other node: a scalar (one argument), a list (several), or a map
    /// (properties and/or children).
    fn value(&self, node: &KdlNode, ctx: Ctx, head: Span, depth: usize) -> Result<Node, Problem> {
        let args: Vec<&KdlEntry> = self.args(node).collect();
        let has_props = self.props(node).next().is_some();
        let children = node.children();
        match (args.as_slice(), has_props, children) {
            ([], false, None) => Ok(Node::new(Kind::Scalar(Scalar::Null), head)),
            ([one], false, None) => Ok(self.scalar(one)),
            (many, false, None) => {
                let items: Vec<Node> = many.iter().map(|e| self.scalar(e)).collect();
                let span = items
                    .iter()
                    .fold(span_of(many[0].span()), |s, n| s.join(n.span));
                Ok(Node::new(Kind::Seq(items), span))
            }
            ([], _, _) => {
                let mut map = match children {
                    Some(doc) => {
                        let n = self.fields(doc, ctx, head, depth + 1)?;
                        MapBuilder::from_node(n)
                    }
                    None => MapBuilder::default(),
                };
                for p in self.props(node) {
                    let mut key = self.prop_key(p);
                    if ctx == Ctx::UserKeys {
                        if let Some(name) = p.name() {
                            key = Node::string(name.value(), key.span);
                        }
                    }
                    map.insert(key, self.scalar(p))?;
                }
                let mut n = map.finish(head);
                n.head = head;
                Ok(n)
            }
            ([first, ..], _, _) => Err(Problem::new(
                "kdl::mixed_node",
                format!(
                    "`{}` mixes arguments with properties or a block",
                    node.name().value()
                ),
                span_of(first.span()),
                "argument here",
            )
            .with_help(
                "give either one value as an argument, or properties and/or a `{ ... }` block",
            )),
        }
    }
}

fn node_span(node: &KdlNode) -> Span {
    span_of(node.span())
}

fn unexpected_property(r: &Reader<'_>, p: &KdlEntry, help: &str) -> Problem {
    let _ = r;
    Problem::new(
        "kdl::unexpected_property",
        format!(
            "unexpected property `{}`",
            p.name().map(|n| n.value()).unwrap_or_default()
        ),
        span_of(p.span()),
        "here",
    )
    .with_help(help)
}

/// Builds a map, rejecting duplicate keys and collecting list items.
#[derive(Default)]
struct MapBuilder {
    entries: Vec<(Node, Node)>,
    /// Key text → index in `entries`, so large maps stay linear.
    index: HashMap<String, usize>,
}

impl MapBuilder {
    fn from_node(n: Node) -> MapBuilder {
        match n.kind {
            Kind::Map(entries) => {
                let index = entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.key_text(), i))
                    .collect();
                MapBuilder { entries, index }
            }
            _ => MapBuilder::default(),
        }
    }

    fn insert(&mut self, key: Node, value: Node) -> Result<(), Problem> {
        let text = key.key_text();
        if let Some(&first) = self.index.get(&text) {
            return Err(Problem::new(
                "kdl::duplicate_key",
                format!("duplicate `{text}`"),
                key.span,
                "given again here",
            )
            .with_note(self.entries[first].0.span, "first given here"));
        }
        self.index.insert(text, self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    fn append_list(&mut self, key: Node, items: Vec<Node>, span: Span) {
        let text = key.key_text();
        if let Some(&i) = self.index.get(&text) {
            let v = &mut self.entries[i].1;
            if let Kind::Seq(existing) = &mut v.kind {
                existing.extend(items);
                v.span = v.span.join(span);
                return;
            }
        }
        let head = key.span;
        let mut list = Node::new(Kind::Seq(items), span);
        list.head = head;
        self.index.insert(text, self.entries.len());
        self.entries.push((key, list));
    }

    fn finish(self, head: Span) -> Node {
        let span = self
            .entries
            .iter()
            .fold(head, |s, (k, v)| s.join(k.span).join(v.span));
        let mut n = Node::new(Kind::Map(self.entries), span);
        n.head = head;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: &Node) -> &[(Node, Node)] {
        match &n.kind {
            Kind::Map(e) => e,
            _ => &[],
        }
    }

    #[test]
    fn spans_are_byte_offsets_even_after_non_ascii_text() {
        let text = "description \"héllo wörld\"\nname \"x\"\n";
        let root = parse(text).unwrap_or_else(|p| panic!("{p:?}"));
        let (k, v) = &entries(&root)[1];
        assert_eq!(&text[k.span.offset..k.span.end()], "name");
        assert_eq!(&text[v.span.offset..v.span.end()], "\"x\"");
    }

    #[test]
    fn list_nodes_repeat_and_steps_form_a_map() {
        let text = "step a {\n  output \"x\"\n  output \"y\" \"z\"\n}\nstep b { run \"r\"; }\n";
        let root = parse(text).unwrap_or_else(|p| panic!("{p:?}"));
        let json = root.to_json();
        assert_eq!(
            json["steps"]["a"]["outputs"],
            serde_json::json!(["x", "y", "z"])
        );
        assert_eq!(json["steps"]["b"]["run"], "r");
    }

    #[test]
    fn kebab_names_become_snake_but_env_keys_stay() {
        let text = "fail-fast #true\nenv { MY_VAR \"1\"; }\nstep a { retry-on failure; }\n";
        let json = parse(text).unwrap_or_else(|p| panic!("{p:?}")).to_json();
        assert_eq!(json["fail_fast"], true);
        assert_eq!(json["env"]["MY_VAR"], "1");
        assert_eq!(
            json["steps"]["a"]["retry_on"],
            serde_json::json!(["failure"])
        );
    }
}
