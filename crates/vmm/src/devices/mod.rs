//! Emulated devices and the MMIO bus they sit on.

pub(crate) mod attach;
pub(crate) mod bus;
pub(crate) mod legacy;
pub(crate) mod virtio;

/// A device on the MMIO bus: the vCPU thread calls these on MMIO exits.
pub(crate) trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}
