//! What a Slurm run keeps in its run directory, on the filesystem every
//! node shares: the submitter's own command line (so a step on a node runs
//! with exactly the same options), the Slurm jobs of each instance, and
//! each instance's attempts and end as its job recorded them. The
//! submitter follows a run through these files, and `sbxrun report`
//! rebuilds the reports from them.
//!
//! ```text
//! RUN_DIR/.sbxrun/
//!   submit.json                  argv, working directory, executable
//!   jobs.json                    instance -> its Slurm job ids, in order
//!   steps/<instance>/
//!     running-<n>                attempt n has started (written by the node)
//!     attempt-<n>.json           attempt n's outcome (written by the node)
//!     end.json                   how the instance ended for good
//!     slurm-<jobid>.out          the batch script's own output
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::{atomic_write, AttemptOutcome, StepEnd};
use crate::runner::file_name;

/// The submitter's invocation, replayed on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// `sbxrun run …` as typed (without the program name).
    pub argv: Vec<String>,
    /// Where it was typed: relative paths in `argv` are relative to it.
    pub cwd: PathBuf,
    /// The sbxrun executable the nodes run.
    pub exe: PathBuf,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub outcome: AttemptOutcome,
    /// Another attempt follows in the same Slurm job.
    pub retrying: bool,
}

/// The records of one run directory.
#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
}

fn io(action: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot {action} {}: {e}", path.display())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io("encode", path, e))?;
    atomic_write(path, &bytes).map_err(|e| io("write", path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io("read", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path, e)),
    }
}

impl Records {
    /// The records under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Records {
            root: run_dir.join(".sbxrun"),
        }
    }

    /// Where the records live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An instance's directory (created by [`Records::prepare`]).
    pub fn step_dir(&self, instance: &str) -> PathBuf {
        self.root.join("steps").join(file_name(instance))
    }

    /// Creates every instance's directory: Slurm writes the batch output
    /// there before the step runs.
    pub fn prepare<'a>(&self, instances: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        for i in instances {
            let d = self.step_dir(i);
            std::fs::create_dir_all(&d).map_err(|e| io("create", &d, e))?;
        }
        Ok(())
    }

    pub fn write_submit(&self, s: &Submit) -> Result<(), String> {
        write_json(&self.root.join("submit.json"), s)
    }

    pub fn submit(&self) -> Result<Submit, String> {
        let path = self.root.join("submit.json");
        read_json(&path)?.ok_or_else(|| {
            format!(
                "{} is missing: not a run directory of the Slurm executor",
                path.display()
            )
        })
    }

    pub fn write_jobs(&self, jobs: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
        write_json(&self.root.join("jobs.json"), jobs)
    }

    pub fn jobs(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        Ok(read_json(&self.root.join("jobs.json"))?.unwrap_or_default())
    }

    /// Marks attempt `n` of `instance` as started.
    pub fn mark_running(&self, instance: &str, n: u32) -> Result<(), String> {
        let p = self.step_dir(instance).join(format!("running-{n}"));
        std::fs::write(&p, b"").map_err(|e| io("write", &p, e))
    }

    /// The highest attempt of `instance` marked as started.
    pub fn running(&self, instance: &str) -> u32 {
        self.numbered(instance, "running-", "")
    }

    fn numbered(&self, instance: &str, prefix: &str, suffix: &str) -> u32 {
        let Ok(dir) = std::fs::read_dir(self.step_dir(instance)) else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix(prefix)?.strip_suffix(suffix)?;
                n.parse::<u32>().ok()
            })
            .max()
            .unwrap_or(0)
    }

    pub fn write_attempt(&self, instance: &str, n: u32, r: &AttemptRecord) -> Result<(), String> {
        write_json(
            &self.step_dir(instance).join(format!("attempt-{n}.json")),
            r,
        )
    }

    /// How many attempts of `instance` are recorded.
    pub fn attempt_count(&self, instance: &str) -> u32 {
        self.numbered(instance, "attempt-", ".json")
    }

    pub fn attempt(&self, instance: &str, n: u32) -> Result<Option<AttemptRecord>, String> {
        read_json(&self.step_dir(instance).join(format!("attempt-{n}.json")))
    }

    pub fn write_end(&self, instance: &str, end: &StepEnd) -> Result<(), String> {
        write_json(&self.step_dir(instance).join("end.json"), end)
    }

    pub fn end(&self, instance: &str) -> Result<Option<StepEnd>, String> {
        read_json(&self.step_dir(instance).join("end.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

    #[test]
    fn attempts_and_ends_round_trip_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path());
        r.prepare(["test[case=a/b]"]).unwrap();
        assert_eq!(r.attempt_count("test[case=a/b]"), 0);
        assert_eq!(r.end("test[case=a/b]").unwrap(), None);
        r.mark_running("test[case=a/b]", 1).unwrap();
        r.mark_running("test[case=a/b]", 2).unwrap();
        assert_eq!(r.running("test[case=a/b]"), 2);
        let end = StepEnd::Skipped("dependency `build` failed".into());
        r.write_end("test[case=a/b]", &end).unwrap();
        assert_eq!(r.end("test[case=a/b]").unwrap(), Some(end));
        r.write_end("x", &StepEnd::Ran(Verdict::Tle)).unwrap();
        assert_eq!(r.end("x").unwrap(), Some(StepEnd::Ran(Verdict::Tle)));
        let mut jobs = BTreeMap::new();
        jobs.insert("x".to_owned(), vec!["12".to_owned(), "15".to_owned()]);
        r.write_jobs(&jobs).unwrap();
        assert_eq!(r.jobs().unwrap(), jobs);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path());
        r.prepare(["a"]).unwrap();
        std::fs::write(r.step_dir("a").join("end.json"), "{").unwrap();
        let err = r.end("a").unwrap_err();
        assert!(err.contains("end.json"), "{err}");
    }
}
