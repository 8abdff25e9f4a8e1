//! The snapshot cache: one snapshot per VM shape, created by booting once,
//! found again by a key over everything that shapes the VM.
//!
//! Layout: `<cache>/snapshots/<key>/{state,memory,meta.json}`. A snapshot
//! is built in a temporary directory and renamed into place, so readers see
//! a complete snapshot or none, and two runners racing to build the same
//! one both succeed (the loser's copy is discarded).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::launch::{boot_cold, StepDisks, VmShape};
use super::vm::{VmEvent, VmHandleError};
use sbxrun_proto::control::{SnapshotFiles, VmmEvent, VmmRequest};
use sbxrun_proto::snapshot_file::{FORMAT_MAJOR, FORMAT_MINOR};

/// Errors creating or validating snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot boot the VM to snapshot")]
    Boot(#[source] VmHandleError),
    #[error("the VMM did not write the snapshot")]
    Create(#[source] VmHandleError),
    #[error("snapshot {0} is damaged: {1}")]
    Damaged(String, String),
}

/// What `meta.json` records next to a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub key: String,
    pub format: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub image: PathBuf,
    /// CRC32 of the memory file's full logical content.
    pub memory_crc32: u32,
    pub memory_bytes_written: u64,
    pub boot_ms: u64,
    /// From the snapshot request to the VMM's answer: pausing, saving the
    /// state and writing guest memory.
    #[serde(default)]
    pub snapshot_ms: u64,
    pub created_unix: u64,
}

/// A snapshot on disk, checked and ready to restore from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

impl Snapshot {
    /// The two files a VMM restores from.
    pub fn files(&self) -> SnapshotFiles {
        SnapshotFiles {
            state: self.dir.join("state"),
            memory: self.dir.join("memory"),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Identity of an input file without reading it: path, size, mtime, inode.
/// Assets built by the project live under content-hashed paths, so this is
/// as strong as a content hash for them, at no cost.
fn file_fingerprint(path: &Path, hasher: &mut Sha256) -> Result<(), SnapshotError> {
    let canonical = fs::canonicalize(path).map_err(io_err(path))?;
    let meta = fs::metadata(&canonical).map_err(io_err(path))?;
    hasher.update(canonical.as_os_str().as_encoded_bytes());
    hasher.update(meta.len().to_le_bytes());
    hasher.update(meta.mtime().to_le_bytes());
    hasher.update(meta.mtime_nsec().to_le_bytes());
    hasher.update(meta.ino().to_le_bytes());
    Ok(())
}

/// Bumped when what the VMM shows a booting guest changes in a way the
/// kernel settles once at boot (CPUID bits, device layout): a snapshot booted
/// under the older one would keep the older behaviour. 2: the kvmclock
/// stable bit is visible on kvm-pvm hosts too.
const GUEST_PLATFORM: u32 = 2;

/// The pool key of a shape: everything that makes two VMs differ.
pub fn shape_key(shape: &VmShape) -> Result<String, SnapshotError> {
    let mut h = Sha256::new();
    h.update(
        format!("sbxrun-snapshot-{FORMAT_MAJOR}.{FORMAT_MINOR}-platform-{GUEST_PLATFORM}\n")
            .as_bytes(),
    );
    for file in [&shape.kernel, &shape.initramfs, &shape.image] {
        file_fingerprint(file, &mut h)?;
    }
    let probe_disks = StepDisks {
        input: PathBuf::new(),
        output: PathBuf::new(),
    };
    let layout = shape.vm_config(&probe_disks, None);
    // The command line decides what the guest does before the snapshot (its
    // clocksource, for one), so a snapshot booted with another is not this one.
    h.update(sbxrun_proto::cmdline::for_config(&layout).as_bytes());
    let dims = format!(
        "{}:{}:{:?}:{}",
        shape.memory_mib, shape.vcpus, shape.flavour, shape.artifact_disk_bytes
    );
    h.update(dims.as_bytes());
    for d in &layout.disks {
        h.update(format!("{}:{}\n", d.read_only, d.id).as_bytes());
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

/// CRC32 over a file's logical content (holes count as zeros). Walks the
/// file's data regions with SEEK_DATA/SEEK_HOLE, so a sparse 256 MiB memory
/// image with a few MiB of data costs a few MiB of reads; holes are hashed
/// from a zero buffer without touching the disk. A filesystem without
/// SEEK_DATA reports one big data region, which is slower but still correct.
fn file_crc32(path: &Path) -> Result<u32, SnapshotError> {
    use nix::unistd::{lseek, Whence};
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut hasher = crc32fast::Hasher::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let feed_zeros = |hasher: &mut crc32fast::Hasher, mut n: u64| {
        while n > 0 {
            let step = n.min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..step]);
            n -= step as u64;
        }
    };
    let mut pos = 0u64;
    while pos < len {
        let data_start = match lseek(&f, pos as i64, Whence::SeekData) {
            Ok(off) => off as u64,
            // ENXIO: only a hole remains up to the end of the file.
            Err(nix::errno::Errno::ENXIO) => len,
            Err(e) => return Err(io_err(path)(std::io::Error::from(e))),
        };
        feed_zeros(&mut hasher, data_start - pos);
        if data_start >= len {
            break;
        }
        let data_end = match lseek(&f, data_start as i64, Whence::SeekHole) {
            Ok(off) => (off as u64).min(len),
            Err(e) => return Err(io_err(path)(std::io::Error::from(e))),
        };
        let mut at = data_start;
        while at < data_end {
            let step = (data_end - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..step], at)
                .map_err(io_err(path))?;
            hasher.update(&buf[..step]);
            at += step as u64;
        }
        pos = data_end;
    }
    Ok(hasher.finalize())
}

/// The snapshots directory of a cache.
pub fn snapshots_dir(cache: &Path) -> PathBuf {
    cache.join("snapshots")
}

/// Whether `shape` has a snapshot in `cache` (cheaply: present, not yet
/// checked; [`load`] checks it).
pub fn is_present(cache: &Path, shape: &VmShape) -> bool {
    shape_key(shape).is_ok_and(|key| snapshots_dir(cache).join(key).join("meta.json").is_file())
}

/// Loads and checks the snapshot for `key`: `Ok(None)` when there is none,
/// `Err(Damaged)` when it exists but must be rebuilt.
pub fn load(cache: &Path, key: &str) -> Result<Option<Snapshot>, SnapshotError> {
    let dir = snapshots_dir(cache).join(key);
    let meta_path = dir.join("meta.json");
    let text = match fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&meta_path)(e)),
    };
    let damaged = |why: String| SnapshotError::Damaged(dir.display().to_string(), why);
    let meta: SnapshotMeta =
        serde_json::from_str(&text).map_err(|e| damaged(format!("meta.json: {e}")))?;
    if meta.key != key {
        return Err(damaged("meta.json names another key".into()));
    }
    let state_bytes = fs::read(dir.join("state")).map_err(|e| damaged(format!("state: {e}")))?;
    sbxrun_proto::snapshot_file::decode::<serde::de::IgnoredAny>(&state_bytes)
        .map_err(|e| damaged(format!("state: {e}")))?;
    let memory = dir.join("memory");
    let expected_len = u64::from(meta.memory_mib) << 20;
    let len = fs::metadata(&memory)
        .map_err(|e| damaged(format!("memory: {e}")))?
        .len();
    if len != expected_len {
        return Err(damaged(format!(
            "memory is {len} bytes, expected {expected_len}"
        )));
    }
    if file_crc32(&memory)? != meta.memory_crc32 {
        return Err(damaged("memory checksum mismatch".into()));
    }
    Ok(Some(Snapshot { dir, meta }))
}

/// Boots `shape`, snapshots it at guest-init's ready point, and installs
/// the snapshot under `key`. Safe to race with another process doing the same.
pub fn create(
    cache: &Path,
    key: &str,
    shape: &VmShape,
    console_log: Option<PathBuf>,
) -> Result<Snapshot, SnapshotError> {
    let root = snapshots_dir(cache);
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = build_into(&tmp, key, shape, console_log);
    let meta = match result {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let dir = root.join(key);
    if fs::rename(&tmp, &dir).is_err() {
        // Someone else installed it first (or a damaged one is in the way:
        // the caller removed that before calling us, so it is a fresh one).
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(Snapshot { dir, meta })
}

fn build_into(
    tmp: &Path,
    key: &str,
    shape: &VmShape,
    console_log: Option<PathBuf>,
) -> Result<SnapshotMeta, SnapshotError> {
    let started = Instant::now();
    let scratch = tmp.join("disks");
    let disks =
        StepDisks::create_in(&scratch, shape.artifact_disk_bytes).map_err(io_err(&scratch))?;
    let files = SnapshotFiles {
        state: tmp.join("state"),
        memory: tmp.join("memory"),
    };
    let mut booted = boot_cold(shape, &disks, "", console_log, Some(files.clone()))
        .map_err(SnapshotError::Boot)?;
    let boot_ms = started.elapsed().as_millis() as u64;
    booted
        .vm
        .request(&VmmRequest::Snapshot)
        .map_err(SnapshotError::Create)?;
    let snapshot_started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let memory_bytes_written = loop {
        match booted
            .vm
            .next_event(deadline)
            .map_err(SnapshotError::Create)?
        {
            VmEvent::Vmm(VmmEvent::Snapshotted { memory_bytes, .. }) => break memory_bytes,
            // guest-init may still be talking (e.g. late output); ignore it.
            VmEvent::Guest(_) => {}
            other => booted.vm.fail_on(other).map_err(SnapshotError::Create)?,
        }
    };
    let snapshot_ms = snapshot_started.elapsed().as_millis() as u64;
    let meta = SnapshotMeta {
        key: key.to_string(),
        format: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        kernel: shape.kernel.clone(),
        initramfs: shape.initramfs.clone(),
        image: shape.image.clone(),
        memory_crc32: file_crc32(&files.memory)?,
        memory_bytes_written,
        boot_ms,
        snapshot_ms,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    drop(booted);
    let _ = fs::remove_dir_all(&scratch);
    let meta_path = tmp.join("meta.json");
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| SnapshotError::Damaged(key.into(), e.to_string()))?;
    fs::write(&meta_path, text).map_err(io_err(&meta_path))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn dense_crc(bytes: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(bytes);
        h.finalize()
    }

    #[test]
    fn sparse_crc_equals_crc_of_the_logical_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let f = fs::File::create(&path).unwrap();
        let len = 8 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"hello", 4096 * 3 + 7).unwrap();
        f.write_all_at(&[0xab; 9000], 5 << 20).unwrap();
        let logical = fs::read(&path).unwrap();
        assert_eq!(file_crc32(&path).unwrap(), dense_crc(&logical));
    }

    #[test]
    fn sparse_crc_sees_a_byte_written_into_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let f = fs::File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        let before = file_crc32(&path).unwrap();
        f.write_all_at(&[1], 3 << 20).unwrap();
        assert_ne!(file_crc32(&path).unwrap(), before);
    }
}
