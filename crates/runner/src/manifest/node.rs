//! A syntax-neutral document tree with a source span on every node. Both the
//! YAML and the KDL reader produce it; the typed model is deserialized from
//! it, so both syntaxes share one set of field rules and error messages.

use super::source::Span;

/// A scalar value as the surface syntax typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` / `false` (`#true` / `#false` in KDL).
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Any string.
    Str(String),
}

impl Scalar {
    /// What a type-mismatch message calls this value.
    pub fn describe(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) => "an integer",
            Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
        }
    }

    /// The value written back as text (used when a string is expected and a
    /// number or boolean was given, e.g. `SEED: 1`).
    pub fn text(&self) -> String {
        match self {
            Scalar::Null => String::new(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// The shape of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A single value.
    Scalar(Scalar),
    /// An ordered list.
    Seq(Vec<Node>),
    /// Key/value pairs in document order; keys are unique.
    Map(Vec<(Node, Node)>),
}

/// A value with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: Kind,
    /// The text of the value itself.
    pub span: Span,
    /// For containers: where to point when the container as a whole is wrong
    /// (a missing field): the key that introduced it, not its many lines.
    pub head: Span,
}

impl Node {
    /// A node whose head is its own span.
    pub fn new(kind: Kind, span: Span) -> Node {
        Node {
            kind,
            span,
            head: span,
        }
    }

    /// A string scalar.
    pub fn string(s: impl Into<String>, span: Span) -> Node {
        Node::new(Kind::Scalar(Scalar::Str(s.into())), span)
    }

    /// What a type-mismatch message calls this node.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(s) => s.describe(),
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a map",
        }
    }

    /// The string value of a scalar key.
    pub fn key_text(&self) -> String {
        match &self.kind {
            Kind::Scalar(s) => s.text(),
            Kind::Seq(_) | Kind::Map(_) => String::new(),
        }
    }

    /// Converts the tree to JSON (for schema validation of manifests).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Scalar(Scalar::Null) => Value::Null,
            Kind::Scalar(Scalar::Bool(b)) => Value::Bool(*b),
            Kind::Scalar(Scalar::Int(i)) => Value::from(*i),
            Kind::Scalar(Scalar::Float(f)) => Value::from(*f),
            Kind::Scalar(Scalar::Str(s)) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_text(), v.to_json()))
                    .collect(),
            ),
        }
    }
}
