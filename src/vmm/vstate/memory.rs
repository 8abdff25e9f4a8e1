//! Guest RAM.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is not supported (must be 16..=65536)")]
    BadSize(u32),
    #[error("could not map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Anonymous guest RAM of `mib` MiB starting at guest-physical 0.
pub fn create_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    // Above 3 GiB the RAM would overlap the virtio-mmio windows at 0xd0000000;
    // supporting that needs a hole in the map, which no step has asked for yet.
    if !(16..=3072).contains(&mib) {
        return Err(MemoryError::BadSize(mib));
    }
    let size = (mib as usize) << 20;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(MemoryError::Map)
}
