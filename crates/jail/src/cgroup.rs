//! Per-VM cgroups bounding a VMM's memory (guest RAM + VMM overhead) and
//! process count. The runner creates one per VM, the VMM joins it first
//! thing (so everything it allocates is counted), and the runner removes
//! it once the VMM is gone. cgroup v1 (one directory per controller
//! hierarchy) and v2 (one directory) are both handled; a host that offers
//! neither gets VMs without a cgroup and a warning.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why no cgroup could be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("this host has no {0} cgroup controller mounted")]
    NoController(&'static str),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create or configure {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What a VM's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// A per-VM cgroup, removed when dropped.
#[derive(Debug)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
    /// The file in each directory that a process writes "0" into to join.
    join_file: &'static str,
}

/// cgroup v1: moves only the writing thread. The VMM joins while it is
/// single-threaded, so that is the whole process, and the kernel skips the
/// global threadgroup lock (and its RCU grace period, ~10 ms on our hosts)
/// that a `cgroup.procs` write takes.
const V1_JOIN_FILE: &str = "tasks";
/// cgroup v2: `cgroup.threads` needs threaded cgroups, so the process file.
const V2_JOIN_FILE: &str = "cgroup.procs";

const CONTROLLERS: [&str; 2] = ["memory", "pids"];

impl VmCgroup {
    /// Creates `sbxrun-<pid>-<n>` under this process's own cgroup, in
    /// each hierarchy we need, with `limits` applied.
    pub fn create(limits: CgroupLimits) -> Result<Self, CgroupError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sbxrun-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mounts = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        let mut cgroup = VmCgroup {
            dirs: Vec::new(),
            join_file: V1_JOIN_FILE,
        };
        if let Some(root) = v2_mount(&mounts) {
            cgroup.join_file = V2_JOIN_FILE;
            let parent = root.join(own_path(&own, "").unwrap_or_default());
            let dir = parent.join(&name);
            make_dir(&dir)?;
            cgroup.dirs.push(dir.clone());
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            return Ok(cgroup);
        }
        for controller in CONTROLLERS {
            let root =
                v1_mount(&mounts, controller).ok_or(CgroupError::NoController(controller))?;
            let parent = root.join(own_path(&own, controller).unwrap_or_default());
            let dir = parent.join(&name);
            make_dir(&dir)?;
            cgroup.dirs.push(dir.clone());
            match controller {
                "memory" => write(
                    &dir.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?,
                _ => write(&dir.join("pids.max"), &limits.pids.to_string())?,
            }
        }
        Ok(cgroup)
    }

    /// The files a process writes itself into to join (`tasks` on v1,
    /// `cgroup.procs` on v2); the VMM writes them while single-threaded.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join(self.join_file)).collect()
    }

    /// The cgroup directories (one per hierarchy).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        // The VMM's last threads may still be exiting when the runner has
        // reaped the relay, so an EBUSY is retried briefly.
        let deadline = Instant::now() + Duration::from_millis(500);
        for dir in &self.dirs {
            while let Err(e) = fs::remove_dir(dir) {
                if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Moves the calling process into each cgroup (writing "0" names the
/// writer). Returns the file that refused and why.
pub fn join_cgroup(procs_files: &[PathBuf]) -> Result<(), (String, io::Error)> {
    for file in procs_files {
        fs::write(file, "0").map_err(|e| (file.display().to_string(), e))?;
    }
    Ok(())
}

fn read(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir(dir).map_err(|source| CgroupError::Write {
        path: dir.display().to_string(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Mount points from /proc/self/mountinfo as (mount point, fs type, super options).
fn mount_entries(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1)?;
        Some((mount_point, fstype, options))
    })
}

fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    // A hybrid host mounts cgroup2 next to v1 hierarchies; it only counts
    // when it actually holds the controllers.
    mount_entries(mountinfo)
        .filter(|(_, fstype, _)| *fstype == "cgroup2")
        .map(|(mp, _, _)| PathBuf::from(mp))
        .find(|mp| {
            fs::read_to_string(mp.join("cgroup.controllers"))
                .map(|c| {
                    CONTROLLERS
                        .iter()
                        .all(|want| c.split_whitespace().any(|have| have == *want))
                })
                .unwrap_or(false)
        })
}

fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mount_entries(mountinfo)
        .find(|(_, fstype, options)| {
            *fstype == "cgroup" && options.split(',').any(|o| o == controller)
        })
        .map(|(mp, _, _)| PathBuf::from(mp))
}

/// This process's cgroup in the hierarchy holding `controller` ("" = v2),
/// relative to the hierarchy's root.
fn own_path(proc_cgroup: &str, controller: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn v1_mount_finds_the_hierarchy_of_each_controller() {
        assert_eq!(
            v1_mount(MOUNTINFO, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(MOUNTINFO, "cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1_mount(MOUNTINFO, "blkio"), None);
    }

    #[test]
    fn own_path_reads_v1_and_v2_lines() {
        let own = "4:memory:/jobs/a\n8:pids:/\n0::/user.slice/x.scope\n";
        assert_eq!(own_path(own, "memory"), Some(PathBuf::from("jobs/a")));
        assert_eq!(own_path(own, "pids"), Some(PathBuf::from("")));
        assert_eq!(own_path(own, ""), Some(PathBuf::from("user.slice/x.scope")));
        assert_eq!(own_path(own, "cpu"), None);
    }
}
