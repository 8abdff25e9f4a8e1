//! The console: on stderr, a line when a step starts and ends, output
//! lines prefixed with the step name in verbose mode, failures' tails
//! otherwise, and on a terminal the running steps redrawn in place with
//! their elapsed time; a summary table on stdout at the end. With
//! `--log-format json` every event is a JSON line on stdout instead
//! ([`super::json_log`]). Live, it is a sink of the run's events.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::events::{EventSink, RunEvent, SinkError, StepId};
use super::json_log::{self, JsonLog};
use super::logs::Stream;
use super::model::{Report, StepReport, Verdict};
use super::term::{Paint, Terminal};

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
#[derive(Default)]
struct StepView {
    name: String,
    allow_failure: bool,
    /// Denials by kind as the step's report has them: the last attempt
    /// that got as far as its network, else none.
    denied: BTreeMap<String, u64>,
    /// An attempt of it is running.
    running: bool,
    /// Its redrawn line while it runs (live terminals only, at most
    /// [`LIVE_STEPS`] at once).
    bar: Option<ProgressBar>,
}

/// Running steps shown in place at most; the rest are counted.
const LIVE_STEPS: usize = 8;

/// The console reporter.
pub struct Console {
    pub verbosity: Verbosity,
    pub format: LogFormat,
    steps: Vec<StepView>,
    json: JsonLog,
    terminal: &'static Terminal,
    /// The last line on a live terminal: how far the run is.
    footer: Option<ProgressBar>,
    /// Steps ended for good.
    finished: usize,
    /// Steps waiting for a slot, as the last start reported it.
    queued: usize,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("verbosity", &self.verbosity)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
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
    /// A console with these settings, on the process's stderr.
    pub fn new(verbosity: Verbosity, format: LogFormat) -> Self {
        Self::on(verbosity, format, Terminal::stderr())
    }

    /// A console on `terminal`.
    pub fn on(verbosity: Verbosity, format: LogFormat, terminal: &'static Terminal) -> Self {
        Console {
            verbosity,
            format,
            steps: Vec::new(),
            json: JsonLog::default(),
            terminal,
            footer: None,
            finished: 0,
            queued: 0,
        }
    }

    fn say(&self, text: &str) {
        self.terminal.line(text);
    }

    fn name(&self, step: StepId) -> &str {
        self.steps.get(step.0).map_or("", |s| s.name.as_str())
    }

    /// Whether running steps are redrawn in place.
    fn live(&self) -> bool {
        self.verbosity != Verbosity::Quiet && self.terminal.live().is_some()
    }

    /// A step started an attempt.
    fn started(&mut self, step: StepId, attempt: u32, running: usize, queued: usize) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let again = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        let name = self.name(step).to_owned();
        if let Some(view) = self.steps.get_mut(step.0) {
            view.running = true;
        }
        self.queued = queued;
        // On a live terminal the step's redrawn line says it started.
        if !self.live() {
            self.say(&format!(
                "▶ {name}{again}   [{running} running, {queued} queued]"
            ));
            return;
        }
        let shown = self.steps.iter().filter(|s| s.bar.is_some()).count();
        if shown < LIVE_STEPS {
            let bar = self.running_bar(&format!("{name}{again}"));
            if let Some(view) = self.steps.get_mut(step.0) {
                view.bar = bar;
            }
        }
        self.refresh_footer();
    }

    /// A redrawn line for a running step: spinner, name, elapsed time.
    fn running_bar(&self, label: &str) -> Option<ProgressBar> {
        let multi = self.terminal.live()?;
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(label.to_owned());
        let bar = match &self.footer {
            Some(footer) => multi.insert_before(footer, bar),
            None => multi.add(bar),
        };
        bar.enable_steady_tick(Duration::from_millis(250));
        Some(bar)
    }

    /// The last redrawn line: how many steps are done, running (and how
    /// many of those have no line of their own) and queued.
    fn refresh_footer(&mut self) {
        let Some(multi) = self.terminal.live() else {
            return;
        };
        let running = self.steps.iter().filter(|s| s.running).count();
        let shown = self.steps.iter().filter(|s| s.bar.is_some()).count();
        let hidden = running.saturating_sub(shown);
        let more = if hidden > 0 {
            format!(" ({hidden} not shown)")
        } else {
            String::new()
        };
        let text = format!(
            "{}/{} done, {running} running{more}, {} queued",
            self.finished,
            self.steps.len(),
            self.queued
        );
        let footer = self.footer.get_or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("  {msg} {elapsed}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        footer.set_message(text);
    }

    /// One line of a step's output (verbose only).
    fn line(&self, name: &str, stderr: bool, line: &str) {
        if self.verbosity != Verbosity::Verbose {
            return;
        }
        let prefix = format!("{name} |");
        let text = if stderr {
            self.terminal.paint(Paint::Yellow, line)
        } else {
            line.to_owned()
        };
        self.say(&format!(
            "{} {text}",
            self.terminal.paint(Paint::Dim, &prefix)
        ));
    }

    /// A step ended (finally, or an attempt that will be retried).
    fn finished(&self, f: &Finished<'_>) {
        let s = f.view;
        let failed = f.verdict.is_failure();
        if self.verbosity == Verbosity::Quiet && (!failed || s.allow_failure) {
            return;
        }
        let t = self.terminal;
        let (mark, paint) = match f.verdict {
            Verdict::Passed => ("✓", Paint::Green),
            Verdict::Skipped | Verdict::Cancelled => ("-", Paint::Dim),
            _ if s.allow_failure => ("!", Paint::Yellow),
            _ => ("✗", Paint::Red),
        };
        let mark = t.paint(paint, mark);
        let verdict = t.paint(paint, f.verdict.label());
        let mut text = match f.cached_ms {
            Some(was) if f.verdict == Verdict::Passed => {
                format!("{mark} {} cached (was {:.1}s)", s.name, was / 1000.0)
            }
            Some(was) => format!(
                "{mark} {} {verdict}, cached (was {:.1}s)",
                s.name,
                was / 1000.0
            ),
            None => format!("{mark} {} {verdict} ({:.1}s)", s.name, f.total_ms / 1000.0),
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
            let prefix = t.paint(Paint::Dim, &format!("{} |", s.name));
            for l in f.tail.lines() {
                text.push_str(&format!("\n    {prefix} {l}"));
            }
        }
        self.say(&text);
    }

    /// A notice about the run itself (interrupts, fail-fast).
    fn notice(&self, text: &str) {
        self.say(&format!("sbxrun: {text}"));
    }

    /// Clears the redrawn lines (the run is over).
    fn clear_live(&mut self) {
        for s in &mut self.steps {
            if let Some(bar) = s.bar.take() {
                bar.finish_and_clear();
            }
        }
        if let Some(footer) = self.footer.take() {
            footer.finish_and_clear();
        }
    }

    /// The summary at the end: a table on stdout, or the JSON `summary`
    /// line.
    pub fn summary(&self, report: &Report, run_dir: &str) {
        match self.format {
            LogFormat::Json => json_log::write(json_log::summary(report, run_dir)),
            LogFormat::Text => {
                let _ = write!(
                    std::io::stdout().lock(),
                    "{}",
                    summary_text(report, run_dir)
                );
            }
        }
    }

    fn text_event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { steps, .. } => {
                self.steps = steps
                    .iter()
                    .map(|s| StepView {
                        name: s.name.clone(),
                        allow_failure: s.allow_failure,
                        denied: s.egress.denied.clone(),
                        running: false,
                        bar: None,
                    })
                    .collect();
            }
            RunEvent::StepStarted {
                step,
                attempt,
                running,
                queued,
            } => self.started(*step, *attempt, *running, *queued),
            RunEvent::StepOutput { step, stream, line } => {
                self.line(self.name(*step), *stream == Stream::Err, line)
            }
            RunEvent::AttemptFinished {
                step,
                outcome,
                retrying,
            } => {
                let Some(view) = self.steps.get_mut(step.0) else {
                    return;
                };
                view.running = false;
                if let Some(bar) = view.bar.take() {
                    bar.finish_and_clear();
                }
                if let Some(egress) = &outcome.egress {
                    view.denied = egress.denied.clone();
                }
                let tail = outcome.tails.in_order();
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
            RunEvent::StepFinished { .. } => {
                self.finished += 1;
                if self.footer.is_some() {
                    self.refresh_footer();
                }
            }
            RunEvent::Notice(n) => self.notice(&n.to_string()),
            RunEvent::RunFinished { .. } => self.clear_live(),
        }
    }
}

impl EventSink for Console {
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        match self.format {
            LogFormat::Json => {
                let wanted = self.verbosity == Verbosity::Verbose
                    || !matches!(event, RunEvent::StepOutput { .. });
                if let Some(line) = self.json.line(event).filter(|_| wanted) {
                    json_log::write(line);
                }
            }
            LogFormat::Text => self.text_event(event),
        }
        Ok(())
    }

    fn wants_output(&self) -> bool {
        self.verbosity == Verbosity::Verbose
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.clear_live();
    }
}

/// `3 denied`, or nothing for a step whose egress policy denied nothing.
fn denied_note(s: &StepReport) -> String {
    match s.egress.total_denied() {
        0 => String::new(),
        n => format!("{n} denied"),
    }
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
        let line = serde_json::to_value(json_log::summary(&r, "runs/1")).unwrap();
        assert!(line.get("egress_denied").is_none(), "{line}");
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
            serde_json::to_value(json_log::summary(&r, "runs/1")).unwrap()["egress_denied"],
            serde_json::json!({ "fetch": { "connect-denied": 2, "dns-refused": 1 } })
        );
    }
}
