//! The Slurm commands the executor uses (`sbatch`, `squeue`, `scancel`,
//! `scontrol`), run as processes, with their output parsed here. Nothing
//! else talks to Slurm, so this file is what changes for another version.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// A Slurm job as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, …
    pub state: String,
    /// The node it runs or ran on (empty while pending).
    pub node: String,
    /// Submit and start times, seconds on Slurm's clock.
    pub submitted: Option<i64>,
    pub started: Option<i64>,
}

impl JobState {
    /// The job has ended (for good, unless someone requeues it).
    pub fn is_final(&self) -> bool {
        is_final(&self.state)
    }

    /// The job's batch script is running.
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "RUNNING" | "COMPLETING" | "SUSPENDED")
    }

    /// Milliseconds from submission to start.
    pub fn queued_ms(&self) -> Option<f64> {
        Some((self.started? - self.submitted?).max(0) as f64 * 1000.0)
    }
}

/// Whether a Slurm job state is a final one.
pub fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "REVOKED"
            | "SPECIAL_EXIT"
    )
}

fn run(program: &str, args: &[String], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{program}` (is Slurm installed and on PATH?): {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to `{program}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{program}` failed: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Submits `script` with `args`; returns the job id.
pub fn sbatch(args: &[String], script: &str) -> Result<String, String> {
    let mut all = vec!["--parsable".to_owned()];
    all.extend_from_slice(args);
    let out = run("sbatch", &all, Some(script))?;
    parse_sbatch(&out).ok_or_else(|| format!("sbatch printed no job id: {out:?}"))
}

/// The job id in `sbatch --parsable`'s output (`id` or `id;cluster`).
pub fn parse_sbatch(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_owned())
}

const SQUEUE_FORMAT: &str = "%i|%T|%N|%V|%S";

/// The state of each of `ids` that Slurm still knows. Jobs Slurm has
/// forgotten (older than its `MinJobAge`) are absent.
pub fn squeue(ids: &[String]) -> Result<HashMap<String, JobState>, String> {
    let mut states = HashMap::new();
    // Long id lists in chunks: one command line stays well under ARG_MAX.
    for chunk in ids.chunks(500) {
        let args = vec![
            "-h".to_owned(),
            "--states=all".to_owned(),
            "-o".to_owned(),
            SQUEUE_FORMAT.to_owned(),
            "-j".to_owned(),
            chunk.join(","),
        ];
        match run("squeue", &args, None) {
            Ok(out) => states.extend(parse_squeue(&out)),
            // A single forgotten id fails the whole call: ask one by one.
            Err(e) if e.contains("Invalid job id") && chunk.len() > 1 => {
                for id in chunk {
                    if let Ok(one) = squeue(std::slice::from_ref(id)) {
                        states.extend(one);
                    }
                }
            }
            Err(e) if e.contains("Invalid job id") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(states)
}

/// Parses `squeue -o "%i|%T|%N|%V|%S"` lines.
pub fn parse_squeue(out: &str) -> HashMap<String, JobState> {
    out.lines()
        .filter_map(|line| {
            let mut f = line.trim().split('|');
            let id = f.next()?.trim().to_owned();
            let state = f.next()?.trim().to_owned();
            let node = f.next().unwrap_or("").trim().to_owned();
            let submitted = f.next().and_then(parse_time);
            let started = f.next().and_then(parse_time);
            (!id.is_empty()).then(|| {
                let node = if node == "(null)" {
                    String::new()
                } else {
                    node
                };
                (
                    id.clone(),
                    JobState {
                        id,
                        state,
                        node,
                        submitted,
                        started,
                    },
                )
            })
        })
        .collect()
}

/// Seconds of a Slurm timestamp (`2026-12-06T23:59:01`, in Slurm's time
/// zone: only differences are used). `N/A`, `Unknown` and the like are
/// `None`.
pub fn parse_time(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(text.trim(), &format).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

/// Cancels these jobs (no error for jobs that already ended).
pub fn scancel(ids: &[String]) -> Result<(), String> {
    for chunk in ids.chunks(500) {
        run("scancel", chunk, None)?;
    }
    Ok(())
}

/// Replaces a pending job's dependency (`afterok:1:2`, or empty for none).
pub fn set_dependency(id: &str, dependency: &str) -> Result<(), String> {
    run(
        "scontrol",
        &[
            "update".to_owned(),
            format!("JobId={id}"),
            format!("Dependency={dependency}"),
        ],
        None,
    )
    .map(|_| ())
}

/// The addresses of the nodes Slurm knows (`sinfo`'s NodeAddr), to tell
/// whether every node is this host.
pub fn node_addresses(partition: Option<&str>) -> Result<Vec<String>, String> {
    let mut args = vec![
        "-h".to_owned(),
        "-N".to_owned(),
        "-o".to_owned(),
        "%o".to_owned(),
    ];
    if let Some(p) = partition {
        args.push(format!("--partition={p}"));
    }
    Ok(run("sinfo", &args, None)?
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_output_gives_the_job_id() {
        assert_eq!(parse_sbatch("1234\n"), Some("1234".into()));
        assert_eq!(parse_sbatch("77;cluster-a\n"), Some("77".into()));
        assert_eq!(parse_sbatch("Submitted batch job 5\n"), None);
        assert_eq!(parse_sbatch(""), None);
    }

    #[test]
    fn squeue_lines_parse_with_times_and_nodes() {
        let out = "12|COMPLETED|vm|2026-12-06T10:00:01|2026-12-06T10:00:03\n\
                   13|PENDING||2026-12-06T10:00:01|N/A\n\
                   14|CANCELLED|(null)|2026-12-06T10:00:01|2026-12-06T10:00:09\n";
        let s = parse_squeue(out);
        assert_eq!(s.len(), 3);
        assert!(s["12"].is_final() && !s["12"].is_running());
        assert_eq!(s["12"].node, "vm");
        assert_eq!(s["12"].queued_ms(), Some(2000.0));
        assert!(!s["13"].is_final());
        assert_eq!(s["13"].queued_ms(), None);
        assert_eq!(s["14"].node, "");
        assert!(is_final("NODE_FAIL") && is_final("TIMEOUT") && !is_final("RUNNING"));
    }
}
