//! The file operations the layer applier is made of, each refusing to
//! follow a link or leave the tree: path cleaning, removal without
//! following, creating files new, owners before modes, xattrs from PAX
//! records, and the mapping of stream errors to truncated/corrupt layers.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use super::LayerError;

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// An entry path as normal components; `None` for the root itself.
pub(super) fn clean_path(raw: &[u8], shown: &str) -> Result<Option<Vec<OsString>>, LayerError> {
    let mut parts = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(LayerError::ParentDir(shown.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(LayerError::Absolute(shown.to_owned()))
            }
        }
    }
    Ok((!parts.is_empty()).then_some(parts))
}

/// An I/O error from decompressing or reading the tar: running out of bytes
/// is a truncated layer, anything else a corrupt one.
pub(super) fn classify(format: &'static str, e: io::Error) -> LayerError {
    // tar reports running out of bytes while skipping as a plain error.
    if e.kind() == io::ErrorKind::UnexpectedEof || e.to_string().contains("unexpected EOF") {
        LayerError::Truncated(format!("{format}: {e}"))
    } else {
        LayerError::Corrupt { format, source: e }
    }
}

pub(super) fn mkdir(path: &Path) -> Result<(), LayerError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io_err("create directory", path))
}

/// Removes whatever is at `path` without following it; nothing there is fine.
pub(super) fn remove_any(path: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(_) => Ok(()),
    }
}

pub(super) fn write_file(
    src: &mut impl Read,
    target: &Path,
    format: &'static str,
) -> Result<(), LayerError> {
    let mut out: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(io_err("create", target))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf).map_err(|e| classify(format, e))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n]).map_err(io_err("write", target))?;
    }
}

/// Owner first: chown clears setuid bits, so the mode comes after it.
pub(super) fn set_owner_mode(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: Option<u32>,
) -> Result<(), LayerError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_err("set the owner of", path))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", path))?;
    }
    Ok(())
}

pub(super) fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(OsString, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.flatten()
        .filter_map(|ext| {
            let key = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")?;
            Some((
                OsStr::from_bytes(key).to_owned(),
                ext.value_bytes().to_vec(),
            ))
        })
        .collect()
}

/// Sets one xattr; a namespace the host filesystem does not take (an
/// SELinux label on a host without SELinux) is skipped, not fatal.
pub(super) fn set_xattr(path: &Path, key: &OsStr, value: &[u8]) -> Result<(), LayerError> {
    match xattr::set(path, key, value) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(95) || e.raw_os_error() == Some(1) => Ok(()),
        Err(source) => Err(LayerError::Io {
            op: "set an extended attribute on",
            path: path.to_owned(),
            source,
        }),
    }
}
