//! The VMM's filesystem view: an empty, read-only tmpfs as `/`, with the
//! host's root unmounted, so no path resolves to anything.

use std::ffi::CStr;
use std::ptr;

use super::error::{os_error, JailError, JailStep};

/// Where the new root is mounted before it becomes `/`. Any directory that
/// exists on every host will do: the mount is private to our namespace.
pub const NEW_ROOT: &CStr = c"/tmp";

/// Makes an empty read-only tmpfs the root of this mount namespace and
/// detaches the old root. Needs a private mount namespace and CAP_SYS_ADMIN
/// in it.
pub fn pivot_to_empty_root() -> Result<(), JailError> {
    let step = JailStep::RootFilesystem;
    // SAFETY: every pointer is a NUL-terminated constant or null, as mount(2)
    // allows for these flag combinations; no memory of ours is written.
    unsafe {
        // Mount events must not propagate back to the host's namespace.
        if libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ) != 0
        {
            return Err(os_error(step, "make / private"));
        }
        if libc::mount(
            c"sbxrun-jail".as_ptr(),
            NEW_ROOT.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=4k,nr_inodes=2,mode=0555".as_ptr().cast(),
        ) != 0
        {
            return Err(os_error(step, "mount an empty tmpfs on /tmp"));
        }
        if libc::chdir(NEW_ROOT.as_ptr()) != 0 {
            return Err(os_error(step, "chdir into the new root"));
        }
        // pivot_root(".", ".") stacks the old root on top of the new one;
        // detaching the top mount leaves only the empty tmpfs.
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(os_error(step, "pivot_root"));
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_error(step, "unmount the old root"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(os_error(step, "chdir to the new /"));
        }
        if libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        ) != 0
        {
            return Err(os_error(step, "remount the new root read-only"));
        }
    }
    Ok(())
}
