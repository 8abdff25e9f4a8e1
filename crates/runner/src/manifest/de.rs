//! serde over the [`Node`] tree: the typed model derives `Deserialize`, and
//! every error it raises comes back with the span and field path of the
//! value that caused it. [`Spanned`] lets a model field keep its span for
//! the checks that run after deserialization.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

use super::error::{did_you_mean, Problem};
use super::node::{Kind, Node, Scalar};
use super::source::{Span, Syntax};

/// A value with the span it was written at. Compares, hashes and serializes
/// as the bare value, so spans never leak into the model's meaning.
#[derive(Clone, Default)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// A value at a span.
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}

impl<T: std::hash::Hash> std::hash::Hash for Spanned<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Where text is expected the deserializer also takes a number or a
        // boolean, as written (`name: 2024`); the schema must not flag
        // what loads.
        if T::schema_id() == <String as schemars::JsonSchema>::schema_id() {
            return schemars::json_schema!({ "type": ["string", "number", "boolean"] });
        }
        T::json_schema(g)
    }
}

/// The struct name our deserializer recognises to hand out spans.
const SPANNED: &str = "$sbxrun::Spanned";
const SPANNED_FIELDS: &[&str] = &["$offset", "$len", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut offset = 0usize;
                let mut len = 0usize;
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "$offset" => offset = map.next_value()?,
                        "$len" => len = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::missing_field("$value"))?;
                Ok(Spanned::new(value, Span::new(offset, len)))
            }
        }
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, V(std::marker::PhantomData))
    }
}

/// A deserialization failure, located.
#[derive(Debug)]
pub struct DeError {
    kind: ErrorKind,
    span: Option<Span>,
    path: Option<String>,
}

#[derive(Debug)]
enum ErrorKind {
    Custom(String),
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
}

impl DeError {
    fn located(mut self, span: Span, path: &str) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
            self.path = Some(path.to_owned());
        }
        self
    }

    /// Turns the error into a diagnostic, spelling names for `syntax`.
    pub fn into_problem(self, syntax: Syntax) -> Problem {
        let span = self.span.unwrap_or_default();
        let field = self.path;
        let spell_all = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`{}`", syntax.spell(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let p = match self.kind {
            ErrorKind::Custom(msg) => {
                // Messages put their hint after "; ": show it as help.
                match msg.split_once("; ") {
                    Some((m, help)) => {
                        Problem::new("manifest::invalid_value", m, span, "invalid value")
                            .with_help(help)
                    }
                    None => Problem::new("manifest::invalid_value", msg, span, "invalid value"),
                }
            }
            ErrorKind::UnknownField { field, expected } => {
                let snake = field.replace('-', "_");
                let help = match did_you_mean(&snake, expected.iter().copied()) {
                    Some(m) => format!("did you mean `{}`?", syntax.spell(m)),
                    None => format!("expected one of {}", spell_all(expected)),
                };
                Problem::new(
                    "manifest::unknown_field",
                    format!("unknown field `{}`", syntax.spell(&field)),
                    span,
                    "not a known field here",
                )
                .with_help(help)
            }
            ErrorKind::UnknownVariant { variant, expected } => {
                let help = match did_you_mean(&variant, expected.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("expected one of {}", spell_all(expected)),
                };
                Problem::new(
                    "manifest::unknown_value",
                    format!("unknown value `{variant}`"),
                    span,
                    "not one of the allowed values",
                )
                .with_help(help)
            }
            ErrorKind::MissingField(name) => Problem::new(
                "manifest::missing_field",
                format!("missing required field `{}`", syntax.spell(name)),
                span,
                format!("`{}` must be set here", syntax.spell(name)),
            ),
        };
        match field {
            Some(f) => p.with_field(f),
            None => p,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Custom(m) => f.write_str(m),
            ErrorKind::UnknownField { field, .. } => write!(f, "unknown field `{field}`"),
            ErrorKind::UnknownVariant { variant, .. } => write!(f, "unknown value `{variant}`"),
            ErrorKind::MissingField(n) => write!(f, "missing field `{n}`"),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            kind: ErrorKind::Custom(msg.to_string()),
            span: None,
            path: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = match unexp {
            de::Unexpected::Bool(_) => "a boolean".to_owned(),
            de::Unexpected::Signed(_) | de::Unexpected::Unsigned(_) => "an integer".to_owned(),
            de::Unexpected::Float(_) => "a number".to_owned(),
            de::Unexpected::Str(_) => "a string".to_owned(),
            de::Unexpected::Unit => "null".to_owned(),
            de::Unexpected::Seq => "a list".to_owned(),
            de::Unexpected::Map => "a map".to_owned(),
            other => other.to_string(),
        };
        de::Error::custom(format_args!("expected {exp}, found {found}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: ErrorKind::UnknownField {
                field: field.to_owned(),
                expected,
            },
            span: None,
            path: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: ErrorKind::UnknownVariant {
                variant: variant.to_owned(),
                expected,
            },
            span: None,
            path: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            kind: ErrorKind::MissingField(field),
            span: None,
            path: None,
        }
    }
}

/// Deserializes `T` from a node tree.
pub fn from_node<'de, T: Deserialize<'de>>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: String::new(),
    })
}

/// A deserializer positioned at one node, knowing its field path.
struct NodeDe<'n> {
    node: &'n Node,
    path: String,
}

impl<'n> NodeDe<'n> {
    fn child(&self, node: &'n Node, seg: Seg<'_>) -> NodeDe<'n> {
        let mut path = self.path.clone();
        match seg {
            Seg::Key(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Seg::Index(i) => {
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
            }
        }
        NodeDe { node, path }
    }

    fn err_span(&self) -> Span {
        match self.node.kind {
            Kind::Scalar(_) => self.node.span,
            Kind::Seq(_) | Kind::Map(_) => self.node.head,
        }
    }

    fn fail<T>(&self, expected: &str) -> Result<T, DeError> {
        Err(de::Error::custom(format_args!(
            "expected {expected}, found {}",
            self.node.describe()
        )))
    }

    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.located(self.err_span(), &self.path))
    }

    fn int(&self) -> Result<i64, DeError> {
        match self.node.kind {
            Kind::Scalar(Scalar::Int(i)) => Ok(i),
            _ => self.locate(self.fail("an integer")),
        }
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

macro_rules! int_method {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let i = self.int()?;
            let n = <$ty>::try_from(i).map_err(|_| {
                if i < 0 && <$ty>::MIN == 0 {
                    de::Error::custom(format_args!("expected a non-negative integer, found {i}"))
                } else {
                    de::Error::custom(format_args!(
                        "{i} is out of range (must be between {} and {})",
                        <$ty>::MIN,
                        <$ty>::MAX
                    ))
                }
            });
            let n = self.locate(n)?;
            let r = v.$visit(n);
            self.locate(r)
        }
    };
}

impl<'de, 'n> de::Deserializer<'de> for NodeDe<'n> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Scalar(Scalar::Null) => v.visit_unit(),
            Kind::Scalar(Scalar::Bool(b)) => v.visit_bool(*b),
            Kind::Scalar(Scalar::Int(i)) => v.visit_i64(*i),
            Kind::Scalar(Scalar::Float(f)) => v.visit_f64(*f),
            Kind::Scalar(Scalar::Str(s)) => v.visit_str(s),
            Kind::Seq(items) => v.visit_seq(SeqAccess {
                de: &self,
                items: items.iter().enumerate(),
            }),
            Kind::Map(entries) => v.visit_map(MapAccess {
                de: &self,
                entries: entries.iter(),
                value: None,
            }),
        };
        self.locate(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            Kind::Scalar(Scalar::Bool(b)) => {
                let r = v.visit_bool(b);
                self.locate(r)
            }
            _ => self.locate(self.fail("`true` or `false`")),
        }
    }

    int_method!(deserialize_i8, visit_i8, i8);
    int_method!(deserialize_i16, visit_i16, i16);
    int_method!(deserialize_i32, visit_i32, i32);
    int_method!(deserialize_i64, visit_i64, i64);
    int_method!(deserialize_u8, visit_u8, u8);
    int_method!(deserialize_u16, visit_u16, u16);
    int_method!(deserialize_u32, visit_u32, u32);
    int_method!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let f = match self.node.kind {
            Kind::Scalar(Scalar::Float(f)) => f,
            #[expect(clippy::cast_precision_loss, reason = "manifest numbers are small")]
            Kind::Scalar(Scalar::Int(i)) => i as f64,
            _ => return self.locate(self.fail("a number")),
        };
        let r = v.visit_f64(f);
        self.locate(r)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // Numbers and booleans are accepted where text is expected
        // (`SEED: 1`), as their written form.
        let r = match &self.node.kind {
            Kind::Scalar(Scalar::Str(s)) => v.visit_str(s),
            Kind::Scalar(s @ (Scalar::Int(_) | Scalar::Float(_) | Scalar::Bool(_))) => {
                v.visit_string(s.text())
            }
            _ => return self.locate(self.fail("a string")),
        };
        self.locate(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if let Kind::Scalar(Scalar::Null) = self.node.kind {
            let r = v.visit_none();
            return self.locate(r);
        }
        let span = self.err_span();
        let path = self.path.clone();
        v.visit_some(self).map_err(|e| e.located(span, &path))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            Kind::Scalar(Scalar::Null) => {
                let r = v.visit_unit();
                self.locate(r)
            }
            _ => self.locate(self.fail("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        let span = self.err_span();
        let path = self.path.clone();
        v.visit_newtype_struct(self)
            .map_err(|e| e.located(span, &path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(items) => {
                let r = v.visit_seq(SeqAccess {
                    de: &self,
                    items: items.iter().enumerate(),
                });
                self.locate(r)
            }
            _ => self.locate(self.fail("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Map(entries) => {
                let r = v.visit_map(MapAccess {
                    de: &self,
                    entries: entries.iter(),
                    value: None,
                });
                self.locate(r)
            }
            _ => self.locate(self.fail("a map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            let span = self.node.span;
            let path = self.path.clone();
            return v
                .visit_map(SpannedAccess {
                    de: Some(self),
                    span,
                    step: 0,
                })
                .map_err(|e| e.located(span, &path));
        }
        let _ = fields;
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar(Scalar::Str(s)) => {
                let r = v.visit_enum(s.as_str().into_deserializer());
                self.locate(r)
            }
            _ => self.locate(self.fail("a string")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct SeqAccess<'a, 'n> {
    de: &'a NodeDe<'n>,
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some((i, node)) => seed
                .deserialize(self.de.child(node, Seg::Index(i)))
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a, 'n> {
    de: &'a NodeDe<'n>,
    entries: std::slice::Iter<'n, (Node, Node)>,
    value: Option<(&'n Node, String)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((k, v)) => {
                let name = k.key_text();
                let key = seed.deserialize(self.de.child(k, Seg::Key(&name)))?;
                self.value = Some((v, name));
                Ok(Some(key))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        match self.value.take() {
            Some((node, name)) => seed.deserialize(self.de.child(node, Seg::Key(&name))),
            None => Err(de::Error::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Hands a [`Spanned`] its offset, length and value.
struct SpannedAccess<'n> {
    de: Option<NodeDe<'n>>,
    span: Span,
    step: usize,
}

impl<'de> de::MapAccess<'de> for SpannedAccess<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(name) = SPANNED_FIELDS.get(self.step) else {
            return Ok(None);
        };
        seed.deserialize((*name).into_deserializer()).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize((self.span.offset as u64).into_deserializer()),
            1 => seed.deserialize((self.span.len as u64).into_deserializer()),
            _ => match self.de.take() {
                Some(de) => seed.deserialize(de),
                None => Err(de::Error::custom("span value requested twice")),
            },
        }
    }
}
