//! Legacy PC devices: the 8250 UART carrying the kernel console.

pub(crate) mod serial;
