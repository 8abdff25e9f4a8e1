//! Applying image layers, in order, to a directory that becomes the root
//! filesystem. A layer is untrusted input: its tar may name `../x` or
//! `/etc/x`, link out of the tree, write through a symlink an earlier layer
//! made, claim terabytes or hold device nodes. So:
//!
//! - entry paths must be relative and free of `..`, else the layer is
//!   refused;
//! - every parent directory is resolved *inside* the tree, following the
//!   image's own symlinks the way the guest will see them (an absolute
//!   target is taken relative to the tree's root, `..` stops at it), and
//!   the entry's own name is never followed: it is removed and created
//!   anew. Nothing is ever written outside the tree;
//! - symlinks are copied as they are (an absolute target is correct inside
//!   the guest and is never followed here); hard links must name an
//!   existing non-directory inside the tree;
//! - device nodes and FIFOs are skipped and counted (the guest mounts its
//!   own `/dev`); other special entries refuse the layer;
//! - file bytes and entries are capped across all layers.
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` removes NAME from lower
//! layers, `.wh..wh..opq` hides everything lower layers put in its
//! directory; neither touches what the same layer adds, whatever the order
//! of entries in the tar.
//!
//! Owners, modes (setuid included; the tree is in a private 0700
//! directory), xattrs (`SCHILY.xattr.*` PAX records) and mtimes are kept,
//! so the ext4 file reflects the image. Directory mtimes are set last,
//! once nothing changes inside them any more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

use fsops::{
    classify, clean_path, io_err, mkdir, pax_xattrs, remove_any, set_owner_mode, set_xattr,
    write_file,
};

/// Caps on what the layers of one image may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Sum of regular file sizes over all layers.
    pub max_bytes: u64,
    /// Entries of any type over all layers.
    pub max_entries: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits {
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Why a layer was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry with a `..` component.
    #[error("entry {0:?} climbs out of the tree with '..'")]
    ParentDir(String),
    /// An entry with an absolute path.
    #[error("entry {0:?} has an absolute path")]
    Absolute(String),
    /// A hard link whose target is not an existing file inside the tree.
    #[error("hard link {path:?} points to {target:?}, which is not a file in the image")]
    BadHardLink { path: String, target: String },
    /// A path whose parent is a file, or a symlink chain that never ends.
    #[error("entry {path:?}: {reason}")]
    BadParent { path: String, reason: &'static str },
    /// A tar entry type that has no place in a root filesystem.
    #[error("entry {path:?} has unsupported type {kind}")]
    Unsupported { path: String, kind: String },
    /// More file bytes than [`LayerLimits::max_bytes`].
    #[error("the image holds more than {} MiB of files", limit >> 20)]
    TooLarge { limit: u64 },
    /// More entries than [`LayerLimits::max_entries`].
    #[error("the image holds more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// The compressed stream or the tar ends early.
    #[error("the layer is truncated ({0})")]
    Truncated(String),
    /// The compressed stream or the tar is malformed.
    #[error("the layer is not a valid {format} stream")]
    Corrupt {
        format: &'static str,
        #[source]
        source: io::Error,
    },
    /// A media type this crate cannot decompress.
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// Writing the tree failed.
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression of a blob: the magic bytes decide when they are there
/// (registries have been seen mislabelling layers), else the media type.
pub fn detect_compression(media_type: &str, head: &[u8]) -> Result<Compression, LayerError> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Compression::Zstd);
    }
    let m = media_type;
    if m.ends_with("tar+gzip") || m.ends_with("tar.gzip") || m.ends_with("tar+zstd") {
        // Labelled compressed but without the magic: let the decoder say so.
        return Ok(if m.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::Gzip
        });
    }
    if m.ends_with(".tar") || m.ends_with("layer.v1.tar") || m.is_empty() {
        return Ok(Compression::None);
    }
    Err(LayerError::MediaType(media_type.to_owned()))
}

/// What applying the layers left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Device nodes and FIFOs that were skipped.
    pub skipped_special: u64,
    /// Whether `/bin/sh` resolves to a file.
    pub has_sh: bool,
}

/// Applies layers to one tree.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    limits: LayerLimits,
    bytes: u64,
    entries: u64,
    skipped_special: u64,
    /// mtime of each directory an entry described, by its real path.
    dir_times: HashMap<PathBuf, FileTime>,
}

/// Paths the current layer wrote, and all their parents.
type Touched = HashSet<PathBuf>;

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";
/// Symlinks followed while resolving one path; Linux uses the same number.
const MAX_HOPS: u32 = 40;

impl Applier {
    /// Starts with `root`, an empty directory.
    pub fn new(root: &Path, limits: LayerLimits) -> Applier {
        Applier {
            root: root.to_owned(),
            limits,
            bytes: 0,
            entries: 0,
            skipped_special: 0,
            dir_times: HashMap::new(),
        }
    }

    /// Applies one layer blob, decompressing it as `media_type` and its
    /// first bytes say. Reads the blob to its end, so a reader that checks
    /// a digest at EOF sees every byte.
    pub fn apply<R: Read>(&mut self, blob: R, media_type: &str) -> Result<(), LayerError> {
        let mut blob = BufReader::with_capacity(256 * 1024, blob);
        let head = blob.fill_buf().map_err(|e| classify("layer", e))?.to_vec();
        match detect_compression(media_type, &head)? {
            Compression::None => self.apply_tar(&mut blob, "tar"),
            Compression::Gzip => {
                self.apply_tar(&mut flate2::bufread::MultiGzDecoder::new(&mut blob), "gzip")
            }
            Compression::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(&mut blob)
                    .map_err(|e| classify("zstd", e))?;
                self.apply_tar(&mut dec, "zstd")
            }
        }?;
        // Whatever follows the decompressed stream still counts for the digest.
        io::copy(&mut blob, &mut io::sink()).map_err(|e| classify("layer", e))?;
        Ok(())
    }

    fn apply_tar(&mut self, stream: &mut dyn Read, format: &'static str) -> Result<(), LayerError> {
        let mut touched = Touched::new();
        let mut opaque = Vec::new();
        {
            let mut archive = tar::Archive::new(&mut *stream);
            let entries = archive.entries().map_err(|e| classify(format, e))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| classify(format, e))?;
                self.entries += 1;
                if self.entries > self.limits.max_entries {
                    return Err(LayerError::TooManyEntries {
                        limit: self.limits.max_entries,
                    });
                }
                self.apply_entry(&mut entry, &mut touched, &mut opaque, format)?;
            }
        }
        // The tar's end marker may come before the compressed stream's end;
        // a stream that is cut short must still be noticed.
        io::copy(stream, &mut io::sink()).map_err(|e| classify(format, e))?;
        // Opaque directories act after the whole layer is known, so the
        // order of entries in the tar does not matter.
        for dir in opaque {
            self.hide_lower(&dir, &touched)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        touched: &mut Touched,
        opaque: &mut Vec<PathBuf>,
        format: &'static str,
    ) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let Some(mut parts) = clean_path(&raw, &shown)? else {
            // The root itself: its metadata is the ext4 builder's to set.
            return Ok(());
        };
        let name = parts.pop().unwrap_or_default();
        if name.as_bytes().starts_with(WHITEOUT) {
            // A whiteout in a directory lower layers never made hides nothing.
            let Ok(parent) = self.resolve(&parts, &shown, false) else {
                return Ok(());
            };
            if name.as_bytes() == OPAQUE {
                opaque.push(parent);
            } else {
                let hidden = &name.as_bytes()[WHITEOUT.len()..];
                let victim = parent.join(OsStr::from_bytes(hidden));
                if !hidden.is_empty() && !touched.contains(&victim) {
                    remove_any(&self.root.join(&victim))?;
                }
            }
            return Ok(());
        }
        let parent = self.resolve(&parts, &shown, true)?;
        let rel = parent.join(&name);
        let target = self.root.join(&rel);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        let gid = header
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0);
        let mtime = FileTime::from_unix_time(
            header.mtime().map_or(0, |t| t.min(i64::MAX as u64) as i64),
            0,
        );
        let xattrs = pax_xattrs(entry);
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        mkdir(&target)?;
                    }
                    Err(_) => mkdir(&target)?,
                }
                self.dir_times.insert(rel.clone(), mtime);
                set_owner_mode(&target, uid, gid, Some(mode))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.max_bytes {
                    return Err(LayerError::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
                remove_any(&target)?;
                write_file(entry, &target, format)?;
                set_owner_mode(&target, uid, gid, Some(mode))?;
                filetime::set_file_times(&target, mtime, mtime)
                    .map_err(io_err("set times of", &target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                if link.is_empty() {
                    return Err(LayerError::Unsupported {
                        path: shown,
                        kind: "symlink without a target".to_owned(),
                    });
                }
                remove_any(&target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(io_err("create symlink", &target))?;
                set_owner_mode(&target, uid, gid, None)?;
                filetime::set_symlink_file_times(&target, mtime, mtime)
                    .map_err(io_err("set times of", &target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let link_shown = String::from_utf8_lossy(&link).into_owned();
                let bad = || LayerError::BadHardLink {
                    path: shown.clone(),
                    target: link_shown.clone(),
                };
                let mut lparts = clean_path(&link, &link_shown)?.ok_or_else(bad)?;
                let lname = lparts.pop().unwrap_or_default();
                let source = self
                    .root
                    .join(self.resolve(&lparts, &link_shown, false)?)
                    .join(lname);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                if source == target {
                    return Ok(());
                }
                remove_any(&target)?;
                fs::hard_link(&source, &target).map_err(io_err("create hard link", &target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.skipped_special += 1;
                return Ok(());
            }
            other => {
                return Err(LayerError::Unsupported {
                    path: shown,
                    kind: format!("{other:?}"),
                })
            }
        }
        for (key, value) in xattrs {
            set_xattr(&target, &key, &value)?;
        }
        let mut p = rel.as_path();
        touched.insert(p.to_owned());
        while let Some(up) = p.parent() {
            touched.insert(up.to_owned());
            p = up;
        }
        Ok(())
    }

    /// The real path (relative to the root) of the directory `parts` name,
    /// following the tree's symlinks inside the root. With `create`,
    /// missing directories are made (root-owned, 0755, as Docker does).
    fn resolve(
        &self,
        parts: &[OsString],
        shown: &str,
        create: bool,
    ) -> Result<PathBuf, LayerError> {
        let mut queue: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut real: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            if part == ".." {
                real.pop();
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let here: PathBuf = real.iter().chain(std::iter::once(&part)).collect();
            let full = self.root.join(&here);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => real.push(part),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(LayerError::BadParent {
                            path: shown.to_owned(),
                            reason: "too many levels of symbolic links",
                        });
                    }
                    let link = fs::read_link(&full).map_err(io_err("read symlink", &full))?;
                    if link.is_absolute() {
                        real.clear();
                    }
                    for c in link.components().rev() {
                        match c {
                            Component::Normal(s) => queue.push_front(s.to_owned()),
                            Component::ParentDir => queue.push_front("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(_) => {
                    return Err(LayerError::BadParent {
                        path: shown.to_owned(),
                        reason: "a parent is not a directory",
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    mkdir(&full)?;
                    real.push(part);
                }
                Err(_) => {
                    return Err(LayerError::BadParent {
                        path: shown.to_owned(),
                        reason: "a parent does not exist",
                    })
                }
            }
        }
        Ok(real.into_iter().collect())
    }

    /// Removes everything under `dir` that the current layer did not write.
    fn hide_lower(&self, dir: &Path, touched: &Touched) -> Result<(), LayerError> {
        let mut stack = vec![dir.to_owned()];
        while let Some(rel) = stack.pop() {
            let full = self.root.join(&rel);
            let Ok(list) = fs::read_dir(&full) else {
                continue;
            };
            for child in list {
                let child = child.map_err(io_err("list", &full))?;
                let crel = rel.join(child.file_name());
                if !touched.contains(&crel) {
                    remove_any(&child.path())?;
                } else if child.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(crel);
                }
            }
        }
        Ok(())
    }

    /// Sets directory mtimes (nothing changes inside them any more) and
    /// says what the tree holds.
    pub fn finish(self) -> Result<TreeStats, LayerError> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let full = self.root.join(&rel);
            for child in fs::read_dir(&full).map_err(io_err("list", &full))? {
                let child = child.map_err(io_err("list", &full))?;
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(rel.join(child.file_name()));
                }
            }
            // Children are only listed here, never changed, so setting the
            // parent's time before its children's is fine.
            let t = self
                .dir_times
                .get(&rel)
                .copied()
                .unwrap_or(FileTime::zero());
            filetime::set_file_times(&full, t, t).map_err(io_err("set times of", &full))?;
        }
        let has_sh = self
            .resolve(&["bin".into()], "bin/sh", false)
            .ok()
            .map(|bin| self.root.join(bin).join("sh"))
            .is_some_and(|sh| self.follow_file(&sh));
        Ok(TreeStats {
            skipped_special: self.skipped_special,
            has_sh,
        })
    }

    /// Whether `path` (inside the root) is a file, following symlinks
    /// inside the root.
    fn follow_file(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return false;
        };
        let parts: Vec<OsString> = rel.iter().map(OsStr::to_owned).collect();
        let mut queue = parts;
        for _ in 0..MAX_HOPS {
            let Some(name) = queue.pop() else {
                return false;
            };
            let Ok(dir) = self.resolve(&queue, "", false) else {
                return false;
            };
            let full = self.root.join(&dir).join(&name);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_file() => return true,
                Ok(m) if m.file_type().is_symlink() => {
                    let Ok(link) = fs::read_link(&full) else {
                        return false;
                    };
                    let mut next: Vec<OsString> = if link.is_absolute() {
                        Vec::new()
                    } else {
                        dir.iter().map(OsStr::to_owned).collect()
                    };
                    for c in link.components() {
                        match c {
                            Component::Normal(s) => next.push(s.to_owned()),
                            Component::ParentDir => next.push("..".into()),
                            _ => {}
                        }
                    }
                    queue = next;
                }
                _ => return false,
            }
        }
        false
    }
}

mod fsops;

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
