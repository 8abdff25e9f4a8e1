//! `sbxrun image pull|ls|rm|inspect`: the container images sbxrun has
//! pulled and converted, and the options and progress display every
//! command that pulls shares (`run`, `exec`, `image pull`).

use std::path::PathBuf;

use sbxrun_image::{CachedImage, ImageConfig, PullPolicy, Store};
use serde::Serialize;

use super::stdout::{out, outln};
use super::units::{format_age, format_bytes};
use crate::errors::{CliError, CliResult, EXIT_OK};
use sbxrun_runner::assets;
use sbxrun_runner::report::console::LogFormat;

/// The image cache's size cap: past it the least recently used images and
/// then the blobs no image needs are removed after each pull.
const DEFAULT_CACHE_MAX: u64 = 20 << 30;

/// How images are fetched; shared by the commands that pull.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// A registry that may be spoken to over plain HTTP (`host` or
    /// `host:port`); loopback registries always may. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// When to ask the registry what a tag points to: `missing` (only for
    /// images not in the cache), `always`, or `never` (offline).
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: Pull,
}

/// `--pull` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pull {
    Missing,
    Always,
    Never,
}

impl PullArgs {
    /// The options `sbxrun_image::resolve` takes: the cache under sbxrun's
    /// cache directory, these registries and this policy.
    pub fn options(&self) -> sbxrun_image::Options {
        let mut options = sbxrun_image::Options::new(image_cache());
        options.max_cache_bytes = Some(DEFAULT_CACHE_MAX);
        options.insecure_registries = self.insecure_registries.clone();
        options.pull = match self.pull {
            Pull::Missing => PullPolicy::Missing,
            Pull::Always => PullPolicy::Always,
            Pull::Never => PullPolicy::Never,
        };
        options
    }
}

/// Where converted images and their blobs live.
pub fn image_cache() -> PathBuf {
    assets::cache_dir().join("oci")
}

/// Arguments of `sbxrun image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `sbxrun image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Pull (or import) an image and convert it into a bootable root image.
    Pull {
        /// `python:3.12`, `registry:5000/team/img:tag`, `oci:DIR[:tag]`,
        /// `oci-archive:FILE[:tag]` or `docker-archive:FILE`.
        reference: String,
        #[command(flatten)]
        pull: PullArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the images in the cache, most recently used first.
    Ls {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove images (by name, digest, or a digest prefix of 12 or more
    /// hex digits) and the blobs no other image needs.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show an image's digest, size, layers and config.
    Inspect {
        /// A name, digest or digest prefix of a cached image.
        image: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `sbxrun image …`.
pub fn run(args: ImageArgs) -> CliResult {
    match args.command {
        ImageCommand::Pull {
            reference,
            pull,
            json,
        } => pull_image(&reference, &pull, json),
        ImageCommand::Ls { json } => ls(json),
        ImageCommand::Rm { images } => rm(&images),
        ImageCommand::Inspect { image, json } => inspect(&image, json),
    }
}

fn open_store() -> Result<Store, CliError> {
    let dir = image_cache();
    Store::open(&dir).map_err(|e| CliError::Infra(format!("image cache {}: {e}", dir.display())))
}

/// What `pull` and `inspect --json` print about one image.
#[derive(Serialize)]
struct ImageJson<'a> {
    digest: &'a str,
    names: &'a [String],
    ext4: &'a std::path::Path,
    disk_bytes: u64,
    blobs: &'a [String],
    last_used: u64,
    config: &'a ImageConfig,
}

impl<'a> From<&'a CachedImage> for ImageJson<'a> {
    fn from(i: &'a CachedImage) -> Self {
        ImageJson {
            digest: &i.record.manifest_digest,
            names: &i.record.names,
            ext4: &i.ext4,
            disk_bytes: i.disk_bytes,
            blobs: &i.record.blobs,
            last_used: i.record.last_used,
            config: &i.record.config,
        }
    }
}

fn pull_image(reference: &str, args: &PullArgs, json: bool) -> CliResult {
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    // The result is the one line on stdout; progress lines stay on stderr.
    let progress = super::prep::progress(format, super::prep::JsonTo::Stderr);
    let resolved = sbxrun_image::resolve(reference, &args.options(), &progress.of(reference))
        .map_err(|e| CliError::Infra(sbxrun_runner::errors::chain(&e)))?;
    let digest = resolved.manifest_digest.as_deref().unwrap_or("");
    if json {
        let line = serde_json::json!({
            "reference": resolved.reference,
            "canonical": resolved.canonical,
            "digest": digest,
            "ext4": resolved.ext4,
            "pulled": resolved.pulled,
            "config": resolved.config,
        });
        outln!("{line}");
    } else {
        outln!("{} {digest}", resolved.canonical);
    }
    Ok(EXIT_OK)
}

fn ls(json: bool) -> CliResult {
    let store = open_store()?;
    let images = store.list_images();
    if json {
        let list: Vec<ImageJson<'_>> = images.iter().map(ImageJson::from).collect();
        let text = serde_json::to_string_pretty(&list)
            .map_err(|e| CliError::Infra(format!("cannot write the list as JSON: {e}")))?;
        outln!("{text}");
        return Ok(EXIT_OK);
    }
    out!("{}", render_ls(&images, now_unix()));
    outln!("total {}", format_bytes(store.usage()));
    Ok(EXIT_OK)
}

fn render_ls(images: &[CachedImage], now: u64) -> String {
    let mut text = format!(
        "{:<48} {:<19} {:>9} {:>10}\n",
        "NAME", "DIGEST", "SIZE", "LAST USE"
    );
    for image in images {
        let r = &image.record;
        let short = r.manifest_digest.get(..19).unwrap_or(&r.manifest_digest);
        let age = format_age(now.saturating_sub(r.last_used));
        let names = if r.names.is_empty() {
            vec!["<none>".to_owned()]
        } else {
            r.names.clone()
        };
        for name in names {
            text.push_str(&format!(
                "{name:<48} {short:<19} {:>9} {age:>10}\n",
                format_bytes(image.disk_bytes)
            ));
        }
    }
    text
}

fn rm(selectors: &[String]) -> CliResult {
    let store = open_store()?;
    for selector in selectors {
        let removed = store
            .remove_image(&canonical_selector(selector))
            .map_err(|e| CliError::Infra(format!("cannot remove {selector}: {e}")))?;
        if removed.is_empty() {
            return Err(CliError::usage(format!(
                "no cached image is named {selector}; `sbxrun image ls` lists them"
            )));
        }
        for record in removed {
            outln!(
                "removed {} {}",
                record.names.join(", "),
                record.manifest_digest
            );
        }
    }
    Ok(EXIT_OK)
}

fn inspect(selector: &str, json: bool) -> CliResult {
    let store = open_store()?;
    let wanted = canonical_selector(selector);
    let images = store.list_images();
    let image = images
        .iter()
        .find(|i| {
            let r = &i.record;
            let hex = r.manifest_digest.trim_start_matches("sha256:");
            r.manifest_digest == wanted
                || r.names.contains(&wanted)
                || (wanted.len() >= 12 && hex.starts_with(wanted.trim_start_matches("sha256:")))
        })
        .ok_or_else(|| {
            CliError::usage(format!(
                "no cached image is named {selector}; `sbxrun image pull` fetches it"
            ))
        })?;
    let view = ImageJson::from(image);
    if json {
        let text = serde_json::to_string_pretty(&view)
            .map_err(|e| CliError::Infra(format!("cannot write JSON: {e}")))?;
        outln!("{text}");
        return Ok(EXIT_OK);
    }
    let c = view.config;
    outln!("digest      {}", view.digest);
    outln!("names       {}", view.names.join(", "));
    outln!("platform    {}", c.platform);
    outln!(
        "root image  {} ({})",
        view.ext4.display(),
        format_bytes(view.disk_bytes)
    );
    outln!("blobs       {}", view.blobs.len());
    for blob in view.blobs {
        outln!("  {blob}");
    }
    outln!("entrypoint  {:?}", c.entrypoint);
    outln!("cmd         {:?}", c.cmd);
    outln!("workdir     {}", c.working_dir.as_deref().unwrap_or("/"));
    outln!("user        {}", c.user.as_deref().unwrap_or("root"));
    outln!("has /bin/sh {}", c.has_sh);
    for env in &c.env {
        outln!("env         {env}");
    }
    Ok(EXIT_OK)
}

/// A name as the user typed it (`python:3.12`) in the canonical form the
/// store records (`docker.io/library/python:3.12`); digests and anything
/// that is not a registry reference pass through.
fn canonical_selector(selector: &str) -> String {
    if selector.starts_with("sha256:") {
        return selector.to_owned();
    }
    match sbxrun_image::parse_source(selector, |_| false) {
        Ok(source) if !selector.chars().all(|c| c.is_ascii_hexdigit()) => source.canonical(),
        _ => selector.to_owned(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
