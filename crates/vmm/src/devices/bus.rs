//! Routes guest MMIO accesses to the device whose window contains them.

use std::sync::{Arc, Mutex};

use super::BusDevice;

/// A device shared between the vCPU thread and the VMM's event thread.
pub(crate) type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Window {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Non-overlapping MMIO windows.
#[derive(Default)]
pub(crate) struct MmioBus {
    windows: Vec<Window>,
}

/// A window that would overlap an existing one.
#[derive(Debug, thiserror::Error)]
#[error("MMIO window {base:#x}+{len:#x} overlaps another device")]
pub(crate) struct OverlapError {
    pub base: u64,
    pub len: u64,
}

impl MmioBus {
    /// Adds `device` at `[base, base + len)`.
    pub(crate) fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), OverlapError> {
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        if len == 0
            || self
                .windows
                .iter()
                .any(|w| base < w.base + w.len && w.base < end)
        {
            return Err(OverlapError { base, len });
        }
        self.windows.push(Window { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Window, u64)> {
        self.windows.iter().find_map(|w| {
            let offset = addr.checked_sub(w.base)?;
            (offset.checked_add(size as u64)? <= w.len).then_some((w, offset))
        })
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones,
    /// like an empty bus.
    pub(crate) fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((w, offset)) => lock(&w.device).read(offset, data),
            None => data.fill(0xff),
        }
        tracing::trace!("mmio read {addr:#x} -> {data:02x?}");
    }

    /// Writes to the device at `addr`; unclaimed addresses ignore the write.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) {
        tracing::trace!("mmio write {addr:#x} <- {data:02x?}");
        if let Some((w, offset)) = self.find(addr, data.len()) {
            lock(&w.device).write(offset, data);
        }
    }
}

/// A poisoned device lock means another thread panicked while holding it;
/// the device state is still the best we have, so keep going.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_window_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut buf = [0u8; 4];
        bus.read(0x1010, &mut buf);
        assert_eq!(buf, [0x10; 4]);
        bus.write(0x10fc, &[1, 2, 3, 4]);
        assert_eq!(
            dev.lock().unwrap().last_write,
            Some((0xfc, vec![1, 2, 3, 4]))
        );
    }

    #[test]
    fn accesses_straddling_a_window_end_or_outside_hit_nothing() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut buf = [0u8; 4];
        bus.read(0x10fe, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        bus.write(u64::MAX - 1, &[1, 2, 3, 4]);
        assert!(dev.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn overlapping_windows_are_rejected() {
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(bus
            .insert(0x10ff, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .is_err());
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Recorder::default())))
            .is_err());
    }
}
