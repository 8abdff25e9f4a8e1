//! SHA-256 of bytes and files, streamed.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::StoreError;

const CHUNK: usize = 256 * 1024;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads `input` (the file at `src`) to its end, hashing it and, when
/// given, writing it to `out` (the file at the path beside it).
fn hash_through(
    mut input: File,
    src: &Path,
    mut out: Option<(File, &Path)>,
) -> Result<(String, u64), StoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| StoreError::io("read", src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some((f, dest)) = &mut out {
            f.write_all(&buf[..n])
                .map_err(|e| StoreError::io("write", dest, e))?;
        }
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// Lowercase hex SHA-256 and length of a file's contents.
pub fn sha256_file(path: &Path) -> Result<(String, u64), StoreError> {
    let f = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    hash_through(f, path, None)
}

/// Copies `src` into the new file `dest`, hashing on the way: one read
/// of the source gives both the copy and its digest. Returns the hex
/// SHA-256 and length of what was written.
pub fn copy_hashing(src: &Path, dest: &Path) -> Result<(String, u64), StoreError> {
    let input = File::open(src).map_err(|e| StoreError::io("open", src, e))?;
    let out = File::options()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| StoreError::io("create", dest, e))?;
    hash_through(input, src, Some((out, dest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_matches_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let (hex, len) = sha256_file(&p).unwrap();
        assert_eq!(len, 5);
        assert_eq!(hex, sha256_hex(b"hello"));
        assert_eq!(
            hex,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let copy = dir.path().join("g");
        assert_eq!(copy_hashing(&p, &copy).unwrap(), (hex, 5));
        assert_eq!(std::fs::read(&copy).unwrap(), b"hello");
        // Never overwrites.
        assert!(copy_hashing(&p, &copy).is_err());
    }
}
