//! Manifest diagnostics: every problem points at the offending text, names
//! the field, and suggests the near-miss spelling when there is one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource};

use super::source::{SourceFile, Span};

/// One thing wrong with a manifest, located in its text. Boxed, so that
/// `Result<_, Problem>` stays small on the happy path.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemData>);

/// The contents of a [`Problem`].
#[derive(Debug, Clone)]
pub struct ProblemData {
    /// Stable diagnostic code, e.g. `manifest::unknown_field`.
    pub code: &'static str,
    /// What is wrong, as a lowercase sentence fragment.
    pub message: String,
    /// The field, as a path from the document root (`steps.test.needs[0]`).
    pub field: Option<String>,
    /// The offending text.
    pub span: Span,
    /// The label under the offending text.
    pub label: String,
    /// A suggestion.
    pub help: Option<String>,
    /// Further places worth pointing at (e.g. the first definition).
    pub notes: Vec<(Span, String)>,
    source: Option<NamedSource<Arc<String>>>,
}

impl std::ops::Deref for Problem {
    type Target = ProblemData;
    fn deref(&self) -> &ProblemData {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemData {
        &mut self.0
    }
}

impl Problem {
    /// A problem at `span`.
    pub fn new(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Problem {
        Problem(Box::new(ProblemData {
            code,
            message: message.into(),
            field: None,
            span,
            label: label.into(),
            help: None,
            notes: Vec::new(),
            source: None,
        }))
    }

    /// Names the field the problem is in.
    pub fn with_field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    /// Adds a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Adds a suggestion if there is one.
    pub fn with_opt_help(mut self, help: Option<String>) -> Problem {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Points at a second place.
    pub fn with_note(mut self, span: Span, label: impl Into<String>) -> Problem {
        self.notes.push((span, label.into()));
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) if !field.is_empty() => write!(f, "{field}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary = LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span);
        let notes = self
            .notes
            .iter()
            .map(|(s, l)| LabeledSpan::new_with_span(Some(l.clone()), *s));
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("failed to read manifest {}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The extension is not one we read.
    #[error("{}: unsupported manifest extension (expected .yaml, .yml or .kdl)", path.display())]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
    },
    /// A directory was given where a manifest file belongs.
    #[error("{} is a directory, not a job manifest", path.display())]
    IsDirectory {
        /// The path given.
        path: PathBuf,
        /// Manifests directly inside it, sorted, for the hint.
        manifests: Vec<PathBuf>,
    },
    /// The manifest was read but is wrong; every problem found is listed.
    #[error(transparent)]
    Invalid(Problems),
}

/// How many of a directory's manifests the hint names.
const DIRECTORY_HINT_MAX: usize = 5;

impl Diagnostic for ManifestError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ManifestError::Read { .. } => Some(Box::new("manifest::read")),
            ManifestError::UnknownFormat { .. } => Some(Box::new("manifest::format")),
            ManifestError::IsDirectory { .. } => Some(Box::new("manifest::directory")),
            ManifestError::Invalid(p) => p.code(),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ManifestError::Invalid(p) => p.help(),
            ManifestError::IsDirectory { manifests, .. } if manifests.is_empty() => Some(Box::new(
                "give the path of a .yaml, .yml or .kdl file; this directory has none",
            )),
            ManifestError::IsDirectory { manifests, .. } => {
                let mut names: Vec<String> = manifests
                    .iter()
                    .take(DIRECTORY_HINT_MAX)
                    .map(|m| m.display().to_string())
                    .collect();
                if manifests.len() > DIRECTORY_HINT_MAX {
                    names.push(format!("and {} more", manifests.len() - DIRECTORY_HINT_MAX));
                }
                Some(Box::new(format!("manifests in it: {}", names.join(", "))))
            }
            _ => None,
        }
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        match self {
            ManifestError::Invalid(p) => p.source_code(),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        match self {
            ManifestError::Invalid(p) => p.labels(),
            _ => None,
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self {
            ManifestError::Invalid(p) => p.related(),
            _ => None,
        }
    }
}

impl ManifestError {
    /// Wraps problems found in `source`.
    pub fn invalid(source: &SourceFile, problems: Vec<Problem>) -> ManifestError {
        ManifestError::Invalid(Problems::new(source, problems))
    }

    /// The located problems (empty for I/O and format errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ManifestError::Invalid(p) => &p.problems,
            _ => &[],
        }
    }
}

/// All problems found in one manifest. With one problem it renders as that
/// problem; with several, as a count followed by each.
#[derive(Debug)]
pub struct Problems {
    name: String,
    problems: Vec<Problem>,
}

impl Problems {
    /// Attaches `source` to each problem so each renders with its snippet.
    pub fn new(source: &SourceFile, mut problems: Vec<Problem>) -> Problems {
        let named = source.named();
        for p in &mut problems {
            p.source = Some(named.clone());
        }
        Problems {
            name: source.name.clone(),
            problems,
        }
    }

    fn single(&self) -> Option<&Problem> {
        match self.problems.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.single() {
            Some(p) => p.fmt(f),
            None => write!(
                f,
                "{}: {} problems in the manifest",
                self.name,
                self.problems.len()
            ),
        }
    }
}

impl std::error::Error for Problems {}

impl Diagnostic for Problems {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single()
            .map_or_else(|| Some(Box::new("manifest::invalid") as _), |p| p.code())
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single().and_then(|p| p.help())
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.single().and_then(|p| p.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.single().and_then(|p| p.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.single().is_some() {
            return None;
        }
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// Renders any diagnostic as text: without colour and at a fixed width when
/// `plain` (tests, logs), otherwise for the terminal.
pub fn render(diagnostic: &dyn Diagnostic, plain: bool) -> String {
    use miette::{GraphicalReportHandler, GraphicalTheme};
    let theme = if plain {
        GraphicalTheme::unicode_nocolor()
    } else {
        GraphicalTheme::unicode()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    if handler.render_report(&mut out, diagnostic).is_err() {
        out = diagnostic.to_string();
    }
    out
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let close = score >= 0.8 || strsim::levenshtein(word, c) <= word.len().min(c.len()) / 3;
        if close && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_near_misses_only() {
        let keys = ["needs", "inputs", "outputs", "run"];
        assert_eq!(did_you_mean("need", keys), Some("needs"));
        assert_eq!(did_you_mean("ouputs", keys), Some("outputs"));
        assert_eq!(did_you_mean("zzz", keys), None);
    }
}
