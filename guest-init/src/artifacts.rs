//! Artifacts inside the guest: the host's tar stream on the input disk is
//! unpacked into the step's working directory before the command runs, and
//! the declared outputs are packed as a tar stream onto the output disk
//! after it ends. Guest syscalls and guest kernel copies are slow on some
//! hosts, so both disks are read and written directly (see `direct`), in
//! large chunks, and only what was asked for is walked.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use guest_init::proto::{PackSummary, INPUT_DISK, OUTPUT_DISK};

use crate::direct::{DirectReader, DirectWriter};
use crate::sys;

/// Buffer size for disk I/O: one syscall per MiB.
const IO_BUF: usize = 1 << 20;

/// Unpacks the input disk's archive, `len` bytes long when the host says,
/// into `work`. Ownership and modes come from the headers the host wrote
/// (the step's user), so nothing has to be walked again afterwards.
pub fn unpack_inputs(work: &Path, len: Option<u64>) -> io::Result<()> {
    match len {
        Some(len) => unpack(work, DirectReader::open(Path::new(INPUT_DISK), len)?),
        None => unpack(
            work,
            BufReader::with_capacity(IO_BUF, File::open(INPUT_DISK)?),
        ),
    }
}

/// Unpacks with one or two syscalls an entry, every name resolved from the
/// working directory's descriptor. A general tar extractor canonicalizes
/// each path, walks it from `/` and sets times: for one 5-byte file that was
/// 170 ms of emulated guest kernel work on kvm-pvm hosts. The archive is the
/// host's (the guest's authority): directories, regular files and symlinks,
/// each parent before its children, owned by the step's user, with mtime 0
/// (not applied: a file's time is when the step received it). Anything else
/// is refused rather than trusted.
fn unpack(work: &Path, from: impl io::Read) -> io::Result<()> {
    fs::create_dir_all(work)?;
    let dir = sys::open_dir(&os_cstr(work.as_os_str())?)?;
    let mut archive = tar::Archive::new(from);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()? & 0o7777;
        let owner = (id(header.uid()?)?, id(header.gid()?)?);
        let name = relative_name(&entry.path()?)?;
        match kind {
            tar::EntryType::Directory => {
                let created = sys::mkdir_at(&dir, &name, mode)?;
                sys::chown_at(&dir, &name, owner.0, owner.1)?;
                if !created || mode & (sys::UMASK | 0o7000) != 0 {
                    sys::chmod_at(&dir, &name, mode)?;
                }
            }
            tar::EntryType::Regular => {
                let (mut file, created) = sys::create_file_at(&dir, &name, mode)?;
                io::copy(&mut entry, &mut file)?;
                std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))?;
                // chown clears set-id bits, so they are set after it.
                if !created || mode & (sys::UMASK | 0o7000) != 0 {
                    file.set_permissions(fs::Permissions::from_mode(mode))?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| bad_entry(&name, "no target"))?;
                let target = os_cstr(target.as_os_str())?;
                if let Err(e) = sys::symlink_at(&target, &dir, &name) {
                    // Overlapping inputs: the later one wins, as for files.
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                    fs::remove_file(work.join(std::ffi::OsStr::from_bytes(name.to_bytes())))?;
                    sys::symlink_at(&target, &dir, &name)?;
                }
                sys::chown_at(&dir, &name, owner.0, owner.1)?;
            }
            _ => return Err(bad_entry(&name, "an entry type the host never writes")),
        }
    }
    Ok(())
}

fn bad_entry(name: &CStr, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("input archive entry {name:?}: {why}"),
    )
}

fn id(raw: u64) -> io::Result<u32> {
    u32::try_from(raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "owner id out of range"))
}

fn os_cstr(s: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// An entry's path as a name relative to the working directory: no root, no
/// `..`, `.` components dropped.
fn relative_name(path: &Path) -> io::Result<CString> {
    let mut rel = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("input archive entry {path:?} leaves the working directory"),
                ))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "input archive entry with an empty name",
        ));
    }
    os_cstr(rel.as_os_str())
}

/// Counts what goes through to the disk.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs what `patterns` match under `work` onto the output disk. On error
/// the summary says `failed` and the error is returned for the step's
/// stderr; the host then rejects the disk.
pub fn pack_outputs(work: &Path, patterns: &[String]) -> (PackSummary, Option<io::Error>) {
    let started = Instant::now();
    let mut summary = PackSummary::default();
    let result = pack(work, patterns, &mut summary);
    summary.pack_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(()) => (summary, None),
        Err(e) => {
            summary.failed = true;
            (summary, Some(e))
        }
    }
}

fn pack(work: &Path, patterns: &[String], summary: &mut PackSummary) -> io::Result<()> {
    let mut matched: BTreeSet<PathBuf> = BTreeSet::new();
    for p in patterns {
        matched.extend(expand(work, p)?);
    }
    // A path under one already packed would be packed twice.
    let roots: Vec<&PathBuf> = matched
        .iter()
        .filter(|p| !p.ancestors().skip(1).any(|a| matched.contains(a)))
        .collect();
    if roots.is_empty() {
        // Nothing to hand back: the disk stays as the step left it (all
        // zeros, an empty archive, unless the step wrote it itself; the
        // host validates whatever is there).
        return Ok(());
    }
    let counting = Counting {
        inner: DirectWriter::open(Path::new(OUTPUT_DISK))?,
        bytes: 0,
    };
    let mut builder = tar::Builder::new(counting);
    builder.follow_symlinks(false);
    for rel in roots {
        let abs = work.join(rel);
        if fs::symlink_metadata(&abs)?.is_dir() {
            builder.append_dir_all(rel, &abs)?;
        } else {
            builder.append_path_with_name(&abs, rel)?;
        }
        summary.entries += 1;
    }
    let counting = builder.into_inner()?;
    summary.bytes = counting.bytes;
    counting.inner.finish()
}

/// Paths under `work` (relative) matching one output pattern. Literal
/// segments are looked up directly; `*` and `?` segments list one directory.
/// A pattern matching nothing yields nothing (the host notes it).
fn expand(work: &Path, pattern: &str) -> io::Result<Vec<PathBuf>> {
    let mut found = vec![PathBuf::new()];
    for comp in Path::new(pattern).components() {
        let seg = match comp {
            Component::Normal(s) => s.to_string_lossy().into_owned(),
            Component::CurDir => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("output `{pattern}` leaves the working directory"),
                ))
            }
        };
        let mut next = Vec::new();
        for base in &found {
            if !seg.contains(['*', '?']) {
                let candidate = base.join(&seg);
                if fs::symlink_metadata(work.join(&candidate)).is_ok() {
                    next.push(candidate);
                }
                continue;
            }
            let Ok(entries) = fs::read_dir(work.join(base)) else {
                continue;
            };
            for e in entries {
                let name = e?.file_name();
                if matches(&seg, &name.to_string_lossy()) {
                    next.push(base.join(name));
                }
            }
        }
        found = next;
    }
    found.retain(|p| !p.as_os_str().is_empty());
    Ok(found)
}

/// Glob match of one path segment: `*` any run of characters, `?` one.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_globs_match_like_the_shell() {
        assert!(matches("*", "a.txt"));
        assert!(matches("*.txt", "a.txt"));
        assert!(matches("a?c", "abc"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("*.txt", "a.txt.gz"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("sums-*", "sums-"));
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(size);
        h
    }

    /// An archive of the shape the host writes: parents first, then a file,
    /// an executable, a set-gid file and a symlink, all owned by uid 1000.
    fn host_archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = header(tar::EntryType::Directory, 0o750, 0);
        b.append_data(&mut dir, "data/", io::empty()).unwrap();
        for (path, mode, body) in [
            ("data/in.txt", 0o644, &b"hello"[..]),
            ("data/run.sh", 0o755, b"#!/bin/sh\n"),
            ("data/shared", 0o2775, b"x"),
        ] {
            let mut h = header(tar::EntryType::Regular, mode, body.len() as u64);
            b.append_data(&mut h, path, body).unwrap();
        }
        let mut link = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut link, "data/link", "in.txt").unwrap();
        b.into_inner().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gi-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn unpacking_keeps_contents_modes_owners_and_links() {
        use std::os::unix::fs::MetadataExt;
        let work = scratch("ok");
        unpack(&work, &host_archive()[..]).unwrap();
        assert_eq!(fs::read(work.join("data/in.txt")).unwrap(), b"hello");
        let mode = |p: &str| fs::symlink_metadata(work.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("data"), 0o750);
        assert_eq!(mode("data/in.txt"), 0o644);
        assert_eq!(mode("data/run.sh"), 0o755);
        // Only root can give a file away; the owner is checked where it can be.
        if running_as_root() {
            assert_eq!(mode("data/shared"), 0o2775);
            for p in ["data", "data/in.txt", "data/link"] {
                let m = fs::symlink_metadata(work.join(p)).unwrap();
                assert_eq!((m.uid(), m.gid()), (1000, 1000), "{p}");
            }
        }
        assert_eq!(
            fs::read_link(work.join("data/link")).unwrap(),
            Path::new("in.txt")
        );
        // A second unpack over the first (overlapping inputs) replaces files.
        unpack(&work, &host_archive()[..]).unwrap();
        assert_eq!(fs::read(work.join("data/in.txt")).unwrap(), b"hello");
        fs::remove_dir_all(&work).unwrap();
    }

    fn running_as_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
    }

    #[test]
    fn unpacking_refuses_entries_the_host_never_writes() {
        let escape = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = header(tar::EntryType::Regular, 0o644, 1);
            // set_path refuses `..`, so the name goes into the header raw.
            h.as_old_mut().name[..6].copy_from_slice(b"../out");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let hardlink = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut h, "b", "a").unwrap();
            b.into_inner().unwrap()
        };
        for (name, archive) in [("escape", escape), ("hardlink", hardlink)] {
            let work = scratch(name);
            let err = unpack(&work, &archive[..]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
            assert!(!work.parent().unwrap().join("out").exists());
            fs::remove_dir_all(&work).unwrap();
        }
    }

    #[test]
    fn patterns_expand_literals_and_globs_relative_to_work() {
        let dir = std::env::temp_dir().join(format!("gi-art-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("out/sub")).unwrap();
        for f in ["out/a.txt", "out/b.log", "out/sub/c.txt", "top"] {
            fs::write(dir.join(f), f).unwrap();
        }
        let mut got = expand(&dir, "out/*.txt").unwrap();
        got.sort();
        assert_eq!(got, [PathBuf::from("out/a.txt")]);
        assert_eq!(expand(&dir, "out/").unwrap(), [PathBuf::from("out")]);
        assert_eq!(expand(&dir, "./top").unwrap(), [PathBuf::from("top")]);
        assert!(expand(&dir, "missing/*").unwrap().is_empty());
        assert!(expand(&dir, "../x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
