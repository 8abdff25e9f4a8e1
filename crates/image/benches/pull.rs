//! Pull + convert of a ~100 MB image from a registry on 127.0.0.1, next to
//! `skopeo copy` + `umoci unpack` of the same image in the same run.
//! Prints a markdown table; asserts nothing.
//!
//! The image: the Debian bookworm + python3 layout that
//! `guest/image/build-python-oci.sh` builds (two gzip layers: the Debian root,
//! ~53 MB compressed / ~170 MB unpacked, and a tiny /opt/example layer),
//! copied into a temporary layout with a generated layer put between them:
//! `SBXRUN_BENCH_IMAGE_NOISE_MB` (default 50) MiB of deterministic
//! pseudo-random bytes (splitmix64) in 2 MiB files under /opt/bench-data,
//! gzip level 6 (incompressible, so it stays ~50 MB). Three layers then,
//! ~106 MB compressed, ~220 MB unpacked; the top one stays tiny, so a "top
//! layer changed" pull moves only that layer. Tags pushed to the registry:
//! `v1` (the script's top layer) and `warm-<i>` (a regenerated top layer per
//! warm run, each different, so every warm run really misses its top layer).
//!
//! Rows (each figure the median over `SBXRUN_BENCH_IMAGE_RUNS` runs, default 3,
//! each column's median taken on its own; each run is one pass over every
//! row, so load from other work spreads over all rows; "CPU s" is this
//! process plus the children it waited for, so wall ≫ CPU means waiting for
//! the disk, the registry or a core):
//! 1. cold: an empty cache → `resolve` (all blobs + apply + ext4). Pull time
//!    is start → first `Event::Applying` (manifest + every blob downloaded,
//!    hashed and written); apply is first `Applying` → `Event::BuildingExt4`
//!    (layers unpacked to a tree); ext4 is `BuildingExt4` → return
//!    (mkfs.ext4 -d + the debugfs pass + persist).
//! 2. warm: a cache holding `v1` → `resolve` of `warm-<i>`, whose top layer
//!    is new: fetched bytes are `Event::Manifest { missing_bytes }`; apply and
//!    ext4 are redone in full (an image is built per manifest digest).
//! 3. cached: `resolve` of `v1` again with `PullPolicy::Missing` (no network),
//!    and with `PullPolicy::Always` (one manifest request, then the cache).
//! 4. `skopeo copy docker://… oci:DIR:v1` then `umoci unpack --image DIR:v1
//!    BUNDLE`, fresh DIR and BUNDLE per run.
//!    umoci makes a directory tree (plus its mtree manifest), not an ext4
//!    file: compare it with sbxrun's pull + apply.
//!
//! What the figures depend on: the host disk (the registry's storage, the
//! caches and the bundles all live in the temp dir; the registry's blobs were
//! just pushed, so it serves them from the page cache; the temp dir's
//! filesystem is synced before each timed step, untimed, but a step's own
//! writes stay write-back, never synced inside the timing), gzip
//! decompression speed (flate2's miniz_oxide backend for sbxrun, Go for
//! umoci; the "gunzip" row measures flate2 alone), sha256 speed, 2 cores
//! shared with whatever else the machine runs (the load average is printed),
//! and no network beyond loopback: MB/s is what one host moves through its
//! own TCP stack, not what a real registry over a real link gives.

#[path = "../tests/common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sbxrun_image::{resolve, Event, Options, Progress, PullPolicy};
use serde_json::{json, Value};

const REPO: &str = "bench/python";
const MTIME: u64 = 1_700_000_000;
const GZIP_MEDIA: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

// ---------------------------------------------------------------- the image

/// A layer blob: gzip bytes, digest, and the digest of its tar (diff_id).
struct Blob {
    gz: Vec<u8>,
    digest: String,
    diff_id: String,
}

fn layer_of(tar: &[u8]) -> Blob {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar).unwrap();
    let gz = gz.finish().unwrap();
    Blob {
        digest: common::sha(&gz),
        diff_id: common::sha(tar),
        gz,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// `mib` MiB of splitmix64 output in 2 MiB files under opt/bench-data.
fn noise_layer(mib: usize) -> Blob {
    let mut state: u64 = 0x5b1c_0de5_eed0_0001;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut b = tar::Builder::new(Vec::with_capacity((mib << 20) + (1 << 20)));
    append_dir(&mut b, "opt/");
    append_dir(&mut b, "opt/bench-data/");
    let file_bytes = 2usize << 20;
    let mut left = mib << 20;
    let mut i = 0;
    while left > 0 {
        let n = left.min(file_bytes);
        let mut data = Vec::with_capacity(n);
        while data.len() < n {
            data.extend_from_slice(&next().to_le_bytes());
        }
        data.truncate(n);
        append_file(&mut b, &format!("opt/bench-data/blob-{i:03}.bin"), &data);
        left -= n;
        i += 1;
    }
    layer_of(&b.into_inner().unwrap())
}

/// A replacement for the script's top layer, different for each `stamp`.
fn top_layer(stamp: &str) -> Blob {
    let mut b = tar::Builder::new(Vec::new());
    append_dir(&mut b, "opt/");
    append_dir(&mut b, "opt/example/");
    let py = format!(
        "import platform\nprint(f\"hello from python {{platform.python_version()}} in an sbxrun microVM ({stamp})\")\n"
    );
    append_file(&mut b, "opt/example/hello.py", py.as_bytes());
    layer_of(&b.into_inner().unwrap())
}

/// The layout the bench pushes, and what each tag is made of.
struct Layout {
    dir: tempfile::TempDir,
    manifest: Value,
    config: Value,
    base: (Value, String),
    noise: (Value, String),
    index: Vec<Value>,
}

impl Layout {
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(&digest[7..])
    }

    fn put(&self, bytes: &[u8]) -> String {
        let d = common::sha(bytes);
        fs::write(self.blob_path(&d), bytes).unwrap();
        d
    }

    /// Adds image `tag`: base, noise, then `top` (descriptor, diff_id).
    /// Returns the compressed bytes of its blobs (config and layers).
    fn add(&mut self, tag: &str, top: (Value, String)) -> u64 {
        let layers = vec![self.base.0.clone(), self.noise.0.clone(), top.0];
        let diff_ids = [self.base.1.clone(), self.noise.1.clone(), top.1];
        let mut config = self.config.clone();
        config["rootfs"]["diff_ids"] = json!(diff_ids);
        let config = serde_json::to_vec(&config).unwrap();
        let cd = self.put(&config);
        let mut manifest = self.manifest.clone();
        manifest["config"] = json!({
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cd, "size": config.len(),
        });
        let bytes = config.len() as u64
            + layers
                .iter()
                .map(|l| l["size"].as_u64().unwrap())
                .sum::<u64>();
        manifest["layers"] = Value::Array(layers);
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let md = self.put(&manifest);
        self.index.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.index,
        });
        fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        bytes
    }

    fn add_layer(&self, blob: &Blob) -> (Value, String) {
        fs::write(self.blob_path(&blob.digest), &blob.gz).unwrap();
        (
            json!({"mediaType": GZIP_MEDIA, "digest": blob.digest, "size": blob.gz.len()}),
            blob.diff_id.clone(),
        )
    }
}

/// The script's layout, as (dir, manifest, config).
fn python_layout() -> (PathBuf, Value, Value) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/image/build-python-oci.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let dir = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    let read =
        |rel: &str| -> Value { serde_json::from_slice(&fs::read(dir.join(rel)).unwrap()).unwrap() };
    let index = read("index.json");
    let md = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = read(&format!("blobs/sha256/{}", &md[7..]));
    let cd = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let config = read(&format!("blobs/sha256/{}", &cd[7..]));
    (dir, manifest, config)
}

/// The bench's layout with tag `v1` and `warm-0..runs`; the bytes of `v1`.
fn build_layout(noise_mib: usize, runs: usize) -> (Layout, u64, Vec<PathBuf>) {
    let (src, manifest, config) = python_layout();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
    fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap().clone();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 2, "build-python-oci.sh layout changed shape");
    let mut layer_files = Vec::new();
    for l in &layers {
        let d = l["digest"].as_str().unwrap();
        let from = src.join("blobs/sha256").join(&d[7..]);
        let to = dir.path().join("blobs/sha256").join(&d[7..]);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).unwrap();
        }
    }
    let noise = noise_layer(noise_mib);
    let mut layout = Layout {
        dir,
        manifest,
        config,
        base: (layers[0].clone(), diff_ids[0].as_str().unwrap().to_owned()),
        noise: (Value::Null, String::new()),
        index: Vec::new(),
    };
    layout.noise = layout.add_layer(&noise);
    drop(noise);
    let script_top = (layers[1].clone(), diff_ids[1].as_str().unwrap().to_owned());
    let v1 = layout.add("v1", script_top.clone());
    for l in [&layout.base.0, &layout.noise.0, &script_top.0] {
        layer_files.push(layout.blob_path(l["digest"].as_str().unwrap()));
    }
    for i in 0..runs {
        let top = layout.add_layer(&top_layer(&format!("warm-{i}")));
        layout.add(&format!("warm-{i}"), top);
    }
    (layout, v1, layer_files)
}

// ---------------------------------------------------------------- measuring

#[derive(Default)]
struct Marks {
    missing: Option<u64>,
    first_apply: Option<Instant>,
    ext4: Option<Instant>,
    blobs: HashMap<String, u64>,
}

struct Recorder {
    start: Instant,
    marks: RefCell<Marks>,
}

impl Progress for Recorder {
    fn event(&self, e: &Event) {
        let mut m = self.marks.borrow_mut();
        match e {
            Event::Manifest { missing_bytes, .. } => m.missing = Some(*missing_bytes),
            Event::BlobStart { digest, size, .. } => {
                m.blobs.insert(digest.clone(), *size);
            }
            Event::Applying { .. } if m.first_apply.is_none() => {
                m.first_apply = Some(Instant::now());
            }
            Event::BuildingExt4 => m.ext4 = Some(Instant::now()),
            _ => {}
        }
    }
}

/// One run of one row; seconds, and bytes fetched.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    /// CPU seconds of this process and the children it waited for
    /// (mkfs.ext4, debugfs, skopeo, umoci); not the registry's.
    cpu: f64,
    pull: Option<f64>,
    apply: Option<f64>,
    ext4: Option<f64>,
    fetched: Option<u64>,
}

/// CPU seconds (user + system) of this process and its reaped children.
fn cpu_now() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Fields 14..=17 (utime stime cutime cstime) are 12..=15 after `) `.
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Flushes the temp dir's filesystem so each timed step starts with no
/// dirty pages left by the one before (untimed).
fn settle() {
    let _ = Command::new("sync")
        .arg("--file-system")
        .arg(std::env::temp_dir())
        .status();
}

fn timed_resolve(name: &str, options: &Options) -> Sample {
    let cpu = cpu_now();
    let rec = Recorder {
        start: Instant::now(),
        marks: RefCell::default(),
    };
    resolve(name, options, &rec).unwrap_or_else(|e| panic!("resolve {name}: {e}"));
    let end = Instant::now();
    let m = rec.marks.into_inner();
    let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    Sample {
        wall: secs(rec.start, end),
        cpu: cpu_now() - cpu,
        pull: m.first_apply.map(|t| secs(rec.start, t)),
        apply: m.first_apply.zip(m.ext4).map(|(a, b)| secs(a, b)),
        ext4: m.ext4.map(|t| secs(t, end)),
        fetched: m.missing.or(Some(m.blobs.values().sum())),
    }
}

fn run_tool(what: &str, cmd: &mut Command) -> Sample {
    let cpu = cpu_now();
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Sample {
        wall,
        cpu: cpu_now() - cpu,
        ..Sample::default()
    }
}

/// Gunzips each layer file to nowhere (page cache → flate2 → sink).
fn gunzip(files: &[PathBuf]) -> Sample {
    let cpu = cpu_now();
    let start = Instant::now();
    let mut bytes = 0;
    for f in files {
        let file = fs::File::open(f).unwrap();
        bytes += file.metadata().unwrap().len();
        let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
        let mut buf = vec![0u8; 1 << 20];
        while gz.read(&mut buf).unwrap() > 0 {}
    }
    Sample {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu_now() - cpu,
        fetched: Some(bytes),
        ..Sample::default()
    }
}

// ---------------------------------------------------------------- reporting

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn row(label: &str, samples: &[Sample], mbps_over_pull: bool) {
    let col = |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().filter_map(f).collect());
    let wall = col(&|s| Some(s.wall));
    let pull = col(&|s| s.pull);
    let fetched = col(&|s| s.fetched.map(|b| b as f64));
    let s = |x: Option<f64>| x.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"));
    let min = samples.iter().map(|s| s.wall).fold(f64::INFINITY, f64::min);
    let max = samples.iter().map(|s| s.wall).fold(0.0, f64::max);
    // A rate over less than a megabyte says nothing.
    let rate = |t: Option<f64>| match (fetched, t) {
        (Some(b), Some(t)) if b >= 1e6 && t > 0.0 => format!("{:.1}", b / 1e6 / t),
        _ => "—".to_owned(),
    };
    let fetched_mb = |b: f64| {
        if b == 0.0 || b >= 1e5 {
            format!("{:.1}", b / 1e6)
        } else {
            format!("{:.4}", b / 1e6)
        }
    };
    print_row(&[
        label.to_owned(),
        samples.len().to_string(),
        s(wall),
        s(col(&|s| Some(s.cpu))),
        format!("{min:.2}–{max:.2}"),
        s(pull),
        s(col(&|s| s.apply)),
        s(col(&|s| s.ext4)),
        fetched.map_or_else(|| "—".to_owned(), fetched_mb),
        rate(wall),
        if mbps_over_pull {
            rate(pull)
        } else {
            "—".to_owned()
        },
    ]);
}

const WIDTHS: [usize; 11] = [44, 4, 6, 5, 12, 6, 7, 6, 8, 9, 9];

fn print_row(cells: &[String]) {
    let mut line = String::from("|");
    for (i, (c, w)) in cells.iter().zip(WIDTHS).enumerate() {
        let pad = w.saturating_sub(c.chars().count());
        if i == 0 {
            line.push_str(&format!(" {c}{} |", " ".repeat(pad)));
        } else {
            line.push_str(&format!(" {}{c} |", " ".repeat(pad)));
        }
    }
    println!("{line}");
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| format!("{cmd}: not found"))
}

/// The filesystem holding `path`, from /proc/mounts (longest prefix).
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {} ({})", f[0], f[1], f[2])))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "unknown".to_owned(), |(_, s)| s)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let runs = knob("SBXRUN_BENCH_IMAGE_RUNS", 3).max(1);
    let noise_mib = knob("SBXRUN_BENCH_IMAGE_NOISE_MB", 50);
    let skopeo = common::require("skopeo");
    let umoci = common::require("umoci");
    let load_start = loadavg();

    let t = Instant::now();
    let (layout, v1_bytes, layer_files) = build_layout(noise_mib, runs);
    let layout_s = t.elapsed().as_secs_f64();
    let reg = common::Registry::start(None);
    let t = Instant::now();
    reg.push(layout.dir.path(), "v1", REPO, None);
    let push_v1_s = t.elapsed().as_secs_f64();
    for i in 0..runs {
        reg.push(layout.dir.path(), &format!("warm-{i}"), REPO, None);
    }
    let name = |tag: &str| format!("{}/{REPO}:{tag}", reg.addr);
    let layer_sizes: Vec<u64> = layer_files
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();

    // One iteration per run, every row in each, so load from other work on
    // the machine spreads over all rows rather than landing on one.
    let (mut cold, mut warm, mut missing, mut always) = (vec![], vec![], vec![], vec![]);
    let (mut sk, mut um, mut both, mut gz) = (vec![], vec![], vec![], vec![]);
    let mut warm_bytes = Vec::new();
    for i in 0..runs {
        let cache = tempfile::tempdir().unwrap();
        let options = Options::new(cache.path());
        settle();
        cold.push(timed_resolve(&name("v1"), &options));
        // Warm: the cache holds v1; warm-<i> has a top layer never seen.
        settle();
        let w = timed_resolve(&name(&format!("warm-{i}")), &options);
        warm_bytes.push(w.fetched.unwrap_or(0));
        warm.push(w);
        // Fully cached.
        missing.push(timed_resolve(&name("v1"), &options));
        let mut a = options.clone();
        a.pull = PullPolicy::Always;
        always.push(timed_resolve(&name("v1"), &a));
        drop(cache);

        let work = tempfile::tempdir().unwrap();
        let oci = work.path().join("oci");
        let bundle = work.path().join("bundle");
        settle();
        let copy = run_tool(
            "skopeo copy",
            Command::new(&skopeo)
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                ])
                .arg(format!("docker://{}", name("v1")))
                .arg(format!("oci:{}:v1", oci.display())),
        );
        settle();
        let unpack = run_tool(
            "umoci unpack",
            Command::new(&umoci)
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:v1", oci.display()))
                .arg(&bundle),
        );
        sk.push(Sample {
            fetched: Some(v1_bytes),
            ..copy
        });
        um.push(unpack);
        both.push(Sample {
            wall: copy.wall + unpack.wall,
            cpu: copy.cpu + unpack.cpu,
            fetched: Some(v1_bytes),
            ..Sample::default()
        });
        drop(work);
        gz.push(gunzip(&layer_files));
    }
    let load_end = loadavg();

    let tmp = std::env::temp_dir();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!("## sbxrun-image pull bench");
    println!();
    println!(
        "Image: Debian bookworm + python3 (guest/image/build-python-oci.sh) + {noise_mib} MiB \
         pseudo-random layer; 3 gzip layers of {}, {:.1} MB with config (v1).",
        layer_sizes
            .iter()
            .map(|b| if *b < 100_000 {
                format!("{b} B")
            } else {
                format!("{:.1} MB", mb(*b))
            })
            .collect::<Vec<_>>()
            .join(" + "),
        mb(v1_bytes),
    );
    println!(
        "Host: {cpu}, {} cores, kernel {}; load average {load_start} at start, {load_end} at end.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
    );
    println!(
        "Disk: {} holds registry storage, caches and bundles ({}).",
        tmp.display(),
        filesystem_of(&tmp)
    );
    println!(
        "Tools: {}; {}; {}; {}.",
        first_line("docker-registry", &["--version"]),
        first_line("skopeo", &["--version"]),
        first_line("umoci", &["--version"]),
        first_line("mke2fs", &["-V"]),
    );
    println!(
        "Setup (not in the table): layout built in {layout_s:.1} s, v1 pushed in {push_v1_s:.1} s."
    );
    println!();
    println!(
        "Figures depend on: the host disk (synced before each timed step, but a step's own \
         writes stay write-back, unsynced; the registry serves just-pushed blobs from the page \
         cache), gzip decompression speed (flate2 in \
         sbxrun, Go in umoci), sha256 speed, 2 cores shared with other work on the machine, and \
         loopback only (no real network: MB/s is what one host moves through its own TCP stack). \
         Seconds and MB (10^6 bytes) are medians of {runs} runs, each column on its own; CPU s \
         counts this process and the children it waited for (mkfs, debugfs, skopeo, umoci), \
         not the registry. pull = \
         start → first layer applied; apply = layers → tree; ext4 = mkfs.ext4 -d + debugfs + \
         persist. umoci unpack makes a directory tree, not an ext4 file: compare skopeo+umoci \
         with sbxrun's pull + apply."
    );
    println!();
    let header = [
        "case",
        "runs",
        "wall s",
        "CPU s",
        "wall min–max",
        "pull s",
        "apply s",
        "ext4 s",
        "fetch MB",
        "MB/s wall",
        "MB/s pull",
    ];
    print_row(&header.map(str::to_owned));
    let rule: String = WIDTHS
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                format!("|{}", "-".repeat(w + 2))
            } else {
                format!("|{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("{rule}|");
    row("sbxrun cold: empty cache → ext4", &cold, true);
    row("sbxrun warm: top layer changed → ext4", &warm, true);
    row("sbxrun cached, PullPolicy::Missing", &missing, false);
    row(
        "sbxrun cached, PullPolicy::Always (manifest)",
        &always,
        false,
    );
    row("skopeo copy docker:// → oci:", &sk, false);
    row("umoci unpack oci: → bundle", &um, false);
    row("skopeo copy + umoci unpack", &both, false);
    row("gunzip all 3 layers, flate2 (page cache)", &gz, false);
    println!();
    println!(
        "Warm runs fetched {} bytes each (config + new top layer; manifest not counted); \
         every warm run still applies all 3 layers and builds a whole ext4 file, since an \
         image is built once per manifest digest.",
        warm_bytes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(layout);
}
