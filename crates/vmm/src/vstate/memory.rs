//! Guest RAM.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemoryError {
    #[error("guest memory of {0} MiB is not supported (must be 16..=65536)")]
    BadSize(u32),
    #[error("could not map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("could not map the snapshot memory file")]
    MapSnapshot(String),
    #[error("snapshot memory file is {actual} bytes, expected {expected}")]
    SnapshotSize { actual: u64, expected: u64 },
    #[error("could not write the memory file")]
    Write(#[source] std::io::Error),
    #[error("could not read guest memory")]
    Read(#[source] vm_memory::GuestMemoryError),
}

const PAGE: usize = 4096;

/// Writes guest RAM to `file` as a sparse image: all-zero pages are holes,
/// so a mostly idle 256 MiB guest costs a few tens of MiB on disk.
/// Returns the number of bytes actually written.
pub(crate) fn dump_sparse(
    mem: &GuestMemoryMmap,
    size: u64,
    file: &File,
) -> Result<u64, MemoryError> {
    file.set_len(size).map_err(MemoryError::Write)?;
    let mut page = [0u8; PAGE];
    let mut written = 0u64;
    let mut offset = 0u64;
    while offset < size {
        mem.read_slice(&mut page, GuestAddress(offset))
            .map_err(MemoryError::Read)?;
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(&page, offset)
                .map_err(MemoryError::Write)?;
            written += PAGE as u64;
        }
        offset += PAGE as u64;
    }
    Ok(written)
}

/// Maps a memory file copy-on-write as guest RAM: pages are read lazily
/// from the page cache and shared between every VM restored from the same
/// file until a guest writes them, so restore cost does not grow with RAM.
pub(crate) fn map_snapshot(file: File, mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    let size = (mib as u64) << 20;
    let actual = file.metadata().map_err(MemoryError::Write)?.len();
    if actual != size {
        return Err(MemoryError::SnapshotSize {
            actual,
            expected: size,
        });
    }
    let region = MmapRegionBuilder::new(size as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| MemoryError::MapSnapshot(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| MemoryError::MapSnapshot("region does not fit the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| MemoryError::MapSnapshot(e.to_string()))
}

/// Anonymous guest RAM of `mib` MiB starting at guest-physical 0.
pub(crate) fn create_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    // Above 3 GiB the RAM would overlap the virtio-mmio windows at 0xd0000000;
    // supporting that needs a hole in the map, which no step has asked for yet.
    if !(16..=3072).contains(&mib) {
        return Err(MemoryError::BadSize(mib));
    }
    let size = (mib as usize) << 20;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(MemoryError::Map)
}
