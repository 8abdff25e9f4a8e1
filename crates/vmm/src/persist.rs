//! The one shape every stateful piece of the VMM is saved and restored in.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Saving a live piece of the VM into plain data, and building it again
/// from that data.
///
/// - [`Persist::State`] is a plain serde struct that ends up in the
///   snapshot state file; it holds no fds, no guest memory, no threads.
/// - [`Persist::RestoreArgs`] is what the state cannot carry: the host
///   resources a restored piece is built around (the VM, guest memory,
///   irqfds, a device's backend, ...). They are opened from the runner's
///   config exactly as for a cold boot, so a restore differs from a boot
///   only in where the guest-visible state comes from. It is a generic
///   associated type so that arguments can borrow (`&Vm`, `&GuestMemoryMmap`)
///   for as long as the restore runs.
/// - `save` takes `&self` and never changes the piece; the caller makes
///   sure it is quiescent (vCPUs paused, see `runtime::snapshot`), since
///   saving a running piece is an error, not a race. It returns a
///   `Result` even where a piece cannot fail to save (queues, serial) so
///   that every piece reads the same at the call site.
/// - `restore` checks the state against the arguments before using it: a
///   snapshot of another VM shape is refused, never half-applied.
///
/// Virtio devices are held by their transport as `dyn VirtioDevice`, which
/// cannot have a constructor; their part of the transport's state goes
/// through the object-safe `VirtioDevice::save_state`/`restore_state`
/// (applied to a device freshly built around its backend), and only the
/// transport is `Persist`.
pub(crate) trait Persist: Sized {
    /// The saved form.
    type State: Serialize + DeserializeOwned;
    /// The host resources a restored piece is built around.
    type RestoreArgs<'a>;
    /// Why saving or restoring failed.
    type Error: std::error::Error;

    /// Captures the piece's guest-visible state.
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Builds the piece around `args` in the state `state` describes.
    fn restore(args: Self::RestoreArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}
