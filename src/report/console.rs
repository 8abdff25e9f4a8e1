//! The live console view: a line when a step starts and ends, output lines
//! prefixed with the step name in verbose mode, failures' tails otherwise,
//! and a summary table at the end. `--log-format json` turns every event
//! into one JSON object per line.

use std::io::Write;
use std::sync::Mutex;

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

/// The console reporter. Shared by the step threads (output lines).
#[derive(Debug, Default)]
pub struct Console {
    pub verbosity: Verbosity,
    pub format: LogFormat,
    lock: Mutex<()>,
}

impl Console {
    /// A console with these settings.
    pub fn new(verbosity: Verbosity, format: LogFormat) -> Self {
        Console {
            verbosity,
            format,
            lock: Mutex::new(()),
        }
    }

    fn emit(&self, text: &str, json: serde_json::Value) {
        let _guard = self.lock.lock();
        let mut err = std::io::stderr().lock();
        let _ = match self.format {
            LogFormat::Text => writeln!(err, "{text}"),
            LogFormat::Json => writeln!(err, "{json}"),
        };
    }

    /// A step started an attempt.
    pub fn started(&self, name: &str, attempt: usize, running: usize, queued: usize) {
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
    pub fn line(&self, name: &str, stderr: bool, line: &str) {
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
    pub fn finished(&self, s: &StepReport, retrying: bool, tail: &str) {
        let failed = s.verdict.is_failure();
        if self.verbosity == Verbosity::Quiet && (!failed || s.allow_failure) {
            return;
        }
        let mark = match s.verdict {
            Verdict::Passed => "✓",
            Verdict::Skipped | Verdict::Cancelled => "-",
            _ if s.allow_failure => "!",
            _ => "✗",
        };
        let mut text = format!(
            "{mark} {} {} ({:.1}s)",
            s.name,
            s.verdict.label(),
            s.timings.total_ms / 1000.0
        );
        if let Some(m) = &s.message {
            text.push_str(": ");
            text.push_str(m);
        }
        if retrying {
            text.push_str(" — retrying");
        }
        if failed && self.verbosity != Verbosity::Verbose && !tail.is_empty() {
            for l in tail.lines() {
                text.push_str(&format!("\n    {} | {l}", s.name));
            }
        }
        self.emit(
            &text,
            serde_json::json!({"event": "finished", "step": s.name,
                "verdict": s.verdict, "message": s.message, "retrying": retrying}),
        );
    }

    /// A notice about the run itself (interrupts, fail-fast).
    pub fn notice(&self, text: &str) {
        self.emit(
            &format!("sbxrun: {text}"),
            serde_json::json!({"event": "notice", "message": text}),
        );
    }

    /// The summary table (stdout) at the end.
    pub fn summary(&self, report: &Report, run_dir: &str) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        if self.format == LogFormat::Json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"event": "summary", "status": report.status,
                    "exit_code": report.exit_code, "run_dir": run_dir})
            );
            return;
        }
        let width = report
            .steps
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "\n{:<width$}  {:<9}  {:>8}  {:>4}",
            "STEP", "VERDICT", "TIME", "TRY"
        );
        for s in &report.steps {
            let verdict = if s.allow_failure && s.verdict.is_failure() {
                format!("{} (ok)", s.verdict.label())
            } else {
                s.verdict.label().to_owned()
            };
            let _ = writeln!(
                out,
                "{:<width$}  {:<9}  {:>7.1}s  {:>4}",
                s.name,
                verdict,
                s.timings.total_ms / 1000.0,
                s.attempts.len()
            );
        }
        let _ = writeln!(
            out,
            "\n{}: {:?} in {:.1}s (exit {}); reports in {run_dir}",
            report.job.name,
            report.status,
            report.duration_ms / 1000.0,
            report.exit_code
        );
    }
}
