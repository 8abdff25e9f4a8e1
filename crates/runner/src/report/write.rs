//! Writing report files atomically: a temporary file in the same directory,
//! synced, then renamed over the old one. A crash leaves the previous
//! complete report, never a torn one.
//!
//! A report is rewritten whole, so its cost grows with the job; rewriting
//! it after every step would make a run quadratic in its size. The
//! [`Pacer`] bounds it instead: a rewrite waits until the file has been
//! quiet for `COST_FACTOR` times as long as the last rewrite took (and at
//! least [`MIN_GAP`]), so rewriting takes at most about 1/`COST_FACTOR` of
//! the run's time while the file on disk is never older than that gap.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The shortest time between two mid-run rewrites of a report.
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// A rewrite waits this many times as long as the previous one took.
const COST_FACTOR: u32 = 20;

/// How often a report file is rewritten while the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Bounded by the [`Pacer`] rule (the default).
    #[default]
    Bounded,
    /// After every batch of events (what the rule replaces; for benchmarks).
    EveryFlush,
}

/// Decides when a changed report is rewritten.
#[derive(Debug, Default)]
pub struct Pacer {
    pacing: Pacing,
    dirty: bool,
    not_before: Option<Instant>,
}

impl Pacer {
    /// A pacer following `pacing`.
    pub fn new(pacing: Pacing) -> Self {
        Pacer {
            pacing,
            ..Pacer::default()
        }
    }

    /// The report changed since it was last written.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// Whether a mid-run rewrite is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.dirty
            && (self.pacing == Pacing::EveryFlush || self.not_before.is_none_or(|t| now >= t))
    }

    /// A rewrite that started at `started` has just ended.
    pub fn wrote(&mut self, started: Instant) {
        let now = Instant::now();
        self.dirty = false;
        let gap = (now - started).saturating_mul(COST_FACTOR).max(MIN_GAP);
        self.not_before = Some(now + gap);
    }
}

/// Replaces `path` with `bytes` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_writes_the_first_change_at_once_then_waits() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        assert!(!p.due(t0), "nothing changed yet");
        p.changed();
        assert!(p.due(t0));
        p.wrote(t0);
        p.changed();
        assert!(!p.due(Instant::now()), "too soon after a write");
        assert!(p.due(Instant::now() + MIN_GAP + Duration::from_millis(1)));
    }

    #[test]
    fn a_slow_write_stretches_the_gap() {
        let mut p = Pacer::default();
        p.changed();
        // A rewrite that took 100 ms holds the next one off for 2 s.
        let started = Instant::now() - Duration::from_millis(100);
        p.wrote(started);
        p.changed();
        let now = Instant::now();
        assert!(!p.due(now + Duration::from_millis(1900)));
        assert!(p.due(now + Duration::from_millis(2100)));
    }

    #[test]
    fn every_flush_pacing_writes_each_change() {
        let mut p = Pacer::new(Pacing::EveryFlush);
        p.changed();
        p.wrote(Instant::now());
        p.changed();
        assert!(p.due(Instant::now()));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
