//! The memory limit of a step: a cgroup v2 with `memory.max`. The
//! hierarchy (mount, memory controller, the step's cgroup) is prepared at
//! boot, before the pool snapshot, because creating it costs about 0.2 s of
//! emulated guest kernel time on kvm-pvm hosts; a request without a memory
//! limit touches none of it, one with a limit only writes the limit.
//!
//! The guest has no swap, so `memory.max` bounds all of the step's memory
//! (its tmpfs files included) and `memory.swap.max` needs no setting.
//! Memory overcommit is switched to "always" for such a step: otherwise the
//! kernel's heuristic refuses one large allocation with ENOMEM before the
//! cgroup ever sees it, and the step fails like any other error instead of
//! running into its limit. With overcommit the pages are charged as they
//! are touched, and the limit shows in `memory.events` (`oom`, `oom_kill`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use guest_init::proto::MemoryEvents;

use crate::sys;

/// Where guest-init mounts the cgroup v2 hierarchy.
const ROOT: &str = "/sys/fs/cgroup";
/// The steps' cgroup below it.
const STEP: &str = "/sys/fs/cgroup/step";

/// Whether a request of this guest-init already used the step's cgroup
/// (its counters then start where that one left them).
static USED: AtomicBool = AtomicBool::new(false);

/// Mounts the cgroup v2 hierarchy, enables the memory controller below its
/// root and creates the steps' cgroup.
pub fn prepare_hierarchy() -> io::Result<()> {
    sys::mount(
        "cgroup2",
        ROOT,
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    )
    .map_err(|e| with_context(e, "mount cgroup2"))?;
    fs::write(format!("{ROOT}/cgroup.subtree_control"), "+memory")
        .map_err(|e| with_context(e, "enable the memory controller"))?;
    fs::create_dir(STEP).map_err(|e| with_context(e, "create the step's cgroup"))
}

/// The step's cgroup, ready for the child to join.
pub struct StepCgroup {
    procs: File,
    /// Counters left by an earlier request of this guest, if any.
    baseline: MemoryEvents,
}

impl StepCgroup {
    /// Sets the step's limit on the cgroup prepared at boot and allows
    /// overcommit.
    pub fn create(max_bytes: u64) -> io::Result<StepCgroup> {
        let limit = format!("{STEP}/memory.max");
        let first = !USED.swap(true, Ordering::Relaxed);
        if let Err(e) = fs::write(&limit, max_bytes.to_string()) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(with_context(e, "set memory.max"));
            }
            // Preparing at boot failed; doing it now gives the reason.
            prepare_hierarchy()?;
            fs::write(&limit, max_bytes.to_string())
                .map_err(|e| with_context(e, "set memory.max"))?;
        }
        if first {
            fs::write("/proc/sys/vm/overcommit_memory", "1")
                .map_err(|e| with_context(e, "allow memory overcommit"))?;
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(format!("{STEP}/cgroup.procs"))
            .map_err(|e| with_context(e, "open cgroup.procs"))?;
        let mut cg = StepCgroup {
            procs,
            baseline: MemoryEvents::default(),
        };
        if !first {
            cg.baseline = cg.read_events();
        }
        Ok(cg)
    }

    /// The descriptor the child writes itself into.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's event counters so far; zero when they cannot be read
    /// (the verdict then rests on the exit status alone).
    pub fn events(&self) -> MemoryEvents {
        let now = self.read_events();
        MemoryEvents {
            max: now.max.saturating_sub(self.baseline.max),
            oom: now.oom.saturating_sub(self.baseline.oom),
            oom_kill: now.oom_kill.saturating_sub(self.baseline.oom_kill),
        }
    }

    fn read_events(&self) -> MemoryEvents {
        fs::read_to_string(format!("{STEP}/memory.events"))
            .map(|t| MemoryEvents::parse(&t))
            .unwrap_or_default()
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("memory limit: {what}: {e}"))
}
