//! The images part of `sbxrun cache`: one table for the container images
//! pulled from registries and the root images built from directories (size,
//! last use, source), and removing them — all of them with `--images`, the
//! directory images whose source changed or is gone with `--stale`. The
//! guest kernel and the default image are assets and stay.

use std::fmt::Write as _;
use std::path::Path;

use super::stdout::outln;
use super::units::{format_age, format_bytes};
use sbxrun_image::CachedImage;
use sbxrun_runner::pool::dir_images::{self, DirImage, Freshness};

/// One row of the images table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// `registry` or `directory`.
    pub kind: &'static str,
    /// The references it was pulled as, or the directory it was built from.
    pub source: String,
    pub disk_bytes: u64,
    pub last_used_unix: Option<u64>,
}

/// The rows of both kinds of image, most recently used first.
pub fn rows(pulled: &[CachedImage], built: &[DirImage]) -> Vec<ImageRow> {
    let mut rows: Vec<ImageRow> = pulled
        .iter()
        .map(|i| ImageRow {
            kind: "registry",
            source: names(&i.record.names),
            disk_bytes: i.disk_bytes,
            last_used_unix: Some(i.record.last_used),
        })
        .chain(built.iter().map(|d| ImageRow {
            kind: "directory",
            source: d.source.as_ref().map_or_else(
                || format!("(unknown source, key {})", d.key),
                |p| p.display().to_string(),
            ),
            disk_bytes: d.usage.disk_bytes,
            last_used_unix: d.last_used_unix,
        }))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.last_used_unix));
    rows
}

/// The first name an image was pulled as, and how many more it has (tests
/// and registries on changing ports pile them up).
fn names(all: &[String]) -> String {
    match all {
        [] => "(no name)".into(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (+{} more names)", rest.len()),
    }
}

/// The table, ages relative to `now`.
pub fn render(rows: &[ImageRow], now: u64) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("images: none pulled or built\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9}  {:>10}  {:>8}  SOURCE",
        "IMAGE", "ON DISK", "LAST USE"
    );
    for r in rows {
        let age = r
            .last_used_unix
            .map_or_else(|| "-".into(), |t| format_age(now.saturating_sub(t)));
        let _ = writeln!(
            out,
            "{:<9}  {:>10}  {:>8}  {}",
            r.kind,
            format_bytes(r.disk_bytes),
            age,
            r.source
        );
    }
    let total: u64 = rows.iter().map(|r| r.disk_bytes).sum();
    let _ = writeln!(
        out,
        "images: {} ({} on disk)",
        rows.len(),
        format_bytes(total)
    );
    out
}

/// Removes directory images: all of them, or (`stale_only`) those whose
/// source changed or is gone. Returns the bytes freed (or that would be)
/// and whether a removal failed.
pub fn clean_built(cache: &Path, stale_only: bool, dry_run: bool) -> (u64, bool) {
    let mut freed = 0;
    let mut failed = false;
    for image in dir_images::list(cache) {
        let source = image
            .source
            .as_ref()
            .map_or_else(|| "an unknown source".into(), |p| p.display().to_string());
        let why = if stale_only {
            match dir_images::freshness(&image) {
                Freshness::SourceChanged => "its source changed since",
                Freshness::SourceGone => "its source is gone",
                Freshness::Unreadable(reason) => {
                    outln!("kept image built from {source}: cannot check it ({reason})");
                    continue;
                }
                Freshness::Current | Freshness::Unknown => continue,
            }
        } else {
            "rebuilt on demand"
        };
        let size = format_bytes(image.usage.disk_bytes);
        if dry_run {
            outln!("would remove image built from {source} ({why}), {size}");
            freed += image.usage.disk_bytes;
            continue;
        }
        match dir_images::remove(&image) {
            Ok(()) => {
                outln!("removed image built from {source} ({why}), {size}");
                freed += image.usage.disk_bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("sbxrun: cannot remove {}: {e}", image.dir.display());
                failed = true;
            }
        }
    }
    (freed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_kind_size_age_and_source_newest_first() {
        let rows = vec![
            ImageRow {
                kind: "directory",
                source: "/srv/rootfs".into(),
                disk_bytes: 3 << 20,
                last_used_unix: Some(1000),
            },
            ImageRow {
                kind: "registry",
                source: "127.0.0.1:5000/python:3.11".into(),
                disk_bytes: 40 << 20,
                last_used_unix: Some(4600),
            },
        ];
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| std::cmp::Reverse(r.last_used_unix));
        let text = render(&sorted, 8200);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("IMAGE"), "{text}");
        assert!(
            lines[1].starts_with("registry") && lines[1].ends_with("python:3.11"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("directory") && lines[2].ends_with("/srv/rootfs"),
            "{text}"
        );
        assert!(lines[3].starts_with("images: 2"), "{text}");
        assert_eq!(
            names(&["a:1".into(), "b:1".into(), "c:1".into()]),
            "a:1 (+2 more names)"
        );
    }
}
