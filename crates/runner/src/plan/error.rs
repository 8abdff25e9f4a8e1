//! Why a job could not be planned.

use miette::Diagnostic;

use crate::manifest::ManifestError;

/// A planning failure.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The steps' dependencies form a cycle (a diagnostic into the manifest).
    #[error(transparent)]
    Cycle(ManifestError),
    /// `--only` named something that is neither a step nor an instance.
    #[error("unknown step `{name}` in the selection")]
    UnknownSelection {
        /// The name given.
        name: String,
        /// A near-miss step id.
        suggestion: Option<String>,
    },
    /// Instances depend on each other in a cycle (cannot happen once step
    /// cycles are rejected; reported rather than trusted).
    #[error("instance `{instance}` is part of a dependency cycle")]
    InstanceCycle {
        /// One instance on the cycle.
        instance: String,
    },
    /// The job expands to more instances than one run handles.
    #[error("the job expands to {count} step instances (at most {max})")]
    TooLarge {
        /// Instances after matrix expansion.
        count: usize,
        /// The cap.
        max: usize,
    },
}

impl Diagnostic for PlanError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        match self {
            PlanError::Cycle(e) => e.code(),
            PlanError::UnknownSelection { .. } => Some(Box::new("plan::unknown_selection")),
            PlanError::TooLarge { .. } => Some(Box::new("plan::too_large")),
            PlanError::InstanceCycle { .. } => Some(Box::new("plan::instance_cycle")),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        match self {
            PlanError::Cycle(e) => e.help(),
            PlanError::UnknownSelection {
                suggestion: Some(s),
                ..
            } => Some(Box::new(format!("did you mean `{s}`?"))),
            _ => None,
        }
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        match self {
            PlanError::Cycle(e) => e.source_code(),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        match self {
            PlanError::Cycle(e) => e.labels(),
            _ => None,
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self {
            PlanError::Cycle(e) => e.related(),
            _ => None,
        }
    }
}
