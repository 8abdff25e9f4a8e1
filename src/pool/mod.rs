//! MicroVMs as the runner sees them: separate `__vmm` processes driven
//! through the control protocol, and the guest sessions inside them.

pub mod cache;
pub mod launch;
pub mod session;
pub mod snapshot;
pub mod vm;
pub mod warm;

pub use session::{OutputStream, RunError, RunOutcome};
pub use vm::{VmHandle, VmHandleError};
