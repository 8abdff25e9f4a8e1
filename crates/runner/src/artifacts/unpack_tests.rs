//! The output-disk validator against hand-built hostile archives. Headers
//! are written byte by byte: the tar crate's builder refuses most of what a
//! hostile guest would write.

use super::*;

/// Appends one raw entry (header + data + padding) to `out`.
fn raw(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn end(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn file(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    raw(out, name, tar::EntryType::Regular, data, "");
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn dest(&self) -> std::path::PathBuf {
        self.dir.path().join("run/artifacts/step")
    }
    fn unpack(&self, tar: &[u8], declared: &[&str]) -> Result<Unpacked, ArtifactError> {
        self.unpack_limited(tar, declared, OutputLimits::default())
    }
    fn unpack_limited(
        &self,
        tar: &[u8],
        declared: &[&str],
        limits: OutputLimits,
    ) -> Result<Unpacked, ArtifactError> {
        fs::create_dir_all(self.dir.path().join("run/artifacts")).unwrap();
        let declared: Vec<String> = declared.iter().map(|s| s.to_string()).collect();
        unpack_stream(tar, &self.dest(), &declared, limits)
    }
    /// Everything under the temp dir except the run's artifacts dir itself.
    fn listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(
                    p.strip_prefix(self.dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn unpack_accepts_declared_files_dirs_and_inner_symlinks_with_digests() {
    let c = Case::new();
    let mut t = Vec::new();
    raw(&mut t, "out/", tar::EntryType::Directory, b"", "");
    file(&mut t, "out/a.txt", b"hello");
    file(&mut t, "./out/sub/b.bin", &[0u8, 1, 2]);
    raw(
        &mut t,
        "out/link",
        tar::EntryType::Symlink,
        b"",
        "sub/b.bin",
    );
    file(&mut t, "report.txt", b"r");
    let got = c.unpack(&end(t), &["out/", "report.txt"]).unwrap();
    let paths: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["out/a.txt", "out/sub/b.bin", "report.txt"]);
    assert_eq!(got.files[0].sha256, sha(b"hello"));
    assert_eq!(got.files[1].size, 3);
    assert!(got.unmatched.is_empty());
    assert_eq!(fs::read(c.dest().join("out/a.txt")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(c.dest().join("out/link")).unwrap(),
        Path::new("sub/b.bin")
    );
}

#[test]
fn unpack_rejects_parent_dir_escape_and_leaves_nothing() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "out/ok", b"1");
    file(&mut t, "../../escape", b"x");
    let err = c.unpack(&end(t), &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::ParentDir(_)), "{err}");
    assert_eq!(c.listing(), ["run", "run/artifacts"]);
}

#[test]
fn unpack_rejects_dotdot_inside_a_path() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "out/../../x", b"x");
    let err = c.unpack(&end(t), &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::ParentDir(_)), "{err}");
}

#[test]
fn unpack_rejects_absolute_paths() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "/etc/passwd", b"x");
    let err = c.unpack(&end(t), &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::Absolute(_)), "{err}");
    assert_eq!(c.listing(), ["run", "run/artifacts"]);
}

#[test]
fn unpack_rejects_symlinks_leaving_the_root() {
    for target in ["/etc", "../../..", "a/../../../x"] {
        let c = Case::new();
        let mut t = Vec::new();
        raw(&mut t, "out/l", tar::EntryType::Symlink, b"", target);
        let err = c.unpack(&end(t), &["out/"]).unwrap_err();
        assert!(
            matches!(err, ArtifactError::SymlinkEscapes { .. }),
            "{target}: {err}"
        );
        assert_eq!(c.listing(), ["run", "run/artifacts"]);
    }
}

#[test]
fn unpack_refuses_writing_through_a_symlink_it_made() {
    let c = Case::new();
    let mut t = Vec::new();
    raw(&mut t, "out/d", tar::EntryType::Symlink, b"", ".");
    file(&mut t, "out/d/x", b"x");
    let err = c.unpack(&end(t), &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::ThroughSymlink(_)), "{err}");
}

#[test]
fn unpack_replaces_a_symlink_with_a_later_file_without_following_it() {
    let c = Case::new();
    let outside = c.dir.path().join("victim");
    fs::write(&outside, b"keep").unwrap();
    let mut t = Vec::new();
    raw(&mut t, "out/f", tar::EntryType::Symlink, b"", "g");
    file(&mut t, "out/f", b"new");
    let got = c.unpack(&end(t), &["out/"]).unwrap();
    assert_eq!(got.files.len(), 1);
    assert_eq!(fs::read(c.dest().join("out/f")).unwrap(), b"new");
    assert_eq!(fs::read(&outside).unwrap(), b"keep");
}

#[test]
fn unpack_rejects_devices_fifos_and_hard_links() {
    let cases = [
        (tar::EntryType::Char, "x"),
        (tar::EntryType::Block, "x"),
        (tar::EntryType::Fifo, "x"),
    ];
    for (kind, _) in cases {
        let c = Case::new();
        let mut t = Vec::new();
        raw(&mut t, "out/dev", kind, b"", "");
        let err = c.unpack(&end(t), &["out/"]).unwrap_err();
        assert!(matches!(err, ArtifactError::Device(_)), "{kind:?}: {err}");
    }
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "out/a", b"a");
    raw(&mut t, "out/h", tar::EntryType::Link, b"", "/etc/shadow");
    let err = c.unpack(&end(t), &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::HardLink(_)), "{err}");
}

#[test]
fn unpack_rejects_entries_past_the_declared_outputs() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "out/a.txt", b"a");
    file(&mut t, "secret.key", b"k");
    let err = c.unpack(&end(t), &["out/*.txt"]).unwrap_err();
    assert!(
        matches!(err, ArtifactError::Undeclared(ref p) if p == "secret.key"),
        "{err}"
    );
    // Parent directories of a declared output are fine, others are not.
    let c = Case::new();
    let mut t = Vec::new();
    raw(&mut t, "out/", tar::EntryType::Directory, b"", "");
    raw(&mut t, "other/", tar::EntryType::Directory, b"", "");
    let err = c.unpack(&end(t), &["out/*.txt"]).unwrap_err();
    assert!(
        matches!(err, ArtifactError::Undeclared(ref p) if p == "other"),
        "{err}"
    );
}

#[test]
fn unpack_enforces_size_and_entry_caps() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "out/a", &[1u8; 600]);
    file(&mut t, "out/b", &[2u8; 600]);
    let limits = OutputLimits {
        max_bytes: 1000,
        max_entries: 10,
    };
    let err = c
        .unpack_limited(&end(t.clone()), &["out/"], limits)
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::TooLarge { limit: 1000 }),
        "{err}"
    );
    let limits = OutputLimits {
        max_bytes: 1 << 20,
        max_entries: 1,
    };
    let err = c.unpack_limited(&end(t), &["out/"], limits).unwrap_err();
    assert!(
        matches!(err, ArtifactError::TooManyEntries { limit: 1 }),
        "{err}"
    );
    assert_eq!(c.listing(), ["run", "run/artifacts"]);
}

#[test]
fn unpack_rejects_garbage_and_accepts_an_empty_disk() {
    let c = Case::new();
    let garbage = vec![0x41u8; 4096];
    let err = c.unpack(&garbage, &["out/"]).unwrap_err();
    assert!(matches!(err, ArtifactError::Archive(_)), "{err}");
    // A disk nobody wrote is all zeros: an empty archive.
    let got = c.unpack(&[0u8; 8192], &["out/"]).unwrap();
    assert!(got.files.is_empty());
    assert_eq!(got.unmatched, ["out/"]);
}

#[test]
fn unpack_reports_declared_outputs_that_matched_nothing() {
    let c = Case::new();
    let mut t = Vec::new();
    file(&mut t, "a.txt", b"a");
    let got = c.unpack(&end(t), &["a.txt", "b/*.log"]).unwrap();
    assert_eq!(got.unmatched, ["b/*.log"]);
}

#[test]
fn unpack_drops_setuid_bits() {
    use std::os::unix::fs::PermissionsExt;
    let c = Case::new();
    let mut t = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("out/suid").unwrap();
    h.set_mode(0o4777);
    h.set_size(1);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.push(b'x');
    t.resize(1024, 0);
    c.unpack(&end(t), &["out/"]).unwrap();
    let mode = fs::metadata(c.dest().join("out/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0);
}
