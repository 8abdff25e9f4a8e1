//! Boot-time setup of the VM: pseudo filesystems, the read-only root image
//! with a size-capped writable overlay, and the mounts inside the step root.
//! All of it happens before `Ready`, so it is part of the pool snapshot and
//! costs nothing per step.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{chown, DirBuilderExt};
use std::time::{Duration, Instant};

use crate::run::{SBX_ID, STEP_ROOT};
use crate::sys::{self, Context, SysError};

/// Root image device.
const ROOT_DEVICE: &str = "/dev/vda";
/// Overlay size when the kernel command line sets none.
const DEFAULT_OVERLAY_SIZE: &str = "256M";
/// Kernel command line parameter for the overlay size.
const OVERLAY_SIZE_PARAM: &str = "sbxrun.overlay_size=";
/// How long to wait for the root device to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

const LOWER: &str = "/mnt/lower";
const RW: &str = "/mnt/rw";

/// Why the kernel command line is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The overlay size is not `<digits>[kKmMgG%]`.
    #[error("invalid {OVERLAY_SIZE_PARAM}{0:?}: expected digits with an optional k/m/g/% suffix")]
    BadOverlaySize(String),
}

/// The tmpfs `size=` value for the overlay: the last
/// `sbxrun.overlay_size=` on the command line, or the default.
pub fn overlay_size(cmdline: &str) -> Result<String, CmdlineError> {
    let Some(v) = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(OVERLAY_SIZE_PARAM))
        .next_back()
    else {
        return Ok(DEFAULT_OVERLAY_SIZE.to_owned());
    };
    let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    let suffix_len = v.len() - digits.len();
    if digits.is_empty() || suffix_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CmdlineError::BadOverlaySize(v.to_owned()));
    }
    Ok(v.to_owned())
}

/// Setup failures; all are fatal.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A syscall failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), SysError> {
    sys::mount(src, target, fstype, flags, data).context(format!("mount {fstype} on {target}"))
}

/// Mounts devtmpfs on /dev and makes sure fds 0-2 exist (the kernel leaves
/// them closed when the initramfs has no /dev/console), so later
/// descriptors never land on 0-2.
pub fn early() -> Result<(), SysError> {
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    if !sys::fd_is_open(0) {
        let console = File::options()
            .read(true)
            .write(true)
            .open("/dev/console")
            .context("open /dev/console")?;
        let fd = console.into_raw_fd();
        for target in 0..3 {
            if target != fd {
                sys::dup2(fd, target).context("dup /dev/console")?;
            }
        }
        if fd > 2 {
            // SAFETY: `fd` came from into_raw_fd above and is no longer used.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Mounts everything else and prepares the step root.
pub fn mounts() -> Result<(), SetupError> {
    mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, "")?;
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777,size=16M",
    )?;
    let cmdline = fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
    let size = overlay_size(&cmdline)?;

    mount_root_device()?;
    mount("tmpfs", RW, "tmpfs", 0, &format!("mode=0755,size={size}"))?;
    for dir in ["upper", "work"] {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(format!("{RW}/{dir}"))
            .context(format!("create {RW}/{dir}"))?;
    }
    mount(
        "overlay",
        STEP_ROOT,
        "overlay",
        0,
        &format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work"),
    )?;

    inner_mount("proc", "proc", "proc", NOSUID_NODEV_NOEXEC)?;
    inner_mount("sysfs", "sys", "sysfs", NOSUID_NODEV_NOEXEC)?;
    inner_mount("/dev", "dev", "", libc::MS_BIND)?;
    ensure_workdir()?;
    Ok(())
}

/// Mounts the root image, waiting briefly for the block driver to register.
fn mount_root_device() -> Result<(), SysError> {
    // Polled with stat, not mount: every failed mount logs a kernel message.
    let start = Instant::now();
    while !std::path::Path::new(ROOT_DEVICE).exists() && start.elapsed() < DEVICE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    // noload: never replay a journal on a read-only image.
    sys::mount(ROOT_DEVICE, LOWER, "ext4", libc::MS_RDONLY, "noload")
        .context(format!("mount {ROOT_DEVICE} (ext4) on {LOWER}"))
}

/// Mounts inside the step root, creating the mount point in the overlay when
/// a user-supplied image lacks it.
fn inner_mount(src: &str, dir: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), SysError> {
    let target = format!("{STEP_ROOT}/{dir}");
    match sys::mount(src, &target, fstype, flags, "") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&target)
                .context(format!("create {target}"))?;
            mount(src, &target, fstype, flags, "")
        }
        r => r.context(format!("mount {src} on {target}")),
    }
}

/// The default working directory must exist and belong to the step user.
/// It is chowned even when the image has it: that copies it up into the
/// overlay's writable layer now, before the snapshot, instead of in every
/// step that writes a file there (a copy-up is dozens of emulated kernel
/// operations on kvm-pvm hosts).
fn ensure_workdir() -> Result<(), SysError> {
    let work = format!("{STEP_ROOT}{}", guest_init::proto::DEFAULT_CWD);
    match fs::DirBuilder::new().mode(0o755).create(&work) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).context(format!("create {work}")),
    }
    chown(&work, Some(SBX_ID), Some(SBX_ID)).context(format!("chown {work}"))
}

/// Opens a device kept open for the whole life of guest-init.
pub fn open_device(path: &str, write: bool) -> Result<std::os::fd::OwnedFd, SysError> {
    let f = File::options()
        .read(true)
        .write(write)
        .open(path)
        .context(format!("open {path}"))?;
    debug_assert!(f.as_raw_fd() > 2);
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_size_defaults_and_takes_the_last_value() {
        assert_eq!(overlay_size("console=ttyS0 quiet").unwrap(), "256M");
        assert_eq!(
            overlay_size("sbxrun.overlay_size=1G x sbxrun.overlay_size=64m").unwrap(),
            "64m"
        );
        assert_eq!(overlay_size("sbxrun.overlay_size=50%").unwrap(), "50%");
        assert_eq!(
            overlay_size("sbxrun.overlay_size=1048576").unwrap(),
            "1048576"
        );
    }

    #[test]
    fn overlay_size_rejects_what_tmpfs_would_misread() {
        for bad in ["", "M", "12MM", "1,nr_inodes=1", "-5", "1T"] {
            let line = format!("sbxrun.overlay_size={bad}");
            assert_eq!(
                overlay_size(&line),
                Err(CmdlineError::BadOverlaySize(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
