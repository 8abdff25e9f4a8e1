//! Emulated devices and the MMIO bus they sit on.

pub mod attach;
pub mod bus;
pub mod legacy;
pub mod virtio;

/// A device on the MMIO bus: the vCPU thread calls these on MMIO exits.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}
