//! A directory tree → an ext4 file, byte for byte the same for the same
//! tree and key, on any machine with the same e2fsprogs.
//!
//! `mkfs.ext4 -d` copies the tree; what would vary between two builds is
//! pinned: the superblock and root times (`E2FSPROGS_FAKE_TIME`), the UUID
//! and directory hash seed (derived from the key, the manifest digest), the
//! image size (from the tree), inode order (mke2fs walks each directory in
//! sorted order) and the files' times (the layers set mtime and atime).
//! Two times mke2fs copies from the host cannot be pinned there: each
//! inode's ctime (the time the host file last changed, which nobody can
//! set) and its atime (which reading the tree, mke2fs included, moves
//! under `relatime`). A `debugfs` pass sets both to the fixed time on
//! every used inode afterwards; mtimes stay the layers' own.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The filesystem block size; also what each entry is rounded up to.
const BLOCK: u64 = 4096;
/// Room for metadata (inode tables, group descriptors, directories).
const SIZE_SLACK: u64 = 64 << 20;
/// Fixed filesystem time (superblock, root, lost+found, every ctime); the
/// same value as the runner's default image.
pub const FAKE_TIME: &str = "1700000000";

/// Why an ext4 file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// An e2fsprogs tool is missing.
    #[error("{0} is needed to build an ext4 image; install e2fsprogs (`make test-deps` does)")]
    Missing(&'static str),
    /// A tool could not be started.
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("{program} failed building {image} ({status}): {stderr}")]
    Failed {
        program: &'static str,
        image: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// The tree cannot be read.
    #[error("cannot read {path} while sizing the image")]
    Tree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The output cannot be written.
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `dumpe2fs` said something we could not read.
    #[error("cannot read the inode map of {0} from dumpe2fs")]
    InodeMap(PathBuf),
}

/// Entries and block-rounded bytes of a tree, not following symlinks.
fn measure(root: &Path) -> Result<(u64, u64), Ext4Error> {
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![root.to_owned()];
    let tree_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Ext4Error::Tree { path, source }
    };
    while let Some(dir) = stack.pop() {
        for child in fs::read_dir(&dir).map_err(tree_err(&dir))? {
            let child = child.map_err(tree_err(&dir))?;
            let meta = child.metadata().map_err(tree_err(&child.path()))?;
            entries += 1;
            bytes = bytes.saturating_add(meta.len().max(1).div_ceil(BLOCK).saturating_mul(BLOCK));
            // xattrs that do not fit in the inode take a block each.
            if meta.is_dir() {
                stack.push(child.path());
            }
        }
    }
    Ok((entries, bytes))
}

/// The image size: the tree with room for metadata. The file is sparse,
/// so a generous size costs no disk.
fn image_size(tree_bytes: u64) -> u64 {
    let grown = tree_bytes.saturating_add(tree_bytes.div_ceil(10).saturating_mul(3));
    let total = grown.saturating_add(SIZE_SLACK);
    total
        .checked_next_multiple_of(BLOCK)
        .unwrap_or(total / BLOCK * BLOCK)
}

/// A filesystem UUID (version 4 layout) from the first bytes of `key_hex`.
pub fn uuid_from_key(key_hex: &str) -> String {
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = key_hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An e2fsprogs tool on `PATH` or in the sbin directories a non-root
/// `PATH` often lacks.
pub fn find_tool(name: &'static str) -> Result<PathBuf, Ext4Error> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(Ext4Error::Missing(name))
}

fn run(
    program: &'static str,
    path: &Path,
    cmd: &mut Command,
    image: &Path,
) -> Result<Vec<u8>, Ext4Error> {
    let output = cmd
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Ext4Error::Spawn {
            program: path.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(Ext4Error::Failed {
            program,
            image: image.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// Builds `out` (an existing, empty file) from `tree`; `key_hex` (the
/// manifest digest's hex) seeds the UUID and directory hashes.
pub fn build(tree: &Path, out: &Path, key_hex: &str) -> Result<(), Ext4Error> {
    let mkfs = find_tool("mkfs.ext4")?;
    let debugfs = find_tool("debugfs")?;
    let dumpe2fs = find_tool("dumpe2fs")?;
    let (entries, bytes) = measure(tree)?;
    let out_err = |source| Ext4Error::Output {
        path: out.to_owned(),
        source,
    };
    fs::OpenOptions::new()
        .write(true)
        .open(out)
        .and_then(|f| f.set_len(image_size(bytes)))
        .map_err(out_err)?;
    let uuid = uuid_from_key(key_hex);
    let inodes = entries + entries / 5 + 1024;
    run(
        "mkfs.ext4",
        &mkfs,
        Command::new(&mkfs)
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-b", "4096"])
            // A read-only root has no use for blocks reserved for root.
            .args(["-m", "0"])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(tree)
            .arg("-U")
            .arg(&uuid)
            .arg("-E")
            .arg(format!("hash_seed={uuid},lazy_itable_init=0"))
            .arg(out),
        out,
    )?;
    let map = run("dumpe2fs", &dumpe2fs, Command::new(&dumpe2fs).arg(out), out)?;
    let used = used_inodes(&String::from_utf8_lossy(&map))
        .ok_or_else(|| Ext4Error::InodeMap(out.to_owned()))?;
    let mut script = Vec::new();
    for ino in used.into_iter().filter(|&i| i == 2 || i >= 11) {
        // Writing to a Vec cannot fail.
        let _ = writeln!(script, "sif <{ino}> ctime {FAKE_TIME}");
        let _ = writeln!(script, "sif <{ino}> atime {FAKE_TIME}");
    }
    let script_path = out.with_extension("debugfs");
    fs::write(&script_path, &script).map_err(|source| Ext4Error::Output {
        path: script_path.clone(),
        source,
    })?;
    let result = run(
        "debugfs",
        &debugfs,
        Command::new(&debugfs)
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out),
        out,
    );
    let _ = fs::remove_file(&script_path);
    result.map(|_| ())
}

/// The used inode numbers, from `dumpe2fs` output: every inode of every
/// group minus the ranges its "Free inodes:" line lists.
fn used_inodes(dump: &str) -> Option<Vec<u64>> {
    let per_group: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Inodes per group:"))?
        .trim()
        .parse()
        .ok()?;
    let mut used = Vec::new();
    let mut group: Option<u64> = None;
    for line in dump.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("Group ") {
            group = rest.split(':').next()?.trim().parse().ok();
        } else if let Some(list) = t.strip_prefix("Free inodes:") {
            // The superblock summary has a "Free inodes:" count of its own.
            let Some(g) = group else {
                continue;
            };
            let first = g * per_group + 1;
            let last = first + per_group - 1;
            let mut free = Vec::new();
            for range in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                free.push((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?));
            }
            used.extend((first..=last).filter(|i| !free.iter().any(|&(a, b)| (a..=b).contains(i))));
        }
    }
    Some(used)
}

/// Whether `path` starts with an ext4 superblock.
pub fn is_ext4(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(1080))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(u16::from_le_bytes(magic) == 0xEF53),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_inodes_are_the_complement_of_the_free_ranges() {
        let dump = "Inodes per group:         8\nFree inodes:              9\n\nGroup 0: (Blocks 0-10)\n  Free inodes: 5-6, 8\nGroup 1: (Blocks 11-20)\n  Free inodes: 9-16\nGroup 2: (Blocks 21-30)\n  Free inodes: \n";
        assert_eq!(
            used_inodes(dump).unwrap(),
            vec![1, 2, 3, 4, 7, 17, 18, 19, 20, 21, 22, 23, 24]
        );
        assert!(used_inodes("nothing").is_none());
    }

    #[test]
    fn uuid_is_version_4_and_follows_the_key() {
        assert_eq!(
            uuid_from_key(&"ab".repeat(32)),
            "abababab-abab-4bab-abab-abababababab"
        );
        assert_eq!(uuid_from_key("").len(), 36);
    }

    #[test]
    fn size_leaves_room_for_metadata() {
        assert_eq!(image_size(0), SIZE_SLACK);
        assert_eq!(image_size(u64::MAX) % BLOCK, 0);
    }
}
