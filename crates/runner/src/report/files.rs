//! The report files as sinks: `report.json` and `junit.xml`, each built
//! from the run's events and rewritten atomically while the run goes on
//! (paced, see [`Pacer`]) and at its end, so a run that dies still leaves
//! complete reports at most a pacing gap old.

use std::collections::HashMap;
use std::path::PathBuf;

use junit_report::TestCase;

use super::events::{EventSink, RunEvent, SinkError};
use super::junit;
use super::model::Report;
use super::state::ReportState;
use super::write::{atomic_write, Pacer, Pacing};

/// Whether `event` changes what the report files hold (output lines do
/// not: the files keep tails, taken from each attempt's end).
fn report_changes(event: &RunEvent) -> bool {
    !matches!(event, RunEvent::StepOutput { .. })
}

/// `report.json`.
#[derive(Debug)]
pub struct JsonReportFile {
    path: PathBuf,
    state: ReportState,
    pacer: Pacer,
}

impl JsonReportFile {
    /// A sink writing `dir/report.json`.
    pub fn new(dir: &std::path::Path) -> Self {
        JsonReportFile {
            path: dir.join("report.json"),
            state: ReportState::default(),
            pacer: Pacer::default(),
        }
    }

    /// The same sink, rewriting its file as `pacing` says.
    pub fn paced(mut self, pacing: Pacing) -> Self {
        self.pacer = Pacer::new(pacing);
        self
    }

    /// The report as the events built it.
    pub fn into_report(self) -> Report {
        self.state.into_report()
    }

    fn write(&mut self) -> Result<(), SinkError> {
        const FILE: &str = "report.json";
        let started = std::time::Instant::now();
        let json =
            serde_json::to_vec_pretty(self.state.report()).map_err(|e| SinkError::Encode {
                file: FILE,
                reason: e.to_string(),
            })?;
        let written =
            atomic_write(&self.path, &json).map_err(|error| SinkError::Write { file: FILE, error });
        self.pacer.wrote(started);
        written
    }
}

impl EventSink for JsonReportFile {
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        self.state.apply(event);
        if report_changes(event) {
            self.pacer.changed();
        }
        match event {
            RunEvent::RunFinished { .. } => self.write(),
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pacer.due(std::time::Instant::now()) {
            self.write()
        } else {
            Ok(())
        }
    }

    fn persist(&mut self) -> Result<(), SinkError> {
        self.write()
    }
}

/// `junit.xml`, with the testcases of the steps' own JUnit files merged in
/// once each step has ended.
#[derive(Debug)]
pub struct JunitFile {
    path: PathBuf,
    state: ReportState,
    /// Each step's own JUnit file, when it declares one.
    own: Vec<Option<PathBuf>>,
    /// The testcases merged from a step's own file, by step index.
    merged: HashMap<usize, Vec<TestCase>>,
    pacer: Pacer,
}

impl JunitFile {
    /// A sink writing `dir/junit.xml`.
    pub fn new(dir: &std::path::Path) -> Self {
        JunitFile {
            path: dir.join("junit.xml"),
            state: ReportState::default(),
            own: Vec::new(),
            merged: HashMap::new(),
            pacer: Pacer::default(),
        }
    }

    /// The same sink, rewriting its file as `pacing` says.
    pub fn paced(mut self, pacing: Pacing) -> Self {
        self.pacer = Pacer::new(pacing);
        self
    }

    /// Reads a finished step's own JUnit file; a broken one becomes an
    /// error testcase rather than failing the report.
    fn merge(&mut self, index: usize) {
        let Some(report_step) = self.state.report().steps.get(index) else {
            return;
        };
        let name = report_step.name.clone();
        let mut cases = Vec::new();
        if let Some(path) = self.own.get(index).and_then(Option::as_ref) {
            if path.is_file() {
                match junit::merge_file(path, &name) {
                    Ok(c) => cases = c,
                    Err(e) => cases.push(TestCase::error(
                        &junit::xml_safe(&format!("{name} / junit")),
                        time::Duration::ZERO,
                        "junit",
                        &junit::xml_safe(&crate::errors::chain(&e)),
                    )),
                }
            }
        }
        self.merged.insert(index, cases);
    }

    fn write(&mut self) -> Result<(), SinkError> {
        const FILE: &str = "junit.xml";
        let started = std::time::Instant::now();
        let report = self.state.report().clone();
        let by_name: HashMap<&str, usize> = report
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let state = &self.state;
        let tails = |n: &str| by_name.get(n).map(|&i| state.tails(i)).unwrap_or_default();
        let extra = |n: &str| {
            by_name
                .get(n)
                .and_then(|i| self.merged.get(i).cloned())
                .unwrap_or_default()
        };
        let doc = junit::build(&report, &tails, &extra);
        let xml = junit::to_bytes(&doc).map_err(|e| SinkError::Encode {
            file: FILE,
            reason: crate::errors::chain(&e),
        })?;
        let xml = junit::with_run_time(xml, report.duration_ms);
        let written =
            atomic_write(&self.path, &xml).map_err(|error| SinkError::Write { file: FILE, error });
        self.pacer.wrote(started);
        written
    }
}

impl EventSink for JunitFile {
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        self.state.apply(event);
        if report_changes(event) {
            self.pacer.changed();
        }
        match event {
            RunEvent::RunStarted { steps, .. } => {
                self.own = steps.iter().map(|s| s.junit.clone()).collect();
                Ok(())
            }
            RunEvent::StepFinished { step, .. } => {
                self.merge(step.0);
                Ok(())
            }
            RunEvent::RunFinished { .. } => self.write(),
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pacer.due(std::time::Instant::now()) {
            self.write()
        } else {
            Ok(())
        }
    }

    fn persist(&mut self) -> Result<(), SinkError> {
        self.write()
    }
}
