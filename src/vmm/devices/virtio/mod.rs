//! virtio-mmio devices (in progress).
