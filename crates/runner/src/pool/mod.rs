//! MicroVMs as the runner sees them: separate `__vmm` processes driven
//! through the control protocol, the guest sessions inside them, and the
//! root images they boot from.

pub mod cache;
pub mod container;
pub mod dir_images;
pub mod image;
pub mod launch;
pub mod session;
pub mod snapshot;
pub mod vm;
pub mod warm;

pub use image::{resolve_image, resolve_image_reporting, ImageError};
pub use session::{OutputStream, RunError, RunOutcome};
pub use vm::{VmHandle, VmHandleError};
