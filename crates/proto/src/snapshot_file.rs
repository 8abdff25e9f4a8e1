//! The snapshot state file: a fixed header (magic, format version, payload
//! length, SHA-256 of the payload) and a JSON payload. A file of another
//! major version, a wrong checksum or a payload over the cap is refused
//! whole — never half-read — so the pool rebuilds the snapshot.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"SBXSNAP\0";
/// Bumped for any change an older reader cannot understand.
pub const FORMAT_MAJOR: u16 = 3;
/// Bumped for compatible additions.
pub const FORMAT_MINOR: u16 = 1;
/// Largest payload we deserialize.
pub const MAX_PAYLOAD: u64 = 64 << 20;
const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 8 + 32;

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot access the state file")]
    Io(#[from] std::io::Error),
    #[error("not a snapshot state file (bad magic)")]
    BadMagic,
    #[error("snapshot format {found}.x, this sbxrun reads {FORMAT_MAJOR}.x")]
    OtherVersion { found: u16 },
    #[error("state payload of {0} bytes exceeds the {MAX_PAYLOAD} byte cap")]
    TooLarge(u64),
    #[error("state file is truncated")]
    Truncated,
    #[error("state file checksum mismatch")]
    Checksum,
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode the state")]
    Decode(#[source] serde_json::Error),
}

/// Serializes `state` into a complete state file image.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotFileError> {
    let payload = serde_json::to_vec(state).map_err(SnapshotFileError::Encode)?;
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(SnapshotFileError::TooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses a state file image, checking everything before deserializing.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotFileError> {
    if bytes.len() < HEADER_LEN {
        return Err(if bytes.len() >= 8 && bytes[..8] != MAGIC {
            SnapshotFileError::BadMagic
        } else {
            SnapshotFileError::Truncated
        });
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let major = u16::from_le_bytes([bytes[8], bytes[9]]);
    if major != FORMAT_MAJOR {
        return Err(SnapshotFileError::OtherVersion { found: major });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    if len > MAX_PAYLOAD {
        return Err(SnapshotFileError::TooLarge(len));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(SnapshotFileError::Truncated);
    }
    if Sha256::digest(payload).as_slice() != &bytes[24..56] {
        return Err(SnapshotFileError::Checksum);
    }
    serde_json::from_slice(payload).map_err(SnapshotFileError::Decode)
}

/// Writes a state file (the caller makes the directory appear atomically).
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<(), SnapshotFileError> {
    let bytes = encode(state)?;
    let mut f = File::create(path)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Reads a state file, refusing anything larger than the cap before reading it.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotFileError> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    if size > MAX_PAYLOAD + HEADER_LEN as u64 {
        return Err(SnapshotFileError::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(MAX_PAYLOAD + HEADER_LEN as u64)
        .read_to_end(&mut bytes)?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        regs: Vec<u64>,
        name: String,
    }

    fn sample() -> Sample {
        Sample {
            regs: vec![1, 2, 3],
            name: "vcpu0".into(),
        }
    }

    #[test]
    fn state_round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn restore_rejects_snapshot_of_other_major_version() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8..10].copy_from_slice(&(FORMAT_MAJOR + 1).to_le_bytes());
        assert!(
            matches!(decode::<Sample>(&bytes), Err(SnapshotFileError::OtherVersion { found }) if found == FORMAT_MAJOR + 1)
        );
    }

    #[test]
    fn restore_rejects_flipped_byte_in_payload() {
        let mut bytes = encode(&sample()).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(SnapshotFileError::Checksum)
        ));
    }

    #[test]
    fn restore_rejects_truncated_file() {
        let bytes = encode(&sample()).unwrap();
        for cut in [0, 7, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            assert!(
                decode::<Sample>(&bytes[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn restore_rejects_oversized_length_without_reading_it() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[16..24].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(SnapshotFileError::TooLarge(_))
        ));
    }

    #[test]
    fn restore_rejects_foreign_file() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(SnapshotFileError::BadMagic)
        ));
    }
}
