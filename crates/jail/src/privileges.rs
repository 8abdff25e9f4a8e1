//! Credentials, capabilities, no_new_privs and rlimits of a jailed process.

use std::io;

use super::error::{os_error, JailError, JailStep};

/// The uid/gid a jailed VMM runs as when started by root ("nobody"): even
/// the few kernel interfaces left to it see an unprivileged user.
const JAIL_ID: libc::uid_t = 65534;

/// Descriptors a jailed VMM may hold: it opened all it needs (about a dozen)
/// before the jail, so this only bounds what a compromised one could open.
const MAX_FDS: libc::rlim_t = 128;

/// Asks for SIGKILL when the parent (the relay) dies.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// No core dumps (guest memory must not land on disk), bounded descriptors,
/// nothing locked in memory. Processes are bounded by the cgroup's
/// pids.max and the seccomp filter (threads only): RLIMIT_NPROC counts per
/// host uid, which every VMM shares.
pub fn set_rlimits() -> Result<(), JailError> {
    for (resource, limit, name) in [
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (libc::RLIMIT_NOFILE, MAX_FDS, "RLIMIT_NOFILE"),
        (libc::RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK"),
    ] {
        let value = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: `value` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(resource, &value) } != 0 {
            return Err(os_error(
                JailStep::Rlimits,
                format!("set {name} to {limit}"),
            ));
        }
    }
    Ok(())
}

/// Empties the bounding and ambient sets, becomes "nobody" (unless inside
/// a user namespace, where only our own uid is mapped), clears every
/// capability, and sets no_new_privs and non-dumpable.
pub fn drop_all(user_namespace: bool) -> Result<(), JailError> {
    // SAFETY: the prctl and set*id calls below take plain integers and
    // touch no memory of ours; capset gets valid header and data structs.
    unsafe {
        // The bounding set needs CAP_SETPCAP, so it goes before the uid change.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(os_error(
                    JailStep::Capabilities,
                    format!("drop capability {cap} from the bounding set"),
                ));
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(os_error(JailStep::Capabilities, "clear the ambient set"));
        }
        if !user_namespace {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(os_error(JailStep::Credentials, "drop supplementary groups"));
            }
            if libc::setresgid(JAIL_ID, JAIL_ID, JAIL_ID) != 0 {
                return Err(os_error(
                    JailStep::Credentials,
                    format!("setresgid({JAIL_ID})"),
                ));
            }
            if libc::setresuid(JAIL_ID, JAIL_ID, JAIL_ID) != 0 {
                return Err(os_error(
                    JailStep::Credentials,
                    format!("setresuid({JAIL_ID})"),
                ));
            }
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(os_error(
                JailStep::Capabilities,
                "clear the effective, permitted and inheritable sets",
            ));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os_error(JailStep::NoNewPrivileges, "PR_SET_NO_NEW_PRIVS"));
        }
        // Non-dumpable: no core, and /proc/<pid> of the VMM belongs to root.
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(os_error(JailStep::NoNewPrivileges, "PR_SET_DUMPABLE"));
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
