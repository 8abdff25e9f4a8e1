//! A step instance's cache key: everything that can change its result,
//! part by part. Inputs count by content (what `artifacts::pack_inputs`
//! would put on the input disk), never by path or time, so a checkout in
//! another directory or a touched file still hits.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sbxrun_stepcache::{sha256_hex, CacheKey, DigestMemo, KeyBuilder, LocalStore};
use serde_json::json;

use super::attempt::artifact_dir;
use super::StepImage;
use crate::artifacts::walk;
use crate::manifest::output_covers;
use crate::plan::{Command, Instance, Plan, PlannedInput};

/// File digests without reading what was read before: this run's
/// recorded artifact digests first, then the memo of earlier runs.
pub(super) struct FileDigests<'a> {
    pub memo: &'a DigestMemo,
    /// Output files this run unpacked or restored, by absolute path.
    pub produced: &'a Mutex<HashMap<PathBuf, String>>,
}

impl FileDigests<'_> {
    fn file(&self, path: &Path, meta: &fs::Metadata) -> Result<String, String> {
        if let Some(sha) = self.produced.lock().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(sha);
        }
        self.memo
            .digest(path, meta)
            .map(|(sha, _)| sha)
            .map_err(|e| crate::errors::chain(&e))
    }

    /// The content of a host path or artifact directory as packing would
    /// see it: `filter` keeps only what a producer input's `path` takes.
    pub fn tree(&self, root: &Path, filter: Option<&str>) -> Result<String, String> {
        let meta = match fs::metadata(root) {
            Ok(m) => m,
            // Packing fails on it; the attempt says so, and is not stored.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok("absent".into()),
            Err(e) => return Err(format!("cannot read {}: {e}", root.display())),
        };
        let mode = |m: &fs::Metadata| m.permissions().mode() & 0o777;
        if !meta.is_dir() {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sha = self.file(root, &meta)?;
            return Ok(sha256_hex(
                json!([name, mode(&meta), sha]).to_string().as_bytes(),
            ));
        }
        let found = walk(root).map_err(|e| crate::errors::chain(&e))?;
        let mut entries = Vec::with_capacity(found.len());
        for f in found {
            if let Some(filter) = filter {
                if f.meta.is_dir() || !output_covers(filter, &f.rel) {
                    continue;
                }
            }
            let entry = if f.meta.file_type().is_symlink() {
                let target = fs::read_link(&f.path)
                    .map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
                json!([f.rel, "l", target.to_string_lossy()])
            } else if f.meta.is_dir() {
                json!([f.rel, "d", mode(&f.meta)])
            } else if f.meta.is_file() {
                json!([f.rel, "f", mode(&f.meta), self.file(&f.path, &f.meta)?])
            } else {
                // Packing skips sockets, FIFOs and devices too.
                continue;
            };
            entries.push(entry);
        }
        Ok(sha256_hex(
            serde_json::Value::Array(entries).to_string().as_bytes(),
        ))
    }
}

/// What the key of one instance is computed from, besides the instance.
pub(super) struct KeyContext<'a> {
    pub plan: &'a Plan,
    pub run_dir: &'a Path,
    /// The guest kernel and initramfs every VM boots.
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub store: &'a LocalStore,
    pub files: FileDigests<'a>,
}

fn command_json(command: &Command) -> serde_json::Value {
    match command {
        Command::Shell(script) => json!({ "shell": script }),
        Command::Exec(argv) => json!({ "exec": argv }),
        Command::ImageDefault => json!("image-default"),
    }
}

/// The key of `inst` booting `image`.
pub(super) fn compute(
    ctx: &KeyContext<'_>,
    inst: &Instance,
    image: &StepImage,
) -> Result<CacheKey, String> {
    let s = &inst.settings;
    let mut key = KeyBuilder::new();
    key.part("sbxrun", &env!("CARGO_PKG_VERSION"));
    for (name, path) in [("kernel", ctx.kernel), ("initramfs", ctx.initramfs)] {
        let meta =
            fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        key.part_digest(name, &ctx.files.file(path, &meta)?);
    }
    // A container image by its manifest digest (what the tag resolved to);
    // anything else by the content of the ext4 file that boots.
    match &image.digest {
        Some(digest) => key.part("image", digest),
        None => {
            let meta = fs::metadata(&image.ext4)
                .map_err(|e| format!("cannot read {}: {e}", image.ext4.display()))?;
            key.part_digest("image", &ctx.files.file(&image.ext4, &meta)?)
        }
    };
    key.part(
        "shape",
        &json!({ "vcpus": s.vcpus, "memory": s.memory.0, "disk": s.disk.0 }),
    );
    key.part("command", &command_json(&inst.command));
    key.part(
        "outputs",
        &json!({ "outputs": inst.outputs, "junit": inst.junit }),
    );
    key.part("env", &inst.env);
    key.part("matrix", &inst.matrix);
    key.part("user", &json!({ "user": s.user, "given": s.user_given }));
    key.part(
        "limits",
        &json!([s.pids, s.open_files, s.output.0, s.file_size.0]),
    );
    key.part("timeout", &(s.timeout.0.as_millis() as u64));
    // Parts only for what a step sets, so keys of steps without them stay
    // what they were before these settings existed.
    if s.cpu_time.is_some() || s.memory_limit.is_some() {
        key.part(
            "grading limits",
            &json!({
                "cpu_time_ms": s.cpu_time.map(|t| t.0.as_millis() as u64),
                "memory": s.memory_limit.map(|m| m.0),
            }),
        );
    }
    if let Some(stdin) = &inst.stdin {
        key.part("stdin", stdin);
    }
    if let Some(expect) = &inst.expect {
        let meta = fs::metadata(&expect.path)
            .map_err(|e| format!("cannot read {}: {e}", expect.path.display()))?;
        key.part(
            "expect",
            &json!({
                "stdout": ctx.files.file(&expect.path, &meta)?,
                "compare": expect.compare.as_str(),
            }),
        );
    }
    key.part(
        "egress",
        &json!({
            "policy": super::policy::egress_policy(&s.egress),
            "on_violation": s.on_violation,
        }),
    );
    // Names and a salted digest of each value: a changed secret reruns the
    // step, and the report never carries anything that reveals it.
    let secrets: Vec<_> = inst
        .secrets
        .iter()
        .map(|name| {
            let value =
                std::env::var_os(name).map(|v| ctx.store.secret_digest(v.as_encoded_bytes()));
            json!([name, value])
        })
        .collect();
    key.part("secrets", &secrets);
    let mut inputs = Vec::with_capacity(inst.inputs.len());
    for input in &inst.inputs {
        inputs.push(match input {
            PlannedInput::Host { path, to } => {
                json!({ "host": ctx.files.tree(path, None)?, "to": to })
            }
            PlannedInput::Step {
                step,
                from,
                path,
                to,
            } => {
                let mut produced = Vec::with_capacity(from.len());
                for id in from {
                    let dir = artifact_dir(ctx.run_dir, &ctx.plan.instance(*id).name);
                    produced.push(ctx.files.tree(&dir, path.as_deref())?);
                }
                json!({ "step": step.as_str(), "outputs": produced, "path": path, "to": to })
            }
        });
    }
    key.part("inputs", &inputs);
    Ok(key.finish())
}

#[cfg(test)]
#[path = "cache_key_tests.rs"]
mod tests;
