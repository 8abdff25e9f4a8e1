//! What a run shows while it gets a step's VM ready: registry pulls (a
//! byte bar per image), root images built from directories and snapshots
//! booted for new VM shapes (a spinner with the elapsed time). Each is slow
//! only on first use; a terminal redraws them in place, a pipe gets a line
//! per phase, `--log-format json` a JSON line per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sbxrun_image::Event;
use sbxrun_runner::report::console::LogFormat;
use sbxrun_runner::report::json_log::{self, LogEvent};
use sbxrun_runner::report::term::{Paint, Terminal};
use sbxrun_runner::runner::{Phase, Prep, PrepProgress};

use super::units::format_bytes;

/// Where JSON progress lines go: stdout when they are part of a run's
/// event stream, stderr when stdout holds a command's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonTo {
    Stdout,
    Stderr,
}

/// The progress display of image and snapshot preparation.
pub fn progress(format: LogFormat, json_to: JsonTo) -> PrepProgress {
    let display = Arc::new(PrepDisplay {
        format,
        json_to,
        terminal: Terminal::stderr(),
        state: Mutex::new(HashMap::new()),
    });
    PrepProgress(Arc::new(move |image, prep| display.event(image, prep)))
}

struct PrepDisplay {
    format: LogFormat,
    json_to: JsonTo,
    terminal: &'static Terminal,
    /// Per image: its redrawn line and the bytes each blob had reached.
    state: Mutex<HashMap<String, Redrawn>>,
}

#[derive(Default)]
struct Redrawn {
    bar: Option<ProgressBar>,
    done: HashMap<String, u64>,
}

impl PrepDisplay {
    fn event(&self, image: &str, prep: &Prep<'_>) {
        if self.format == LogFormat::Json {
            if let Some(event) = json_event(image, prep) {
                match self.json_to {
                    JsonTo::Stdout => json_log::write(event),
                    JsonTo::Stderr => json_log::write_to_stderr(event),
                }
            }
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let t = self.terminal;
        let slot = state.entry(image.to_owned()).or_default();
        match prep {
            Prep::Pull(Event::Manifest {
                digest,
                layers,
                missing_bytes,
            }) if *missing_bytes > 0 => {
                t.line(&format!(
                    "{} {image}: pulling {layers} layer{}, {} to fetch ({})",
                    t.paint(Paint::Dim, "⇣"),
                    if *layers == 1 { "" } else { "s" },
                    format_bytes(*missing_bytes),
                    digest.get(..19).unwrap_or(digest)
                ));
                slot.bar = self.bar(
                    ProgressBar::new(*missing_bytes),
                    "  {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                );
            }
            Prep::Pull(Event::BlobBytes { digest, done, .. }) => {
                let before = slot.done.insert(digest.clone(), *done).unwrap_or(0);
                if let Some(bar) = &slot.bar {
                    bar.inc(done.saturating_sub(before));
                }
            }
            Prep::Pull(Event::BuildingExt4) => {
                clear(slot);
                t.line(&format!(
                    "{} {image}: building the root image",
                    t.paint(Paint::Dim, "⇣")
                ));
            }
            Prep::Pull(_) => {}
            Prep::ImageBuild {
                phase: Phase::Started,
                ..
            } => self.spin(
                slot,
                image,
                "building the root image from the directory (first use)",
                "building the root image",
            ),
            Prep::ImageBuild { phase, took } => {
                self.ended(slot, image, *phase, *took, "root image built")
            }
            Prep::Snapshot {
                memory_mib,
                vcpus,
                phase: Phase::Started,
                ..
            } => self.spin(
                slot,
                image,
                &format!(
                    "booting a {memory_mib} MiB, {vcpus} vCPU VM to snapshot it \
                     (first use of this VM shape)"
                ),
                "booting to snapshot",
            ),
            Prep::Snapshot { phase, took, .. } => {
                self.ended(slot, image, *phase, *took, "snapshot ready")
            }
        }
    }

    /// A line now, and a spinner with the elapsed time on a terminal.
    fn spin(&self, slot: &mut Redrawn, image: &str, what: &str, doing: &str) {
        self.terminal.line(&format!(
            "{} {image}: {what}",
            self.terminal.paint(Paint::Dim, "⚙")
        ));
        slot.bar = self.bar(ProgressBar::new_spinner(), "  {spinner} {msg} {elapsed}");
        if let Some(bar) = &slot.bar {
            bar.set_message(format!("{image}: {doing}"));
        }
    }

    /// A preparation ended: its spinner goes; a success gets a line (a
    /// failure is the step's to report).
    fn ended(
        &self,
        slot: &mut Redrawn,
        image: &str,
        phase: Phase,
        took: Option<Duration>,
        what: &str,
    ) {
        clear(slot);
        if phase == Phase::Done {
            let t = self.terminal;
            t.line(&format!(
                "{} {image}: {what} in {}",
                t.paint(Paint::Green, "✓"),
                seconds(took)
            ));
        }
    }

    fn bar(&self, bar: ProgressBar, template: &str) -> Option<ProgressBar> {
        let multi = self.terminal.live()?;
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        let bar = multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    }
}

fn clear(slot: &mut Redrawn) {
    if let Some(bar) = slot.bar.take() {
        bar.finish_and_clear();
    }
}

fn seconds(took: Option<Duration>) -> String {
    format!("{:.1}s", took.unwrap_or_default().as_secs_f64())
}

fn millis(took: Option<Duration>) -> Option<f64> {
    took.map(|d| d.as_secs_f64() * 1000.0)
}

/// The JSON event of a preparation step; byte counts are left out (a line
/// per chunk would drown the log), a blob's start and end are kept.
fn json_event(image: &str, prep: &Prep<'_>) -> Option<LogEvent> {
    let image = image.to_owned();
    Some(match prep {
        Prep::Pull(Event::Manifest {
            digest,
            layers,
            missing_bytes,
        }) => LogEvent::ImageManifest {
            image,
            digest: digest.clone(),
            layers: *layers,
            missing_bytes: *missing_bytes,
        },
        Prep::Pull(Event::BlobStart {
            digest,
            size,
            resumed_at,
        }) => LogEvent::ImageBlobStart {
            image,
            digest: digest.clone(),
            size: *size,
            resumed_at: *resumed_at,
        },
        Prep::Pull(Event::BlobDone { digest }) => LogEvent::ImageBlobDone {
            image,
            digest: digest.clone(),
        },
        Prep::Pull(Event::Applying { digest, index, of }) => LogEvent::ImageLayer {
            image,
            digest: digest.clone(),
            index: *index,
            of: *of,
        },
        Prep::Pull(Event::BuildingExt4) => LogEvent::ImageBuild {
            image,
            phase: Phase::Started,
            duration_ms: None,
        },
        Prep::Pull(Event::Cached { digest }) => LogEvent::ImageCached {
            image,
            digest: digest.clone(),
        },
        Prep::Pull(Event::BlobBytes { .. }) => return None,
        Prep::ImageBuild { phase, took } => LogEvent::ImageBuild {
            image,
            phase: *phase,
            duration_ms: millis(*took),
        },
        Prep::Snapshot {
            memory_mib,
            vcpus,
            phase,
            took,
        } => LogEvent::SnapshotBuild {
            image,
            memory_mib: *memory_mib,
            vcpus: *vcpus,
            phase: *phase,
            duration_ms: millis(*took),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_builds_become_json_lines_with_their_duration() {
        let started = json_event(
            "default",
            &Prep::Snapshot {
                memory_mib: 512,
                vcpus: 1,
                phase: Phase::Started,
                took: None,
            },
        )
        .unwrap();
        let v = serde_json::to_value(&started).unwrap();
        assert_eq!(v["event"], "snapshot-build");
        assert_eq!(v["phase"], "started");
        assert!(v.get("duration_ms").is_none());
        let done = json_event(
            "./rootfs",
            &Prep::ImageBuild {
                phase: Phase::Done,
                took: Some(Duration::from_millis(1500)),
            },
        )
        .unwrap();
        let v = serde_json::to_value(&done).unwrap();
        assert_eq!(v["event"], "image-build");
        assert_eq!(v["duration_ms"], 1500.0);
        let bytes = Event::BlobBytes {
            digest: "sha256:x".into(),
            done: 1,
            size: 2,
        };
        assert!(json_event("img", &Prep::Pull(&bytes)).is_none());
    }
}
