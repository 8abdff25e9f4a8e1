//! Packing a step's inputs as one tar stream at offset 0 of its input disk.
//! Every header carries the step user's uid/gid and every parent directory
//! gets its own entry, so guest-init unpacks with plain ownership-preserving
//! extraction and the step owns its inputs without a second walk.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::ArtifactError;
use super::join_rel;
use crate::manifest::output_covers;

/// One input as the packer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    /// A host file or directory, or a producer's artifact directory.
    pub root: PathBuf,
    /// Only paths (relative to `root`) covered by this output pattern.
    pub filter: Option<String>,
    /// Destination under the work dir. A directory's contents land in it;
    /// a file lands at it, or under its own name when it is `.`.
    pub to: String,
}

/// What was packed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    pub files: u64,
    pub bytes: u64,
    /// Length of the tar stream on the disk, which the guest reads exactly.
    pub archive_bytes: u64,
}

/// Counts bytes and refuses to grow past the disk.
struct Capped<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "input disk full",
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file system object to pack, relative to its item's root.
pub(crate) struct Found {
    pub(crate) rel: String,
    pub(crate) path: PathBuf,
    pub(crate) meta: fs::Metadata,
}

/// Everything under `root` (not following symlinks), parents first.
pub(crate) fn walk(root: &Path) -> Result<Vec<Found>, ArtifactError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| ArtifactError::io("read directory", &dir, e))?;
        let mut names: Vec<_> = rd.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let meta =
                fs::symlink_metadata(&path).map_err(|err| ArtifactError::io("stat", &path, err))?;
            let child = join_rel(&[&rel, &name]);
            if meta.is_dir() {
                stack.push((child.clone(), path.clone()));
            }
            out.push(Found {
                rel: child,
                path,
                meta,
            });
        }
    }
    Ok(out)
}

/// Packs `items` onto `disk` (at most `limit` bytes). `owner` is the step
/// user's (uid, gid).
pub fn pack_inputs(
    items: &[InputItem],
    disk: &Path,
    owner: (u64, u64),
    limit: u64,
) -> Result<PackStats, ArtifactError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| ArtifactError::io("open", disk, e))?;
    let capped = Capped {
        inner: BufWriter::with_capacity(1 << 20, file),
        written: 0,
        limit,
    };
    let mut packer = Packer {
        builder: tar::Builder::new(capped),
        owner,
        dirs: BTreeSet::new(),
        stats: PackStats::default(),
    };
    let result = items.iter().try_for_each(|item| packer.item(item));
    result?;
    let mut stats = packer.stats;
    let finished = packer
        .builder
        .into_inner()
        .and_then(|mut capped| capped.flush().map(|()| capped.written));
    match finished {
        Ok(written) => {
            stats.archive_bytes = written;
            Ok(stats)
        }
        Err(e) if e.kind() == io::ErrorKind::StorageFull => Err(ArtifactError::InputTooLarge {
            bytes: limit,
            limit,
        }),
        Err(e) => Err(ArtifactError::io("write", disk, e)),
    }
}

struct Packer {
    builder: tar::Builder<Capped<BufWriter<File>>>,
    owner: (u64, u64),
    dirs: BTreeSet<String>,
    stats: PackStats,
}

impl Packer {
    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(self.owner.0);
        h.set_gid(self.owner.1);
        h.set_mtime(0);
        h
    }

    fn fail(&self, e: io::Error, path: &Path) -> ArtifactError {
        if e.kind() == io::ErrorKind::StorageFull {
            let capped = self.builder.get_ref();
            ArtifactError::InputTooLarge {
                bytes: capped.written,
                limit: capped.limit,
            }
        } else {
            ArtifactError::io("pack", path, e)
        }
    }

    /// Directory entries for `rel` and each of its parents not yet written.
    fn dirs_for(&mut self, rel: &str, mode: u32) -> Result<(), ArtifactError> {
        let mut acc = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                let mut h = self.header(tar::EntryType::Directory, mode, 0);
                self.builder
                    .append_data(&mut h, format!("{acc}/"), io::empty())
                    .map_err(|e| self.fail(e, Path::new(&acc)))?;
            }
        }
        Ok(())
    }

    fn parent_dirs(&mut self, rel: &str) -> Result<(), ArtifactError> {
        match rel.rsplit_once('/') {
            Some((parent, _)) => self.dirs_for(parent, 0o755),
            None => Ok(()),
        }
    }

    fn one(&mut self, rel: &str, path: &Path, meta: &fs::Metadata) -> Result<(), ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        self.parent_dirs(rel)?;
        if meta.is_dir() {
            return self.dirs_for(rel, mode | 0o700);
        }
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(path).map_err(|e| ArtifactError::io("read link", path, e))?;
            let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
            return self
                .builder
                .append_link(&mut h, rel, &target)
                .map_err(|e| self.fail(e, path));
        }
        if !meta.is_file() {
            // Sockets, FIFOs and devices have no meaning inside the guest.
            return Ok(());
        }
        let f = File::open(path).map_err(|e| ArtifactError::io("open", path, e))?;
        let mut h = self.header(tar::EntryType::Regular, mode, meta.len());
        self.builder
            .append_data(&mut h, rel, f)
            .map_err(|e| self.fail(e, path))?;
        self.stats.files += 1;
        self.stats.bytes += meta.len();
        Ok(())
    }

    fn item(&mut self, item: &InputItem) -> Result<(), ArtifactError> {
        let meta =
            fs::metadata(&item.root).map_err(|e| ArtifactError::io("read input", &item.root, e))?;
        if !meta.is_dir() {
            let name = item
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = match join_rel(&[&item.to]) {
                d if d.is_empty() => name,
                d => d,
            };
            return self.one(&dest, &item.root, &meta);
        }
        let to = join_rel(&[&item.to]);
        self.dirs_for(&to, 0o755)?;
        for found in walk(&item.root)? {
            if let Some(filter) = &item.filter {
                // Directories on the way are created as parents of what is
                // taken; taking a whole directory covers its contents.
                if found.meta.is_dir() || !output_covers(filter, &found.rel) {
                    continue;
                }
            }
            let dest = join_rel(&[&to, &found.rel]);
            self.one(&dest, &found.path, &found.meta)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(disk: &Path) -> Vec<(String, tar::EntryType, u64)> {
        let mut a = tar::Archive::new(File::open(disk).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn pack_places_dirs_files_and_filtered_producer_outputs_with_owner() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("data");
        fs::create_dir_all(host.join("sub")).unwrap();
        fs::write(host.join("sub/w.txt"), b"words").unwrap();
        fs::write(dir.path().join("single"), b"one").unwrap();
        let producer = dir.path().join("artifacts/split");
        fs::create_dir_all(producer.join("parts")).unwrap();
        fs::write(producer.join("parts/a"), b"a").unwrap();
        fs::write(producer.join("other"), b"o").unwrap();
        let disk = dir.path().join("input.disk");
        File::create(&disk).unwrap().set_len(1 << 20).unwrap();
        let items = [
            InputItem {
                root: host,
                filter: None,
                to: "in/data".into(),
            },
            InputItem {
                root: dir.path().join("single"),
                filter: None,
                to: ".".into(),
            },
            InputItem {
                root: producer,
                filter: Some("parts/".into()),
                to: ".".into(),
            },
        ];
        let stats = pack_inputs(&items, &disk, (1000, 1000), 1 << 20).unwrap();
        assert_eq!(stats.files, 3);
        let got = entries(&disk);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "in/",
                "in/data/",
                "in/data/sub/",
                "in/data/sub/w.txt",
                "single",
                "parts/",
                "parts/a"
            ]
        );
        assert!(got.iter().all(|(_, _, uid)| *uid == 1000));
        assert_eq!(got[0].1, tar::EntryType::Directory);
    }

    #[test]
    fn pack_refuses_inputs_larger_than_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), vec![7u8; 64 * 1024]).unwrap();
        let disk = dir.path().join("input.disk");
        File::create(&disk).unwrap();
        let items = [InputItem {
            root: dir.path().join("big"),
            filter: None,
            to: ".".into(),
        }];
        let err = pack_inputs(&items, &disk, (0, 0), 16 * 1024).unwrap_err();
        assert!(matches!(err, ArtifactError::InputTooLarge { .. }), "{err}");
    }
}
