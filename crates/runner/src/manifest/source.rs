//! The text a manifest was read from, kept so any later error (validation,
//! planning, the runner's secret check) can point into it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;

/// Which surface syntax a manifest was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Syntax {
    /// `.yaml` / `.yml`.
    #[default]
    Yaml,
    /// `.kdl` (KDL v2).
    Kdl,
}

impl Syntax {
    /// The syntax implied by a file name, if its extension is one we read.
    pub fn from_path(path: &Path) -> Option<Syntax> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Some(Syntax::Yaml),
            Some("kdl") => Some(Syntax::Kdl),
            _ => None,
        }
    }

    /// How a model field name is spelled in this syntax (KDL uses kebab-case).
    pub fn spell(self, field: &str) -> String {
        match self {
            Syntax::Yaml => field.to_owned(),
            Syntax::Kdl => field.replace('_', "-"),
        }
    }
}

/// A byte range in the manifest text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    /// Byte offset of the first byte.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Span {
    /// A span from a byte offset and a length.
    pub fn new(offset: usize, len: usize) -> Span {
        Span { offset, len }
    }

    /// The byte just past the end.
    pub fn end(self) -> usize {
        self.offset + self.len
    }

    /// The span covering both `self` and `other`.
    pub fn join(self, other: Span) -> Span {
        let start = self.offset.min(other.offset);
        let end = self.end().max(other.end());
        Span::new(start, end - start)
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.offset, s.len).into()
    }
}

/// A manifest's name, text and directory.
#[derive(Debug, Default)]
pub struct SourceFile {
    /// The path as the user gave it (shown in diagnostics).
    pub name: String,
    /// The full text.
    pub text: Arc<String>,
    /// The directory host paths are resolved against.
    pub dir: PathBuf,
    /// The surface syntax.
    pub syntax: Syntax,
}

impl SourceFile {
    /// A source with the given display name, text, base directory and syntax.
    pub fn new(name: impl Into<String>, text: String, dir: PathBuf, syntax: Syntax) -> Self {
        SourceFile {
            name: name.into(),
            text: Arc::new(text),
            dir,
            syntax,
        }
    }

    /// The source in the form miette renders.
    pub fn named(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(&self.name, Arc::clone(&self.text)).with_language(match self.syntax {
            Syntax::Yaml => "yaml",
            Syntax::Kdl => "kdl",
        })
    }

    /// The text under a span (empty if the span is out of range).
    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.offset..span.end()).unwrap_or("")
    }
}

/// Converts character indices (what the YAML scanner reports) into byte
/// offsets (what diagnostics need). Free for ASCII text.
pub(crate) struct CharIndex {
    /// Byte offset of each char, or empty when the text is ASCII.
    offsets: Vec<usize>,
    len: usize,
}

impl CharIndex {
    pub(crate) fn new(text: &str) -> Self {
        let offsets = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices().map(|(i, _)| i).collect()
        };
        CharIndex {
            offsets,
            len: text.len(),
        }
    }

    pub(crate) fn byte(&self, char_index: usize) -> usize {
        if self.offsets.is_empty() {
            char_index.min(self.len)
        } else {
            self.offsets.get(char_index).copied().unwrap_or(self.len)
        }
    }
}
