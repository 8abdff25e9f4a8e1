//! Root images as the user names them: an ext4 file is used as it is; a
//! directory is turned into an ext4 file with `mkfs.ext4 -d` and cached,
//! keyed by the tree's metadata, so an unchanged tree is built only once.
//!
//! The key covers every entry's path, type, mode, owner, size, mtime and
//! symlink target, plus the mke2fs version: editing a file (which moves its
//! mtime) or upgrading e2fsprogs gives a new image, while a second run over
//! the same tree reuses the first one's file. The cached file is also what
//! the snapshot pool keys its snapshots on, so a rebuilt image never
//! restores a snapshot of an older one.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// A tree larger than this is refused: it would take minutes to copy and
/// is almost certainly a wrong path (`/`, a home directory).
pub const MAX_TREE_ENTRIES: u64 = 1_000_000;
/// The same bound on the bytes the tree holds (after block rounding).
pub const MAX_TREE_BYTES: u64 = 64 << 30;

/// The filesystem block size the images use; also what each entry is
/// rounded up to when sizing the image.
const BLOCK: u64 = 4096;
/// Room for metadata (inode tables, group descriptors, directories).
const SIZE_SLACK: u64 = 64 << 20;
/// Fixed filesystem timestamps (superblock, root, lost+found), so two
/// builds of one tree give the same bytes. Same value as the default image.
const FAKE_TIME: &str = "1700000000";
/// Bumped when the way an image is built from a tree changes, so old
/// cached images are not reused for the new recipe.
const RECIPE: &[u8] = b"sbxrun dir image v1";

/// Errors turning a user's image path into an ext4 file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Nothing at the path.
    #[error("image {path} does not exist; give an ext4 file or a directory")]
    NotFound { path: PathBuf },
    /// The path exists but cannot be examined or read.
    #[error("cannot read image {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A regular file without an ext4 superblock.
    #[error("{path} is not an ext4 image (no ext4 superblock); give an ext4 file or a directory")]
    NotExt4 { path: PathBuf },
    /// A socket, FIFO, device node...
    #[error("image {path} is a {kind}; give an ext4 file or a directory")]
    Unsupported { path: PathBuf, kind: &'static str },
    /// An entry inside the directory cannot be listed or read; the image
    /// would silently miss it.
    #[error("cannot read {path} in image directory {root}")]
    TreeUnreadable {
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory holds more entries than [`MAX_TREE_ENTRIES`].
    #[error("image directory {root} has more than {limit} entries")]
    TooManyEntries { root: PathBuf, limit: u64 },
    /// The directory holds more bytes than [`MAX_TREE_BYTES`].
    #[error("image directory {root} holds more than {} GiB", limit >> 30)]
    TooLarge { root: PathBuf, limit: u64 },
    /// `mkfs.ext4` is not installed.
    #[error("mkfs.ext4 is needed to build an image from a directory; install e2fsprogs (`make assets` installs it)")]
    MkfsMissing,
    /// `mkfs.ext4` could not be started.
    #[error("cannot run {program}")]
    MkfsSpawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `mkfs.ext4` ran and failed.
    #[error("mkfs.ext4 failed to build an image from {root} ({status}): {stderr}")]
    MkfsFailed {
        root: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// The image cache cannot be written.
    #[error("cannot write the image cache at {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Turns the image a user named into an ext4 file the VM can attach.
///
/// A regular file must be ext4 and is returned as given. A directory is
/// built into `cache/images/dirs/<key>/rootfs.ext4` (or that file is reused
/// when it already exists); see the module docs for the key.
pub fn resolve_image(path: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
    resolve_image_reporting(path, cache, &|| {})
}

/// [`resolve_image`], calling `on_build` when a directory's ext4 file is
/// not cached and is about to be built (the slow part of a first use).
pub fn resolve_image_reporting(
    path: &Path,
    cache: &Path,
    on_build: &dyn Fn(),
) -> Result<PathBuf, ImageError> {
    // Follow a symlink at the top: `image: ./rootfs` may well be a link to
    // the real tree. Inside the tree, links are copied as links.
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ImageError::NotFound {
            path: path.to_owned(),
        },
        _ => ImageError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    let kind = meta.file_type();
    if kind.is_file() {
        check_ext4(path)?;
        Ok(path.to_owned())
    } else if kind.is_dir() {
        build_from_dir(path, cache, on_build)
    } else {
        Err(ImageError::Unsupported {
            path: path.to_owned(),
            kind: kind_name(&kind),
        })
    }
}

fn check_ext4(path: &Path) -> Result<(), ImageError> {
    match sbxrun_image::ext4::is_ext4(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ImageError::NotExt4 {
            path: path.to_owned(),
        }),
        Err(source) => Err(ImageError::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

fn kind_name(kind: &fs::FileType) -> &'static str {
    if kind.is_socket() {
        "socket"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// What the walk learned about a tree.
#[derive(Debug)]
struct TreeSummary {
    /// Hex sha256 over the entries (and the recipe and mke2fs version).
    key: String,
    /// Entries including the root directory.
    entries: u64,
    /// Bytes, each entry rounded up to a block.
    bytes: u64,
}

fn build_from_dir(root: &Path, cache: &Path, on_build: &dyn Fn()) -> Result<PathBuf, ImageError> {
    let mkfs = find_mkfs()?;
    let version = mkfs_version(&mkfs)?;
    let tree = walk(root, &version)?;
    let key = &tree.key[..KEY_CHARS];
    let dir = super::dir_images::dir_images_root(cache).join(key);
    let out = dir.join("rootfs.ext4");
    // A file that is there but not ext4 (a truncated copy, a disk that
    // filled up) is rebuilt rather than handed to the VM.
    if out.is_file() && sbxrun_image::ext4::is_ext4(&out).unwrap_or(false) {
        super::dir_images::mark_used(&dir);
        return Ok(out);
    }
    on_build();
    fs::create_dir_all(&dir).map_err(|source| ImageError::Cache {
        path: dir.clone(),
        source,
    })?;
    let tmp = TempImage::create(&dir)?;
    let size = image_size(tree.bytes);
    tmp.file.set_len(size).map_err(|source| ImageError::Cache {
        path: tmp.path.clone(),
        source,
    })?;
    let uuid = sbxrun_image::ext4::uuid_from_key(&tree.key);
    let inodes = tree.entries + tree.entries / 5 + 1024;
    let output = Command::new(&mkfs)
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-b", "4096"])
        // A read-only image has no use for blocks reserved for root.
        .args(["-m", "0"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(root)
        .arg("-U")
        .arg(&uuid)
        .arg("-E")
        .arg(format!("hash_seed={uuid},lazy_itable_init=0"))
        .arg(&tmp.path)
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::MkfsSpawn {
            program: mkfs.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::MkfsFailed {
            root: root.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // Concurrent runners may build the same tree at once; each renames its
    // own complete file over the name, so a reader never sees a partial one.
    tmp.persist(&out)?;
    super::dir_images::record_build(&dir, root, key);
    Ok(out)
}

/// Characters of the tree digest that name an image's cache directory.
const KEY_CHARS: usize = 32;

/// The cache key a directory's image has now (what a run would use).
pub fn tree_key(root: &Path) -> Result<String, ImageError> {
    let version = mkfs_version(&find_mkfs()?)?;
    Ok(walk(root, &version)?.key[..KEY_CHARS].to_owned())
}

/// The image's size: the tree's bytes with room for metadata. The file is
/// sparse, so a generous size costs no disk.
fn image_size(tree_bytes: u64) -> u64 {
    let grown = tree_bytes.saturating_add(tree_bytes.div_ceil(10).saturating_mul(3));
    let total = grown.saturating_add(SIZE_SLACK);
    total
        .checked_next_multiple_of(BLOCK)
        .unwrap_or(total / BLOCK * BLOCK)
}

/// `mkfs.ext4`, found where the image crate finds its e2fsprogs tools.
fn find_mkfs() -> Result<PathBuf, ImageError> {
    sbxrun_image::ext4::find_tool("mkfs.ext4").map_err(|_| ImageError::MkfsMissing)
}

/// The first line of `mkfs.ext4 -V` ("mke2fs 1.47.0 (5-Feb-2023)"). The
/// whole output is read, so the tool never dies of a closed pipe.
fn mkfs_version(mkfs: &Path) -> Result<String, ImageError> {
    let output = Command::new(mkfs)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::MkfsMissing,
            _ => ImageError::MkfsSpawn {
                program: mkfs.to_owned(),
                source,
            },
        })?;
    // mke2fs prints its version on stderr; look at stdout too in case a
    // future version moves it.
    let text = [output.stderr, output.stdout].concat();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned())
}

/// Walks `root` without following symlinks, in sorted order (byte order of
/// names, depth first), hashing every entry's metadata and checking that
/// mkfs will be able to read it.
fn walk(root: &Path, mkfs_version: &str) -> Result<TreeSummary, ImageError> {
    let mut hasher = Sha256::new();
    hash_field(&mut hasher, RECIPE);
    hash_field(&mut hasher, mkfs_version.as_bytes());
    let unreadable = |path: &Path, source: io::Error| ImageError::TreeUnreadable {
        root: root.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut entries: u64 = 0;
    let mut bytes: u64 = 0;
    // An explicit stack instead of recursion: a very deep tree must give an
    // error from the filesystem, not overflow our stack. Each item is a
    // path relative to `root`; the root itself is the empty path.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let meta = if rel.as_os_str().is_empty() {
            // The root was reached through `metadata` already (a link to
            // the tree is fine); hash what it points at.
            fs::metadata(&full)
        } else {
            fs::symlink_metadata(&full)
        }
        .map_err(|e| unreadable(&full, e))?;
        entries += 1;
        if entries > MAX_TREE_ENTRIES {
            return Err(ImageError::TooManyEntries {
                root: root.to_owned(),
                limit: MAX_TREE_ENTRIES,
            });
        }
        // Every entry takes at least a block (directories, long symlinks)
        // or an inode's worth of room; rounding each up keeps many small
        // files from overflowing the image.
        bytes = bytes.saturating_add(meta.len().max(1).div_ceil(BLOCK).saturating_mul(BLOCK));
        if bytes > MAX_TREE_BYTES {
            return Err(ImageError::TooLarge {
                root: root.to_owned(),
                limit: MAX_TREE_BYTES,
            });
        }
        let kind = meta.file_type();
        hash_field(&mut hasher, rel.as_os_str().as_bytes());
        hash_field(&mut hasher, &[type_tag(&kind)]);
        for n in [
            u64::from(meta.mode()),
            u64::from(meta.uid()),
            u64::from(meta.gid()),
            meta.len(),
        ] {
            hash_field(&mut hasher, &n.to_le_bytes());
        }
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        hash_field(&mut hasher, &mtime_ns.to_le_bytes());
        if kind.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| unreadable(&full, e))?;
            hash_field(&mut hasher, target.as_os_str().as_bytes());
        } else if kind.is_block_device() || kind.is_char_device() {
            // mkfs copies device nodes; which device is part of the content.
            hash_field(&mut hasher, &meta.rdev().to_le_bytes());
        } else if kind.is_file() {
            // Opening proves mkfs can read it; a file it cannot read would
            // otherwise fail the build with a less helpful message.
            File::open(&full).map_err(|e| unreadable(&full, e))?;
        } else if kind.is_dir() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&full).map_err(|e| unreadable(&full, e))? {
                let entry = entry.map_err(|e| unreadable(&full, e))?;
                names.push(entry.file_name());
            }
            // Reverse order on the stack pops the smallest name first.
            names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
            stack.extend(names.iter().map(|name| rel.join(name)));
        }
    }
    Ok(TreeSummary {
        key: hex::encode(hasher.finalize()),
        entries,
        bytes,
    })
}

/// Length-prefixed, so no two different entries hash the same bytes.
fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn type_tag(kind: &fs::FileType) -> u8 {
    if kind.is_file() {
        b'f'
    } else if kind.is_dir() {
        b'd'
    } else if kind.is_symlink() {
        b'l'
    } else if kind.is_block_device() {
        b'b'
    } else if kind.is_char_device() {
        b'c'
    } else if kind.is_fifo() {
        b'p'
    } else if kind.is_socket() {
        b's'
    } else {
        b'?'
    }
}

/// The image being built, removed unless it is renamed into place.
struct TempImage {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempImage {
    /// A new file in `dir` (the cache entry's own directory, so the final
    /// rename stays on one filesystem and is atomic).
    fn create(dir: &Path) -> Result<Self, ImageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last_err = None;
        for attempt in 0..16u32 {
            let name = format!(".rootfs.ext4.{}.{nanos:x}.{attempt}", std::process::id());
            let path = dir.join(OsStr::new(&name));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempImage {
                        path,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(source) => return Err(ImageError::Cache { path, source }),
            }
        }
        Err(ImageError::Cache {
            path: dir.to_owned(),
            source: last_err.unwrap_or_else(|| io::Error::other("no free temporary name")),
        })
    }

    fn persist(mut self, to: &Path) -> Result<(), ImageError> {
        fs::rename(&self.path, to).map_err(|source| ImageError::Cache {
            path: to.to_owned(),
            source,
        })?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A tree with a file, a subdirectory, a symlink and an executable.
    fn sample_tree(root: &Path) {
        fs::write(root.join("hello.txt"), "hello from a directory image\n").unwrap();
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("tool", root.join("bin/link")).unwrap();
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(image)
            .output()
            .expect("debugfs (e2fsprogs) is needed for this test");
        assert!(out.status.success(), "debugfs {request}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn directory_becomes_an_ext4_image_with_its_files_and_modes() {
        let tree = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        sample_tree(tree.path());
        let image = resolve_image(tree.path(), cache.path()).unwrap();
        assert!(image.starts_with(cache.path().join("images/dirs")));
        assert!(sbxrun_image::ext4::is_ext4(&image).unwrap());
        assert_eq!(
            debugfs(&image, "cat /hello.txt"),
            "hello from a directory image\n"
        );
        let stat = debugfs(&image, "stat /bin/tool");
        assert!(stat.contains("Mode:  0755"), "{stat}");
        let link = debugfs(&image, "stat /bin/link");
        assert!(link.contains("Type: symlink"), "{link}");
        assert!(link.contains("Fast link dest: \"tool\""), "{link}");
        // Nothing but the image and its records is left in its cache
        // directory (no temporary file).
        let mut names: Vec<_> = fs::read_dir(image.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                OsStr::new("last-used"),
                OsStr::new("rootfs.ext4"),
                OsStr::new("source.json")
            ]
        );
    }

    #[test]
    fn same_tree_reuses_the_cached_image() {
        let tree = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        sample_tree(tree.path());
        let first = resolve_image(tree.path(), cache.path()).unwrap();
        let built = fs::metadata(&first).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = resolve_image(tree.path(), cache.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), built);
    }

    #[test]
    fn changed_file_gives_a_new_image() {
        let tree = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        sample_tree(tree.path());
        let first = resolve_image(tree.path(), cache.path()).unwrap();
        fs::write(
            tree.path().join("hello.txt"),
            "changed, and longer than before\n",
        )
        .unwrap();
        let second = resolve_image(tree.path(), cache.path()).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            debugfs(&second, "cat /hello.txt"),
            "changed, and longer than before\n"
        );
    }

    #[test]
    fn ext4_file_is_used_as_given() {
        let tree = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        sample_tree(tree.path());
        let built = resolve_image(tree.path(), cache.path()).unwrap();
        assert_eq!(resolve_image(&built, cache.path()).unwrap(), built);
    }

    #[test]
    fn file_without_ext4_superblock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        for (name, len) in [("small.img", 100usize), ("zeros.img", 8192)] {
            let path = dir.path().join(name);
            fs::write(&path, vec![0u8; len]).unwrap();
            let err = resolve_image(&path, cache.path()).unwrap_err();
            assert!(matches!(err, ImageError::NotExt4 { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is not an ext4 image (no ext4 superblock); give an ext4 file or a directory",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn missing_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let err = resolve_image(&path, dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = resolve_image(&path, dir.path()).unwrap_err();
        assert!(
            matches!(err, ImageError::Unsupported { kind: "socket", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn walk_does_not_follow_symlinks_out_of_the_tree() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        let tree = tempfile::tempdir().unwrap();
        symlink(outside.path(), tree.path().join("away")).unwrap();
        // A loop would never end if links were followed.
        symlink(".", tree.path().join("loop")).unwrap();
        let summary = walk(tree.path(), "v").unwrap();
        assert_eq!(summary.entries, 3);
        assert_eq!(summary.bytes, 3 * BLOCK);
    }

    #[test]
    fn key_covers_symlink_targets() {
        let tree = tempfile::tempdir().unwrap();
        symlink("a", tree.path().join("l")).unwrap();
        let first = walk(tree.path(), "v").unwrap().key;
        fs::remove_file(tree.path().join("l")).unwrap();
        symlink("b", tree.path().join("l")).unwrap();
        let second = walk(tree.path(), "v").unwrap().key;
        assert_ne!(first, second);
    }

    #[test]
    fn image_size_leaves_room_for_metadata() {
        assert_eq!(image_size(0), SIZE_SLACK);
        assert_eq!(image_size(10 * BLOCK), SIZE_SLACK + 13 * BLOCK);
        assert_eq!(image_size(u64::MAX) % BLOCK, 0);
    }

    #[test]
    fn uuid_from_key_is_a_version_4_uuid() {
        let uuid = sbxrun_image::ext4::uuid_from_key(&"ab".repeat(32));
        assert_eq!(uuid, "abababab-abab-4bab-abab-abababababab");
        // A short or odd key still gives a well-formed value.
        assert_eq!(sbxrun_image::ext4::uuid_from_key("").len(), 36);
    }
}
