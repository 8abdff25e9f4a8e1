//! virtio-blk (device id 2) backed by a host file, with synchronous
//! positioned reads and writes on the vCPU thread that notified the queue.
//!
//! Requests are framed by the chain's readable and writable parts, not by
//! descriptor boundaries: a 16-byte header at the start of the readable
//! part, data after it (OUT) or at the start of the writable part (IN,
//! GET_ID), and the status byte as the last writable byte, written last.

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::queue::{DescriptorChain, QueueContext, QueueError};
use super::{
    chunks, device_type, features, read_config_bytes, DeviceState, VirtioDevice, VirtioError,
};

/// Size of the only queue.
pub(crate) const BLOCK_QUEUE_SIZE: u16 = 256;
/// Bytes per sector; capacity and request offsets count in these.
pub(crate) const SECTOR_SIZE: u64 = 512;
/// Length of the id returned by GET_ID.
pub(crate) const DISK_ID_LEN: usize = 20;

/// Feature: seg_max in config is valid.
pub(crate) const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub(crate) const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: blk_size in config is valid.
pub(crate) const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: FLUSH requests are supported.
pub(crate) const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request type: read sectors.
pub(crate) const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write sectors.
pub(crate) const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub(crate) const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device id string.
pub(crate) const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub(crate) const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: request failed.
pub(crate) const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub(crate) const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const HEADER_LEN: u32 = 16;
const CONFIG_LEN: usize = 24;
/// Bounce buffer size for copies between file and guest memory.
const CHUNK: usize = 128 * 1024;

/// Errors of setting up a block device and of single requests.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockError {
    /// The id given at construction is longer than GET_ID can return.
    #[error("disk id is {0} bytes, at most {DISK_ID_LEN} allowed")]
    DiskIdTooLong(usize),
    /// The backing file's size could not be read.
    #[error("failed to read backing file size")]
    FileSize(#[source] io::Error),
    /// The chain is too short for a request header.
    #[error("request header missing or short ({0} readable bytes)")]
    HeaderTooShort(u32),
    /// The chain has no writable byte for the status.
    #[error("request has no writable status byte")]
    MissingStatus,
    /// Data buffers point the wrong way for the request type.
    #[error("request type {0} has data buffers of the wrong direction")]
    WrongDirection(u32),
    /// A request that needs data has none.
    #[error("request type {0} has no data buffer")]
    NoData(u32),
    /// Data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of the sector size")]
    UnalignedLength(u32),
    /// Access beyond the end of the disk.
    #[error("sectors {sector}+{count} beyond capacity {capacity}")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// Write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The backing file failed.
    #[error("backing file i/o failed")]
    Io(#[source] io::Error),
    /// Guest buffers could not be accessed.
    #[error("guest buffer access failed")]
    Queue(#[source] QueueError),
}

impl BlockError {
    fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Saved state of a block device: only what must match on restore, since
/// requests never outlive the notification that started them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockState {
    /// Whether the disk was read-only.
    pub read_only: bool,
    /// Capacity in sectors the guest saw.
    pub capacity_sectors: u64,
    /// The GET_ID string, zero-padded.
    pub disk_id: Vec<u8>,
}

/// A virtio-blk device.
pub(crate) struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    disk_id: [u8; DISK_ID_LEN],
    acked_features: u64,
    activated: bool,
    queue_sizes: [u16; 1],
}

impl Block {
    /// A disk backed by `file` (opened read-write unless `read_only`), with
    /// capacity the file size rounded down to whole sectors. `disk_id` is
    /// returned by GET_ID, zero-padded to 20 bytes.
    pub(crate) fn new(file: File, read_only: bool, disk_id: &[u8]) -> Result<Self, BlockError> {
        if disk_id.len() > DISK_ID_LEN {
            return Err(BlockError::DiskIdTooLong(disk_id.len()));
        }
        let mut id = [0u8; DISK_ID_LEN];
        id[..disk_id.len()].copy_from_slice(disk_id);
        let size = file.metadata().map_err(BlockError::FileSize)?.len();
        Ok(Self {
            file,
            read_only,
            capacity: size / SECTOR_SIZE,
            disk_id: id,
            acked_features: 0,
            activated: false,
            queue_sizes: [BLOCK_QUEUE_SIZE],
        })
    }

    /// Capacity in sectors.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // Header and status take two descriptors of every chain.
        let seg_max = u32::from(BLOCK_QUEUE_SIZE - 2);
        config[12..16].copy_from_slice(&seg_max.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config
    }

    /// Byte offset of `len` bytes at `sector`, checked against capacity.
    fn disk_offset(&self, sector: u64, len: u32) -> Result<u64, BlockError> {
        if u64::from(len) % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedLength(len));
        }
        let count = u64::from(len) / SECTOR_SIZE;
        let out_of_range = BlockError::OutOfRange {
            sector,
            count,
            capacity: self.capacity,
        };
        match sector.checked_add(count) {
            Some(end) if end <= self.capacity => Ok(sector * SECTOR_SIZE),
            _ => Err(out_of_range),
        }
    }

    /// Runs one request; returns how many data bytes it wrote to the guest.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
    ) -> Result<u32, BlockError> {
        let readable = chain.readable_len();
        if readable < HEADER_LEN {
            return Err(BlockError::HeaderTooShort(readable));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        chain
            .read_at(mem, 0, &mut header)
            .map_err(BlockError::Queue)?;
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let data_out = readable - HEADER_LEN;
        // The caller made sure there is a status byte.
        let data_in = chain.writable_len() - 1;
        match kind {
            VIRTIO_BLK_T_IN => {
                if data_out != 0 {
                    return Err(BlockError::WrongDirection(kind));
                }
                if data_in == 0 {
                    return Err(BlockError::NoData(kind));
                }
                let pos = self.disk_offset(sector, data_in)?;
                self.copy_to_guest(mem, chain, pos, data_in)?;
                Ok(data_in)
            }
            VIRTIO_BLK_T_OUT => {
                if data_in != 0 {
                    return Err(BlockError::WrongDirection(kind));
                }
                if data_out == 0 {
                    return Err(BlockError::NoData(kind));
                }
                if self.read_only {
                    return Err(BlockError::ReadOnly);
                }
                let pos = self.disk_offset(sector, data_out)?;
                self.copy_from_guest(mem, chain, pos, data_out)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(BlockError::Io)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if data_in == 0 {
                    return Err(BlockError::NoData(kind));
                }
                let n = (data_in as usize).min(DISK_ID_LEN);
                chain
                    .write_at(mem, 0, &self.disk_id[..n])
                    .map_err(BlockError::Queue)?;
                Ok(n as u32)
            }
            _ => Err(BlockError::Unsupported(kind)),
        }
    }

    fn copy_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        pos: u64,
        len: u32,
    ) -> Result<(), BlockError> {
        let mut buf = vec![0u8; (len as usize).min(CHUNK)];
        for (done, n) in chunks(u64::from(len), CHUNK) {
            self.file
                .read_exact_at(&mut buf[..n], pos + done)
                .map_err(BlockError::Io)?;
            chain
                .write_at(mem, done, &buf[..n])
                .map_err(BlockError::Queue)?;
        }
        Ok(())
    }

    fn copy_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        pos: u64,
        len: u32,
    ) -> Result<(), BlockError> {
        let mut buf = vec![0u8; (len as usize).min(CHUNK)];
        for (done, n) in chunks(u64::from(len), CHUNK) {
            chain
                .read_at(mem, u64::from(HEADER_LEN) + done, &mut buf[..n])
                .map_err(BlockError::Queue)?;
            self.file
                .write_all_at(&buf[..n], pos + done)
                .map_err(BlockError::Io)?;
        }
        Ok(())
    }

    fn complete(
        &mut self,
        ctx: &mut QueueContext<'_>,
        chain: DescriptorChain,
    ) -> Result<(), QueueError> {
        let mem = ctx.mem();
        let writable = chain.writable_len();
        if writable == 0 {
            tracing::warn!(error = %BlockError::MissingStatus, "rejecting block request");
            return ctx.add_used(0, chain.head(), 0);
        }
        let (status, written) = match self.execute(mem, &chain) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(err) => {
                tracing::debug!(error = %err, "block request failed");
                (err.status(), 0)
            }
        };
        // In range: writable >= 1 was checked above.
        if let Err(err) = chain.write_at(mem, u64::from(writable - 1), &[status]) {
            tracing::warn!(error = %err, "cannot write block request status");
            return ctx.add_used(0, chain.head(), 0);
        }
        ctx.add_used(0, chain.head(), written + 1)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        let mut f = features::bit(features::VERSION_1)
            | features::bit(VIRTIO_BLK_F_SEG_MAX)
            | features::bit(VIRTIO_BLK_F_BLK_SIZE)
            | features::bit(VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= features::bit(VIRTIO_BLK_F_RO);
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // No writable field without the CONFIG_WCE feature.
        tracing::debug!(offset, "ignored write to virtio-blk config");
    }

    fn activate(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), VirtioError> {
        if !ctx.queue(0).is_ok_and(|q| q.ready()) {
            return Err(VirtioError::QueueNotReady { index: 0 });
        }
        self.activated = true;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), QueueError> {
        if index != 0 || !self.activated {
            return Ok(());
        }
        while let Some(chain) = ctx.pop_chain(0)? {
            self.complete(ctx, chain)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.activated = false;
        self.acked_features = 0;
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            read_only: self.read_only,
            capacity_sectors: self.capacity,
            disk_id: self.disk_id.to_vec(),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioError> {
        let DeviceState::Block(state) = state else {
            return Err(VirtioError::StateTypeMismatch);
        };
        if state.read_only != self.read_only || state.capacity_sectors != self.capacity {
            return Err(VirtioError::StateMismatch(format!(
                "saved disk was {} sectors read_only={}, this one is {} sectors read_only={}",
                state.capacity_sectors, state.read_only, self.capacity, self.read_only
            )));
        }
        if state.disk_id != self.disk_id {
            return Err(VirtioError::StateMismatch("disk id differs".into()));
        }
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
