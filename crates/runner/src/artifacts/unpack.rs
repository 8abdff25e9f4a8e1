//! Unpacking a step's output disk. The guest wrote it, so every entry is
//! checked before anything lands on the host: relative paths without `..`,
//! only files, directories and symlinks that stay inside, nothing beyond the
//! declared outputs, and caps on total size and entry count. Extraction goes
//! to a staging directory that is renamed into place only when the whole
//! archive passed, so a rejected disk leaves nothing behind.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ArtifactError;
use crate::manifest::output_covers;

/// Caps on what one step may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Sum of file sizes.
    pub max_bytes: u64,
    /// Entries of any type.
    pub max_entries: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// One unpacked file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileDigest {
    /// Path relative to the step's artifact directory (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

/// The result of a successful unpack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Files, sorted by path.
    pub files: Vec<FileDigest>,
    /// Declared outputs no entry matched.
    pub unmatched: Vec<String>,
}

/// Unpacks the tar stream at offset 0 of `disk` into `dest` (which must not
/// exist yet; it is replaced if it does).
pub fn unpack_outputs(
    disk: &Path,
    dest: &Path,
    declared: &[String],
    limits: OutputLimits,
) -> Result<Unpacked, ArtifactError> {
    let file = File::open(disk).map_err(|e| ArtifactError::io("open", disk, e))?;
    // Headers, padding and the end blocks add to the file bytes; the cap on
    // reading keeps a disk of endless headers from being read forever.
    let cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(3 * 512))
        .saturating_add(2048);
    unpack_stream(
        BufReader::with_capacity(1 << 20, file.take(cap)),
        dest,
        declared,
        limits,
    )
}

/// Unpacks a tar stream (see [`unpack_outputs`]).
pub fn unpack_stream<R: Read>(
    reader: R,
    dest: &Path,
    declared: &[String],
    limits: OutputLimits,
) -> Result<Unpacked, ArtifactError> {
    let staging = staging_dir(dest);
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| ArtifactError::io("create", &staging, e))?;
    let result = extract(reader, &staging, declared, limits);
    match result {
        Ok(mut unpacked) => {
            let _ = fs::remove_dir_all(dest);
            fs::rename(&staging, dest).map_err(|e| ArtifactError::io("rename into", dest, e))?;
            unpacked.files.sort_by(|a, b| a.path.cmp(&b.path));
            unpacked.unmatched = declared
                .iter()
                .filter(|d| !unpacked.files.iter().any(|f| output_covers(d, &f.path)))
                .cloned()
                .collect();
            Ok(unpacked)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn staging_dir(dest: &Path) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// An entry's path as `/`-joined normal components, or why it is refused.
fn clean_path(raw: &Path) -> Result<String, ArtifactError> {
    let shown = raw.to_string_lossy().into_owned();
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return Err(ArtifactError::BadPath(shown)),
            },
            Component::CurDir => {}
            Component::ParentDir => return Err(ArtifactError::ParentDir(shown)),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArtifactError::Absolute(shown))
            }
        }
    }
    if parts.is_empty() {
        return Err(ArtifactError::BadPath(shown));
    }
    Ok(parts.join("/"))
}

/// Whether a relative symlink at `link` (a cleaned path) pointing to
/// `target` stays inside the root, resolving `..` lexically.
fn symlink_stays_inside(link: &str, target: &Path) -> bool {
    let mut depth: Vec<&str> = link.split('/').collect();
    depth.pop();
    for c in target.components() {
        match c {
            Component::Normal(s) => depth.push(s.to_str().unwrap_or("")),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether a directory entry at `rel` is a parent of some declared output.
fn is_declared_parent(declared: &[String], rel: &str) -> bool {
    let depth = rel.split('/').count();
    declared.iter().any(|d| {
        let segs: Vec<&str> = d
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        segs.len() > depth && output_covers(&segs[..depth].join("/"), rel)
    })
}

fn extract<R: Read>(
    reader: R,
    root: &Path,
    declared: &[String],
    limits: OutputLimits,
) -> Result<Unpacked, ArtifactError> {
    let mut archive = tar::Archive::new(reader);
    let mut unpacked = Unpacked::default();
    let mut symlinks: HashSet<String> = HashSet::new();
    let mut dirs: HashSet<String> = HashSet::new();
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let entries = archive.entries().map_err(ArtifactError::Archive)?;
    for entry in entries {
        let mut entry = entry.map_err(ArtifactError::Archive)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArtifactError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path().map_err(ArtifactError::Archive)?.into_owned();
        let rel = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        // Nothing may be written through a symlink this archive made.
        let mut prefix = String::new();
        for part in rel.split('/') {
            if !prefix.is_empty() {
                if symlinks.contains(&prefix) {
                    return Err(ArtifactError::ThroughSymlink(rel));
                }
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        let covered = declared.iter().any(|d| output_covers(d, &rel));
        let target = root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                if !covered && !is_declared_parent(declared, &rel) {
                    return Err(ArtifactError::Undeclared(rel));
                }
                if symlinks.contains(&rel) {
                    return Err(ArtifactError::Conflict(rel));
                }
                fs::create_dir_all(&target).map_err(|e| ArtifactError::io("create", &target, e))?;
                dirs.insert(rel);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if !covered {
                    return Err(ArtifactError::Undeclared(rel));
                }
                let size = entry.header().size().map_err(ArtifactError::Archive)?;
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(ArtifactError::TooLarge {
                        limit: limits.max_bytes,
                    });
                }
                prepare_slot(&target, &rel, &dirs, &mut symlinks)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                let (size, sha256) = write_file(&mut entry, &target, mode)?;
                unpacked.files.retain(|f| f.path != rel);
                unpacked.files.push(FileDigest {
                    path: rel,
                    size,
                    sha256,
                });
            }
            tar::EntryType::Symlink => {
                if !covered {
                    return Err(ArtifactError::Undeclared(rel));
                }
                let link = entry
                    .link_name()
                    .map_err(ArtifactError::Archive)?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                if link.as_os_str().is_empty() || !symlink_stays_inside(&rel, &link) {
                    return Err(ArtifactError::SymlinkEscapes {
                        path: rel,
                        target: link.to_string_lossy().into_owned(),
                    });
                }
                prepare_slot(&target, &rel, &dirs, &mut symlinks)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| ArtifactError::io("create symlink", &target, e))?;
                unpacked.files.retain(|f| f.path != rel);
                symlinks.insert(rel);
            }
            tar::EntryType::Link => return Err(ArtifactError::HardLink(rel)),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(ArtifactError::Device(rel))
            }
            other => return Err(ArtifactError::Unsupported(rel, format!("{other:?}"))),
        }
    }
    Ok(unpacked)
}

/// Makes room for a file or symlink at `target`: parents exist, and an
/// earlier file or symlink of the same path is removed (never followed).
fn prepare_slot(
    target: &Path,
    rel: &str,
    dirs: &HashSet<String>,
    symlinks: &mut HashSet<String>,
) -> Result<(), ArtifactError> {
    if dirs.contains(rel) {
        return Err(ArtifactError::Conflict(rel.to_owned()));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| ArtifactError::io("create", parent, e))?;
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => return Err(ArtifactError::Conflict(rel.to_owned())),
        Ok(_) => {
            fs::remove_file(target).map_err(|e| ArtifactError::io("replace", target, e))?;
            symlinks.remove(rel);
        }
        Err(_) => {}
    }
    Ok(())
}

/// Writes one file (created new, so never through a link), returning its
/// size and SHA-256. Setuid/setgid/sticky bits are dropped.
fn write_file(
    src: &mut impl Read,
    target: &Path,
    mode: u32,
) -> Result<(u64, String), ArtifactError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o755 | 0o600)
        .open(target)
        .map_err(|e| ArtifactError::io("create", target, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(ArtifactError::Archive)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ArtifactError::io("write", target, e))?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
