//! The plan: a job's steps expanded into instances (one per matrix
//! combination) and ordered as a DAG. The scheduler asks the plan what can
//! run next; petgraph stays inside this module.

mod error;
mod expand;
mod graph;
mod ready;
mod render;

pub use error::PlanError;
pub use expand::{Command, Instance, InstanceId, PlannedExpect, PlannedInput};
pub use graph::{Plan, Selection};
pub use ready::{Outcome, Progress, Ready};
pub use render::Format;

#[cfg(test)]
mod tests;
