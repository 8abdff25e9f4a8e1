//! The live console view: a line when a step starts and ends, output lines
//! prefixed with the step name in verbose mode, failures' tails otherwise,
//! and a summary table at the end. `--log-format json` turns every event
//! into one JSON object per line. Live, it is a sink of the run's events.

use std::collections::BTreeMap;
use std::io::Write;

use super::events::{EventSink, RunEvent, SinkError, StepId};
use super::logs::Stream;
use super::model::{Report, StepReport, Verdict};

/// How much to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Only the summary and errors.
    Quiet,
    /// Step starts/ends and failures' output tails.
    #[default]
    Normal,
    /// Also every output line, prefixed with its step.
    Verbose,
}

/// Text for people or JSON lines for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What the console keeps of a step between events.
#[derive(Debug, Clone, Default)]
struct StepView {
    name: String,
    allow_failure: bool,
    /// Denials by kind as the step's report has them: the last attempt
    /// that got as far as its network, else none.
    denied: BTreeMap<String, u64>,
}

/// The console reporter.
#[derive(Debug, Default)]
pub struct Console {
    pub verbosity: Verbosity,
    pub format: LogFormat,
    steps: Vec<StepView>,
}

/// One attempt's end line, as [`Console::finished`] shows it.
struct Finished<'a> {
    view: &'a StepView,
    verdict: Verdict,
    total_ms: f64,
    message: &'a Option<String>,
    retrying: bool,
    tail: &'a str,
    /// A cache hit: how long the step took when it ran.
    cached_ms: Option<f64>,
    /// Key parts that changed since the step's last run (a miss).
    changed: &'a [String],
}

impl Console {
    /// A console with these settings.
    pub fn new(verbosity: Verbosity, format: LogFormat) -> Self {
        Console {
            verbosity,
            format,
            steps: Vec::new(),
        }
    }

    fn emit(&self, text: &str, json: serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = match self.format {
            LogFormat::Text => writeln!(err, "{text}"),
            LogFormat::Json => writeln!(err, "{json}"),
        };
    }

    fn name(&self, step: StepId) -> &str {
        self.steps.get(step.0).map_or("", |s| s.name.as_str())
    }

    /// A step started an attempt.
    fn started(&self, name: &str, attempt: u32, running: usize, queued: usize) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let again = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        self.emit(
            &format!("▶ {name}{again}   [{running} running, {queued} queued]"),
            serde_json::json!({"event": "started", "step": name, "attempt": attempt}),
        );
    }

    /// One line of a step's output (verbose only).
    fn line(&self, name: &str, stderr: bool, line: &str) {
        if self.verbosity != Verbosity::Verbose {
            return;
        }
        self.emit(
            &format!("{name} | {line}"),
            serde_json::json!({"event": "output", "step": name,
                "stream": if stderr { "stderr" } else { "stdout" }, "line": line}),
        );
    }

    /// A step ended (finally, or an attempt that will be retried).
    fn finished(&self, f: &Finished<'_>) {
        let s = f.view;
        let failed = f.verdict.is_failure();
        if self.verbosity == Verbosity::Quiet && (!failed || s.allow_failure) {
            return;
        }
        let mark = match f.verdict {
            Verdict::Passed => "✓",
            Verdict::Skipped | Verdict::Cancelled => "-",
            _ if s.allow_failure => "!",
            _ => "✗",
        };
        let mut text = match f.cached_ms {
            Some(was) if f.verdict == Verdict::Passed => {
                format!("{mark} {} cached (was {:.1}s)", s.name, was / 1000.0)
            }
            Some(was) => format!(
                "{mark} {} {}, cached (was {:.1}s)",
                s.name,
                f.verdict.label(),
                was / 1000.0
            ),
            None => format!(
                "{mark} {} {} ({:.1}s)",
                s.name,
                f.verdict.label(),
                f.total_ms / 1000.0
            ),
        };
        if self.verbosity == Verbosity::Verbose && !f.changed.is_empty() {
            text.push_str(&format!(" [cache: {} changed]", f.changed.join(", ")));
        }
        if let Some(m) = f.message {
            text.push_str(": ");
            text.push_str(m);
        }
        if f.retrying {
            text.push_str(" — retrying");
        }
        if failed && self.verbosity != Verbosity::Verbose && !f.tail.is_empty() {
            for l in f.tail.lines() {
                text.push_str(&format!("\n    {} | {l}", s.name));
            }
        }
        self.emit(
            &text,
            serde_json::json!({"event": "finished", "step": s.name,
                "verdict": f.verdict, "message": f.message, "retrying": f.retrying,
                "cached": f.cached_ms.is_some(), "egress_denied": s.denied}),
        );
    }

    /// A notice about the run itself (interrupts, fail-fast).
    fn notice(&self, text: &str) {
        self.emit(
            &format!("sbxrun: {text}"),
            serde_json::json!({"event": "notice", "message": text}),
        );
    }

    /// The summary table (stdout) at the end.
    pub fn summary(&self, report: &Report, run_dir: &str) {
        let mut out = std::io::stdout().lock();
        let _ = match self.format {
            LogFormat::Json => writeln!(out, "{}", summary_json(report, run_dir)),
            LogFormat::Text => write!(out, "{}", summary_text(report, run_dir)),
        };
    }
}

impl EventSink for Console {
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        match event {
            RunEvent::RunStarted { steps, .. } => {
                self.steps = steps
                    .iter()
                    .map(|s| StepView {
                        name: s.name.clone(),
                        allow_failure: s.allow_failure,
                        denied: s.egress.denied.clone(),
                    })
                    .collect();
            }
            RunEvent::StepStarted {
                step,
                attempt,
                running,
                queued,
            } => self.started(self.name(*step), *attempt, *running, *queued),
            RunEvent::StepOutput { step, stream, line } => {
                self.line(self.name(*step), *stream == Stream::Err, line)
            }
            RunEvent::AttemptFinished {
                step,
                outcome,
                retrying,
            } => {
                let Some(view) = self.steps.get_mut(step.0) else {
                    return Ok(());
                };
                if let Some(egress) = &outcome.egress {
                    view.denied = egress.denied.clone();
                }
                let tail = outcome.tails.stderr.clone() + &outcome.tails.stdout;
                let a = &outcome.attempt;
                self.finished(&Finished {
                    view: &self.steps[step.0],
                    verdict: a.verdict,
                    total_ms: a.timings.total_ms,
                    message: &a.message,
                    retrying: *retrying,
                    tail: &tail,
                    cached_ms: outcome
                        .cache_hit()
                        .then(|| outcome.cache.as_ref().and_then(|c| c.original_ms))
                        .map(Option::unwrap_or_default),
                    changed: outcome.cache.as_ref().map_or(&[], |c| c.changed.as_slice()),
                });
            }
            RunEvent::Notice(n) => self.notice(&n.to_string()),
            RunEvent::StepFinished { .. } | RunEvent::RunFinished { .. } => {}
        }
        Ok(())
    }

    fn wants_output(&self) -> bool {
        self.verbosity == Verbosity::Verbose
    }
}

/// `3 denied`, or nothing for a step whose egress policy denied nothing.
fn denied_note(s: &StepReport) -> String {
    match s.egress.total_denied() {
        0 => String::new(),
        n => format!("{n} denied"),
    }
}

/// The summary's JSON line: the run's outcome, and egress denials by kind
/// for each step that had any.
fn summary_json(report: &Report, run_dir: &str) -> serde_json::Value {
    let denied: serde_json::Map<String, serde_json::Value> = report
        .steps
        .iter()
        .filter(|s| s.egress.total_denied() > 0)
        .map(|s| (s.name.clone(), serde_json::json!(s.egress.denied)))
        .collect();
    let mut v = serde_json::json!({"event": "summary", "status": report.status,
        "exit_code": report.exit_code, "run_dir": run_dir});
    if !denied.is_empty() {
        v["egress_denied"] = serde_json::Value::Object(denied);
    }
    v
}

/// The summary table. The `EGRESS` column appears only when some step had
/// an egress denial, so the common table stays narrow.
fn summary_text(report: &Report, run_dir: &str) -> String {
    use std::fmt::Write as _;
    let width = report
        .steps
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let egress = report.steps.iter().any(|s| s.egress.total_denied() > 0);
    let mut out = String::new();
    let _ = write!(
        out,
        "\n{:<width$}  {:<9}  {:>8}  {:>4}",
        "STEP", "VERDICT", "TIME", "TRY"
    );
    out.push_str(if egress { "  EGRESS\n" } else { "\n" });
    for s in &report.steps {
        let verdict = if s.allow_failure && s.verdict.is_failure() {
            format!("{} (ok)", s.verdict.label())
        } else {
            s.verdict.label().to_owned()
        };
        let mut line = format!(
            "{:<width$}  {:<9}  {:>7.1}s  {:>4}",
            s.name,
            verdict,
            s.timings.total_ms / 1000.0,
            s.attempts.len()
        );
        let note = denied_note(s);
        if !note.is_empty() {
            line.push_str("  ");
            line.push_str(&note);
        }
        if s.cached {
            line.push_str("  cached");
        }
        out.push_str(&line);
        out.push('\n');
    }
    let cached = report.steps.iter().filter(|s| s.cached).count();
    if cached > 0 {
        let _ = write!(out, "\n{cached} of {} steps cached", report.steps.len());
    }
    let _ = writeln!(
        out,
        "\n{}: {:?} in {:.1}s (exit {}); reports in {run_dir}",
        report.job.name,
        report.status,
        report.duration_ms / 1000.0,
        report.exit_code
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{test_denials, test_report, test_step};
    use crate::report::EgressReport;

    #[test]
    fn summary_has_no_egress_column_when_nothing_was_denied() {
        let r = test_report(vec![test_step("build", EgressReport::default())]);
        let text = summary_text(&r, "runs/1");
        assert!(!text.contains("EGRESS"), "{text}");
        assert!(
            text.contains("build  passed         1.2s     0\n"),
            "{text}"
        );
        assert!(summary_json(&r, "runs/1").get("egress_denied").is_none());
    }

    #[test]
    fn summary_counts_egress_denials_per_step() {
        let r = test_report(vec![
            test_step("build", EgressReport::default()),
            test_step(
                "fetch",
                test_denials(&[("connect-denied", 2), ("dns-refused", 1)]),
            ),
        ]);
        let text = summary_text(&r, "runs/1");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "STEP   VERDICT        TIME   TRY  EGRESS");
        assert_eq!(lines[2], "build  passed         1.2s     0");
        assert_eq!(lines[3], "fetch  passed         1.2s     0  3 denied");
        assert_eq!(
            summary_json(&r, "runs/1")["egress_denied"],
            serde_json::json!({ "fetch": { "connect-denied": 2, "dns-refused": 1 } })
        );
    }
}
