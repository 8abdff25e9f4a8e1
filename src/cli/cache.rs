//! `sbxrun cache ls` and `sbxrun cache clean`: what the cache directory
//! holds and freeing it. Which entries are usable and what may be removed is
//! decided in `pool::cache`; this file parses flags and prints.

use super::stdout::{out, outln};
use std::path::Path;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::units::{format_age, format_bytes};
use crate::errors::{CliError, CliResult, EXIT_INFRA, EXIT_OK};
use sbxrun_image::Store;
use sbxrun_runner::assets;
use sbxrun_runner::errors::chain;
use sbxrun_runner::pool::cache::{
    self, plan_clean, remove_entry, short_key, AssetEntry, CleanScope, Inventory, ScratchEntry,
    SnapshotEntry, SnapshotState, Usage,
};
use sbxrun_runner::pool::dir_images::{self, DirImage};
use sbxrun_stepcache::LocalStore;

/// Arguments of `sbxrun cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// The `cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the VM snapshots, their state and size, and the space taken by
    /// guest assets and scratch.
    Ls(LsArgs),
    /// Remove snapshots (rebuilt on demand); with --images the container
    /// images instead of snapshots, with --steps the cached step results;
    /// with --all also the built guest assets, container images, step
    /// results and scratch. Run it while no job is running: a
    /// running job restores its VMs from these snapshots.
    Clean(CleanArgs),
}

/// Arguments of `sbxrun cache ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print the listing as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sbxrun cache clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Remove only what no run will use again: stale, damaged and orphaned
    /// snapshots, abandoned builds, and images built from directories
    /// whose source changed or is gone.
    #[arg(long, conflicts_with = "all")]
    pub stale: bool,
    /// Also remove the built guest assets (`make assets` rebuilds them),
    /// the container images and the scratch of finished runs.
    #[arg(long)]
    pub all: bool,
    /// Remove the images: those pulled from registries (with their blobs)
    /// and those built from directories; each is pulled or built again on
    /// demand. Snapshots, the guest kernel and the default image stay.
    #[arg(long, conflicts_with_all = ["all", "stale"])]
    pub images: bool,
    /// Remove the cached step results (every step runs again next time),
    /// and nothing else.
    #[arg(long, conflicts_with_all = ["all", "stale", "images"])]
    pub steps: bool,
    /// Print what would be removed and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `sbxrun cache …`; exit 0 on success, 3 on an I/O error.
pub fn run(args: CacheArgs) -> CliResult {
    let dir = assets::cache_dir();
    let inv = cache::scan(&dir).map_err(|e| CliError::infra(&e))?;
    match args.command {
        CacheCommand::Ls(a) => ls(&inv, a.json),
        CacheCommand::Clean(a) if a.images => {
            let code = clean_images(a.dry_run)?;
            Ok(code.max(clean_built_images(&dir, false, a.dry_run)))
        }
        CacheCommand::Clean(a) if a.steps => clean_steps(a.dry_run),
        CacheCommand::Clean(a) => {
            let mut code = clean(&inv, &a)?;
            if a.stale {
                code = code.max(clean_built_images(&dir, true, a.dry_run));
            }
            if a.all {
                clean_images(a.dry_run)?;
                clean_steps(a.dry_run)?;
            }
            Ok(code)
        }
    }
}

/// The step cache, if a run ever used it.
fn step_store() -> Result<Option<LocalStore>, CliError> {
    let dir = super::run::step_cache_dir(None);
    if !dir.is_dir() {
        return Ok(None);
    }
    LocalStore::open(&dir)
        .map(Some)
        .map_err(|e| CliError::Infra(format!("step cache: {}", chain(&e))))
}

/// Removes every cached step result.
fn clean_steps(dry_run: bool) -> CliResult {
    let Some(store) = step_store()? else {
        outln!("no cached step results");
        return Ok(EXIT_OK);
    };
    let usage = store.usage();
    if dry_run {
        outln!(
            "would remove {} cached step results, {}",
            usage.entries,
            format_bytes(usage.bytes)
        );
        return Ok(EXIT_OK);
    }
    let removed = store
        .clear()
        .map_err(|e| CliError::Infra(format!("cannot clear the step cache: {}", chain(&e))))?;
    outln!(
        "removed {} cached step results, freed {} (every step runs again next time)",
        removed.entries,
        format_bytes(removed.bytes)
    );
    Ok(EXIT_OK)
}

/// Removes images built from directories (`stale_only`: those whose source
/// changed or is gone); the exit code.
fn clean_built_images(cache: &Path, stale_only: bool, dry_run: bool) -> i32 {
    let (freed, failed) = super::cache_images::clean_built(cache, stale_only, dry_run);
    if freed > 0 {
        let verb = if dry_run { "would free" } else { "freed" };
        outln!(
            "{verb} {} of images built from directories (built again on demand)",
            format_bytes(freed)
        );
    }
    if failed {
        EXIT_INFRA
    } else {
        EXIT_OK
    }
}

/// The container image store, if anything was ever pulled.
fn image_store() -> Result<Option<Store>, CliError> {
    let dir = super::image::image_cache();
    if !dir.is_dir() {
        return Ok(None);
    }
    Store::open(&dir)
        .map(Some)
        .map_err(|e| CliError::Infra(format!("image cache {}: {e}", dir.display())))
}

/// Removes every container image and the blobs left without one.
fn clean_images(dry_run: bool) -> CliResult {
    let Some(store) = image_store()? else {
        outln!("no container images");
        return Ok(EXIT_OK);
    };
    let mut freed = 0;
    for image in store.list_images() {
        let r = &image.record;
        let what = format!("{} {}", r.names.join(", "), r.manifest_digest);
        if dry_run {
            outln!(
                "would remove image {what}, {}",
                format_bytes(image.disk_bytes)
            );
            freed += image.disk_bytes;
            continue;
        }
        store
            .remove_image(&r.manifest_digest)
            .map_err(|e| CliError::Infra(format!("cannot remove image {what}: {e}")))?;
        outln!("removed image {what}, {}", format_bytes(image.disk_bytes));
        freed += image.disk_bytes;
    }
    if !dry_run {
        freed += store
            .remove_unreferenced_blobs()
            .map_err(|e| CliError::Infra(format!("cannot remove image blobs: {e}")))?;
    }
    let verb = if dry_run { "would free" } else { "freed" };
    outln!(
        "{verb} {} of container images (pulled again on demand)",
        format_bytes(freed)
    );
    Ok(EXIT_OK)
}

/// One container image in `cache ls`.
#[derive(Serialize)]
struct ImageJson {
    names: Vec<String>,
    digest: String,
    disk_bytes: u64,
    last_used: u64,
}

fn images_of(store: Option<&Store>) -> Vec<ImageJson> {
    store
        .map(|s| s.list_images())
        .unwrap_or_default()
        .into_iter()
        .map(|i| ImageJson {
            names: i.record.names,
            digest: i.record.manifest_digest,
            disk_bytes: i.disk_bytes,
            last_used: i.record.last_used,
        })
        .collect()
}

/// `cache ls --json`: the inventory plus totals.
#[derive(Serialize)]
struct LsJson<'a> {
    cache: &'a Path,
    snapshots: &'a [SnapshotEntry],
    snapshots_total: Usage,
    assets: &'a [AssetEntry],
    assets_total: Usage,
    scratch: &'a [ScratchEntry],
    scratch_total: Usage,
    /// Pulled container images (their blobs are counted in `images_bytes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<ImageJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    images_bytes: Option<u64>,
    /// Images built from directories, with their source and last use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dir_images: Vec<DirImage>,
    /// Cached step results.
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<StepsJson>,
}

/// The step cache in `cache ls --json`.
#[derive(Serialize)]
struct StepsJson {
    dir: std::path::PathBuf,
    entries: u64,
    blobs: u64,
    bytes: u64,
}

fn ls(inv: &Inventory, json: bool) -> CliResult {
    let store = image_store()?;
    let pulled = store.as_ref().map(Store::list_images).unwrap_or_default();
    let built = dir_images::list(&inv.cache);
    let images = images_of(store.as_ref());
    let images_bytes = store.as_ref().map(Store::usage);
    let steps = step_store()?.map(|s| {
        let u = s.usage();
        StepsJson {
            dir: s.root().to_owned(),
            entries: u.entries,
            blobs: u.blobs,
            bytes: u.bytes,
        }
    });
    if json {
        let out = LsJson {
            cache: &inv.cache,
            snapshots: &inv.snapshots,
            snapshots_total: Usage::total(inv.snapshots.iter().map(|s| &s.usage)),
            assets: &inv.assets,
            assets_total: Usage::total(inv.assets.iter().map(|a| &a.usage)),
            scratch: &inv.scratch,
            scratch_total: Usage::total(inv.scratch.iter().map(|s| &s.usage)),
            images,
            images_bytes,
            dir_images: built,
            steps,
        };
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::Infra(format!("cannot write the listing as JSON: {e}")))?;
        outln!("{text}");
    } else {
        out!("{}", render_ls(inv, now_unix()));
        let rows = super::cache_images::rows(&pulled, &built);
        out!("{}", super::cache_images::render(&rows, now_unix()));
        match steps {
            Some(s) => outln!(
                "step results: {} cached, {} on disk in {}",
                s.entries,
                format_bytes(s.bytes),
                s.dir.display()
            ),
            None => outln!("step results: none cached"),
        }
    }
    Ok(EXIT_OK)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The human listing of `cache ls`, ages taken relative to `now`.
fn render_ls(inv: &Inventory, now: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cache: {}", inv.cache.display());
    if inv.snapshots.is_empty() {
        out.push_str("no snapshots (each VM shape's is built on first use)\n");
    } else {
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "{:<12}  {:<6}  {:>9}  {:>5}  {:>4}  {:>10}  {:>10}  STATUS",
            "KEY", "FORMAT", "MEMORY", "VCPUS", "AGE", "SIZE", "ON DISK"
        );
        for s in &inv.snapshots {
            let _ = writeln!(
                out,
                "{:<12}  {:<6}  {:>9}  {:>5}  {:>4}  {:>10}  {:>10}  {}",
                short_key(&s.key),
                s.format.clone().unwrap_or_else(dash),
                s.memory_mib
                    .map(|m| format!("{m} MiB"))
                    .unwrap_or_else(dash),
                s.vcpus.map(|v| v.to_string()).unwrap_or_else(dash),
                s.created_unix
                    .map(|t| format_age(now.saturating_sub(t)))
                    .unwrap_or_else(dash),
                format_bytes(s.usage.apparent_bytes),
                format_bytes(s.usage.disk_bytes),
                s.state.describe(),
            );
        }
    }
    let total = Usage::total(inv.snapshots.iter().map(|s| &s.usage));
    let count =
        |f: fn(&SnapshotState) -> bool| inv.snapshots.iter().filter(|s| f(&s.state)).count();
    let _ = writeln!(
        out,
        "total: {} snapshots, {} apparent, {} on disk ({} usable, {} stale or damaged, {} building)",
        inv.snapshots.len(),
        format_bytes(total.apparent_bytes),
        format_bytes(total.disk_bytes),
        count(|s| *s == SnapshotState::Usable),
        count(SnapshotState::is_stale),
        count(|s| matches!(s, SnapshotState::Building { .. })),
    );
    if inv.assets.is_empty() {
        out.push_str("guest assets: none (build them with `make assets`)\n");
    } else {
        let names: Vec<String> = inv.assets.iter().map(|a| format!("{}/", a.name)).collect();
        let _ = writeln!(
            out,
            "guest assets: {} on disk in {}",
            format_bytes(Usage::total(inv.assets.iter().map(|a| &a.usage)).disk_bytes),
            names.join(" "),
        );
    }
    let in_use = inv.scratch.iter().filter(|s| s.in_use).count();
    let _ = writeln!(
        out,
        "scratch: {} on disk in {}/ ({} directories, {in_use} in use)",
        format_bytes(Usage::total(inv.scratch.iter().map(|s| &s.usage)).disk_bytes),
        cache::SCRATCH_DIR,
        inv.scratch.len(),
    );
    out
}

fn clean(inv: &Inventory, args: &CleanArgs) -> CliResult {
    let scope = match (args.stale, args.all) {
        (true, _) => CleanScope::Stale,
        (_, true) => CleanScope::All,
        _ => CleanScope::Snapshots,
    };
    let plan = plan_clean(inv, scope);
    let rel = |p: &Path| {
        p.strip_prefix(&inv.cache)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    outln!("cache: {}", inv.cache.display());
    let removes_usable = plan.remove.iter().any(|r| {
        inv.snapshots
            .iter()
            .any(|s| s.path == r.path && s.state == SnapshotState::Usable)
    });
    // Scratch named for a live pid means a runner is using the cache now.
    let mut running: Vec<u32> = inv
        .scratch
        .iter()
        .filter(|s| s.in_use)
        .filter_map(|s| s.pid)
        .collect();
    running.sort_unstable();
    running.dedup();
    if removes_usable {
        for pid in running {
            eprintln!(
                "warning: sbxrun pid {pid} is running and restores its VMs from these snapshots; \
                 its next steps may fail"
            );
        }
    }
    let mut freed = 0u64;
    let mut failed = false;
    for r in &plan.remove {
        let size = format_bytes(r.usage.disk_bytes);
        if args.dry_run {
            outln!("would remove {}: {}, {size}", rel(&r.path), r.what);
            freed += r.usage.disk_bytes;
            continue;
        }
        match remove_entry(&r.path) {
            Ok(true) => {
                outln!("removed {}: {}, {size}", rel(&r.path), r.what);
                freed += r.usage.disk_bytes;
            }
            // Removed by someone else meanwhile: nothing for us to free.
            Ok(false) => {}
            Err(e) => {
                eprintln!("sbxrun: {}", chain(&e));
                failed = true;
            }
        }
    }
    for k in &plan.keep {
        outln!("kept {}: {}", rel(&k.path), k.why);
    }
    if plan.remove.is_empty() {
        outln!("nothing to remove");
    }
    let verb = if args.dry_run { "would free" } else { "freed" };
    outln!("{verb} {}", format_bytes(freed));
    if scope == CleanScope::All && !inv.assets.is_empty() {
        let verb = if args.dry_run {
            "would be removed"
        } else {
            "removed"
        };
        outln!("guest assets {verb}: `make assets` rebuilds them");
    }
    // Each entry that could not be removed was reported above; the others
    // are gone, so this is the command's answer rather than one error.
    Ok(if failed { EXIT_INFRA } else { EXIT_OK })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn entry(key: &str, state: SnapshotState) -> SnapshotEntry {
        SnapshotEntry {
            name: key.into(),
            key: key.into(),
            path: PathBuf::from("/c/snapshots").join(key),
            state,
            format: Some("3.0".into()),
            memory_mib: Some(512),
            vcpus: Some(1),
            created_unix: Some(1_000),
            usage: Usage {
                apparent_bytes: 512 << 20,
                disk_bytes: 21 << 20,
            },
        }
    }

    #[test]
    fn listing_shows_one_line_per_snapshot_and_the_totals() {
        let inv = Inventory {
            cache: "/c".into(),
            snapshots: vec![
                entry("6832265392ccaaaad3844e58", SnapshotState::Usable),
                entry(
                    "b2d58f7b2b31c5a4646e604c",
                    SnapshotState::Stale {
                        format: "2.0".into(),
                    },
                ),
            ],
            assets: vec![AssetEntry {
                name: "kernel".into(),
                path: "/c/kernel".into(),
                usage: Usage {
                    apparent_bytes: 30 << 20,
                    disk_bytes: 30 << 20,
                },
            }],
            scratch: vec![],
        };
        let text = render_ls(&inv, 1_000 + 7200);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cache: /c");
        assert!(lines[2].starts_with("6832265392cc  3.0       512 MiB      1    2h"));
        assert!(
            lines[2].ends_with("512.0 MiB    21.0 MiB  ok"),
            "{}",
            lines[2]
        );
        assert!(lines[3].ends_with("stale (format 2.0)"), "{}", lines[3]);
        assert_eq!(
            lines[4],
            "total: 2 snapshots, 1.0 GiB apparent, 42.0 MiB on disk \
             (1 usable, 1 stale or damaged, 0 building)"
        );
        assert_eq!(lines[5], "guest assets: 30.0 MiB on disk in kernel/");
        assert_eq!(
            lines[6],
            "scratch: 0 B on disk in run/ (0 directories, 0 in use)"
        );
    }
}
