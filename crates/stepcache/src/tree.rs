//! A directory tree as the cache keeps it: directories with their modes,
//! files as blobs, symlinks by target. Capturing and restoring round-trip
//! the tree byte for byte (names, contents, permission bits, links).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::{Blob, Store};

/// One entry, its path relative to the tree's root (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TreeEntry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, blob: Blob },
    Symlink { path: String, target: String },
}

impl TreeEntry {
    fn path(&self) -> &str {
        match self {
            TreeEntry::Dir { path, .. }
            | TreeEntry::File { path, .. }
            | TreeEntry::Symlink { path, .. } => path,
        }
    }
}

/// A tree, parents before children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    /// The blobs of its files.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.entries.iter().filter_map(|e| match e {
            TreeEntry::File { blob, .. } => Some(blob),
            _ => None,
        })
    }

    /// Bytes of file content.
    pub fn bytes(&self) -> u64 {
        self.blobs().map(|b| b.size).sum()
    }
}

/// Stores every file under `root` in `store` and returns the tree. A
/// missing `root` is an empty tree (a step that produced nothing).
pub fn capture_tree(store: &dyn Store, root: &Path) -> Result<Tree, StoreError> {
    let mut tree = Tree::default();
    if !root.is_dir() {
        return Ok(tree);
    }
    capture_dir(store, root, "", &mut tree)?;
    Ok(tree)
}

fn capture_dir(
    store: &dyn Store,
    dir: &Path,
    rel: &str,
    tree: &mut Tree,
) -> Result<(), StoreError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| StoreError::io("read", dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::io("read", dir, e))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            // Artifacts passed the unpacker's checks, which keep only UTF-8
            // names; anything else was put there by someone else.
            return Err(StoreError::UnsafePath(path.display().to_string()));
        };
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| StoreError::io("stat", &path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|e| StoreError::io("read link", &path, e))?;
            tree.entries.push(TreeEntry::Symlink {
                path: child,
                target: target.to_string_lossy().into_owned(),
            });
        } else if meta.is_dir() {
            tree.entries.push(TreeEntry::Dir {
                path: child.clone(),
                mode,
            });
            capture_dir(store, &path, &child, tree)?;
        } else if meta.is_file() {
            let blob = store.put_blob(&path)?;
            tree.entries.push(TreeEntry::File {
                path: child,
                mode,
                blob,
            });
        }
    }
    Ok(())
}

/// A relative path of plain names: no `.`, `..`, root or empty parts.
fn check_rel(path: &str) -> Result<(), StoreError> {
    let plain = !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if plain {
        Ok(())
    } else {
        Err(StoreError::UnsafePath(path.to_owned()))
    }
}

/// Whether a relative symlink at `link` pointing to `target` resolves
/// inside the tree.
fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = link.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Recreates `tree` under `dest` (created; must not hold anything the
/// tree names). Every file is checked against its digest on the way out.
/// On error `dest` may hold part of the tree; the caller removes it.
pub fn restore_tree(store: &dyn Store, tree: &Tree, dest: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dest).map_err(|e| StoreError::io("create", dest, e))?;
    let mut links: HashSet<&str> = HashSet::new();
    for entry in &tree.entries {
        let rel = entry.path();
        check_rel(rel)?;
        // Nothing is written through a link the tree itself made.
        let mut prefix = String::new();
        for part in rel.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if links.contains(prefix.as_str()) {
                return Err(StoreError::UnsafePath(rel.to_owned()));
            }
        }
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::io("create", parent, e))?;
        }
        match entry {
            TreeEntry::Dir { .. } => {
                fs::create_dir_all(&target).map_err(|e| StoreError::io("create", &target, e))?
            }
            TreeEntry::File { mode, blob, .. } => {
                store.get_blob(blob, &target)?;
                set_mode(&target, *mode)?;
            }
            TreeEntry::Symlink { path, target: to } => {
                if !link_stays_inside(path, to) {
                    return Err(StoreError::UnsafePath(format!("{path} -> {to}")));
                }
                symlink(to, &target).map_err(|e| StoreError::io("create symlink", &target, e))?;
                links.insert(path);
            }
        }
    }
    // Directory modes last, deepest first: a read-only directory is only
    // read-only once its contents are in.
    for entry in tree.entries.iter().rev() {
        if let TreeEntry::Dir { path, mode } = entry {
            set_mode(&dest.join(path), *mode)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| StoreError::io("set the mode of", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_only() {
        for ok in ["a", "a/b", "a.b/c-d"] {
            assert!(check_rel(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/../b", "..", "./a", "a//b", "a/"] {
            assert!(check_rel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_must_resolve_inside_the_tree() {
        assert!(link_stays_inside("a", "b"));
        assert!(link_stays_inside("d/a", "../b"));
        assert!(!link_stays_inside("a", "../b"));
        assert!(!link_stays_inside("d/a", "../../b"));
        assert!(!link_stays_inside("a", "/etc/passwd"));
        assert!(!link_stays_inside("a", ""));
    }
}
