//! Artifacts inside the guest: the host's tar stream on the input disk is
//! unpacked into the step's working directory before the command runs, and
//! the declared outputs are packed as a tar stream onto the output disk
//! after it ends. Guest syscalls and guest kernel copies are slow on some
//! hosts, so both disks are read and written directly (see `direct`), in
//! large chunks, and only what was asked for is walked.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use guest_init::proto::{PackSummary, INPUT_DISK, OUTPUT_DISK};

use crate::direct::{DirectReader, DirectWriter};

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

fn unpack(work: &Path, from: impl io::Read) -> io::Result<()> {
    let mut archive = tar::Archive::new(from);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(work)
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
