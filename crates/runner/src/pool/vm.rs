//! One `__vmm` child process: spawn it, feed it its config, and turn what
//! it and the guest send into one ordered stream of events.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use guest_init::proto::{FrameDecoder, GuestMsg, ProtoError};

use sbxrun_jail::{CgroupLimits, VmCgroup};
use sbxrun_proto::control::{
    read_frame, write_frame, FrameError, VmConfig, VmExit, VmmEvent, VmmRequest,
};
use sbxrun_proto::netchan;

use sbxrun_proto::control::{CHILD_CONTROL_FD, CHILD_GUEST_FD, CHILD_NET_FD};

/// Errors starting or talking to a VMM process.
#[derive(Debug, thiserror::Error)]
pub enum VmHandleError {
    #[error("cannot create the channels to the VMM")]
    Channels(#[source] std::io::Error),
    #[error("cannot start the VMM process {exe}")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control channel to the VMM")]
    Control(#[from] FrameError),
    #[error("the VM stopped: {}", .0.describe())]
    Exited(VmExit),
    #[error("the VMM process ended without reporting why")]
    VmmGone,
    #[error("no answer from the VM within {0:?}")]
    Timeout(Duration),
    #[error("the guest broke the protocol")]
    Protocol(#[from] ProtoError),
    #[error("cannot send to the guest")]
    GuestSend(#[source] std::io::Error),
    #[error("the guest sent {0} where it should not")]
    Unexpected(&'static str),
}

/// Something that happened in or around the VM.
#[derive(Debug)]
pub enum VmEvent {
    Guest(GuestMsg),
    /// The guest's byte stream could not be decoded; nothing after it is trusted.
    GuestProtocol(ProtoError),
    Vmm(VmmEvent),
    /// The control channel closed (the VMM process is gone).
    VmmGone,
}

/// Memory a VMM process uses besides guest RAM (its heap, device
/// buffers, page tables), for the cgroup limit.
const VMM_OVERHEAD_BYTES: u64 = 256 << 20;

/// Tasks a VMM may run: the relay, the main, vCPU and device threads, and
/// headroom. Threads count against pids.max.
const VMM_MAX_PIDS: u64 = 32;

/// A running VM in its own process. Dropping it kills the process.
pub struct VmHandle {
    child: Child,
    cgroup: Option<VmCgroup>,
    jailed: bool,
    /// VMM-side time spent entering the jail, reported at start.
    pub jail_us: u64,
    control: UnixStream,
    guest: UnixStream,
    /// The runner's end of the egress broker channel, until a step takes it.
    net: Option<UnixDatagram>,
    events: Receiver<VmEvent>,
    exit: Option<VmExit>,
    /// VMM-side setup time reported at start.
    pub setup_us: u64,
}

impl VmHandle {
    /// Starts a VMM process for `config` and waits until its vCPU runs.
    pub fn spawn(config: &VmConfig, timeout: Duration) -> Result<Self, VmHandleError> {
        Self::spawn_process(&["__vmm"], config, timeout)
    }

    /// Starts `sbxrun __jail-selftest PROBE_ARGS...` like a VMM (same
    /// channels, cgroup and jail) and waits until it says it is jailed.
    pub fn spawn_jail_selftest(
        probe_args: &[&str],
        config: &VmConfig,
        timeout: Duration,
    ) -> Result<Self, VmHandleError> {
        let mut args = vec!["__jail-selftest"];
        args.extend_from_slice(probe_args);
        Self::spawn_process(&args, config, timeout)
    }

    fn spawn_process(
        args: &[&str],
        config: &VmConfig,
        timeout: Duration,
    ) -> Result<Self, VmHandleError> {
        let mut config = config.clone();
        // A caller that names cgroups of its own keeps them.
        let cgroup = if config.jail.enabled && config.jail.cgroup_procs.is_empty() {
            vm_cgroup(&config)
        } else if config.jail.enabled {
            None
        } else {
            warn_unjailed();
            None
        };
        if let Some(cgroup) = &cgroup {
            config.jail.cgroup_procs = cgroup.procs_files();
        }
        let (control, child_control) = UnixStream::pair().map_err(VmHandleError::Channels)?;
        let (guest, child_guest) = UnixStream::pair().map_err(VmHandleError::Channels)?;
        let (net, child_net) = netchan::pair().map_err(VmHandleError::Channels)?;
        let exe = vmm_executable();
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: OwnedFd::from(child_control),
                child_fd: CHILD_CONTROL_FD,
            },
            FdMapping {
                parent_fd: OwnedFd::from(child_guest),
                child_fd: CHILD_GUEST_FD,
            },
            FdMapping {
                parent_fd: OwnedFd::from(child_net),
                child_fd: CHILD_NET_FD,
            },
        ])
        .map_err(|_| VmHandleError::Channels(std::io::Error::other("descriptor collision")))?;
        let child = cmd.spawn().map_err(|source| VmHandleError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        drop(cmd);

        let (tx, events) = mpsc::channel();
        spawn_control_reader(
            control.try_clone().map_err(VmHandleError::Channels)?,
            tx.clone(),
        );
        spawn_guest_reader(guest.try_clone().map_err(VmHandleError::Channels)?, tx);

        let mut handle = VmHandle {
            child,
            cgroup,
            jailed: false,
            jail_us: 0,
            control,
            guest,
            net: Some(net),
            events,
            exit: None,
            setup_us: 0,
        };
        write_frame(&mut handle.control, &config)?;
        let deadline = Instant::now() + timeout;
        loop {
            match handle.next_event(deadline)? {
                VmEvent::Vmm(VmmEvent::Started {
                    setup_us,
                    jailed,
                    jail_us,
                }) => {
                    handle.setup_us = setup_us;
                    handle.jailed = jailed;
                    handle.jail_us = jail_us;
                    return Ok(handle);
                }
                VmEvent::Guest(_) => {
                    return Err(VmHandleError::Unexpected("output before the VM started"))
                }
                other => handle.fail_on(other)?,
            }
        }
    }

    /// The next event, or an error once `deadline` passes.
    pub fn next_event(&mut self, deadline: Instant) -> Result<VmEvent, VmHandleError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(event) => {
                if let VmEvent::Vmm(VmmEvent::Exited { exit }) = &event {
                    self.exit = Some(exit.clone());
                }
                Ok(event)
            }
            Err(RecvTimeoutError::Timeout) => Err(VmHandleError::Timeout(wait)),
            Err(RecvTimeoutError::Disconnected) => Err(VmHandleError::VmmGone),
        }
    }

    /// Turns an event that ends the conversation into its error.
    pub fn fail_on(&mut self, event: VmEvent) -> Result<(), VmHandleError> {
        match event {
            VmEvent::Vmm(VmmEvent::Exited { exit }) => Err(VmHandleError::Exited(exit)),
            VmEvent::Vmm(VmmEvent::Started { .. }) => {
                Err(VmHandleError::Unexpected("a second start"))
            }
            VmEvent::Vmm(VmmEvent::Snapshotted { .. }) => {
                Err(VmHandleError::Unexpected("an unrequested snapshot"))
            }
            VmEvent::GuestProtocol(e) => Err(VmHandleError::Protocol(e)),
            VmEvent::VmmGone => Err(self
                .exit
                .clone()
                .map(VmHandleError::Exited)
                .unwrap_or(VmHandleError::VmmGone)),
            VmEvent::Guest(_) => Err(VmHandleError::Unexpected("an unexpected message")),
        }
    }

    /// Sends a request to the VMM.
    pub fn request(&mut self, request: &VmmRequest) -> Result<(), VmHandleError> {
        write_frame(&mut self.control, request).map_err(VmHandleError::Control)
    }

    /// The egress broker channel to this VM's network stack, for the one
    /// step the VM serves; `None` once taken.
    pub fn take_net_channel(&mut self) -> Option<UnixDatagram> {
        self.net.take()
    }

    /// Sends raw protocol bytes to guest-init.
    pub fn send_to_guest(&mut self, bytes: &[u8]) -> Result<(), VmHandleError> {
        use std::io::Write;
        self.guest
            .write_all(bytes)
            .map_err(VmHandleError::GuestSend)
    }

    /// Whether the VM is still running and has said nothing unexpected
    /// since it was last asked something. Consumes pending events.
    pub fn is_alive(&mut self) -> bool {
        if self.exit.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return false;
        }
        match self.events.try_recv() {
            Ok(VmEvent::Vmm(VmmEvent::Exited { exit })) => {
                self.exit = Some(exit);
                false
            }
            Ok(_) => false,
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => false,
        }
    }

    /// How the VM ended, once it has.
    pub fn exit(&self) -> Option<&VmExit> {
        self.exit.as_ref()
    }

    /// Asks the VMM to stop and waits briefly; kills it if it does not.
    pub fn shutdown(mut self) {
        let _ = write_frame(&mut self.control, &VmmRequest::Shutdown);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Drop kills.
    }

    /// The VMM's process id (the relay's, when jailed: the VMM itself is
    /// PID 1 of its own namespace, a child of this one).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the VMM runs in its jail (false only with `--no-jail`), as
    /// the VMM itself reported it. For reports.
    pub fn jailed(&self) -> bool {
        self.jailed
    }

    /// The per-VM cgroup directories, if the host gave us a cgroup.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        self.cgroup.as_ref().map_or(&[], |c| c.dirs())
    }
}

/// The VM's cgroup, or none with a warning (once per process) saying why.
fn vm_cgroup(config: &VmConfig) -> Option<VmCgroup> {
    let limits = CgroupLimits {
        memory_bytes: (u64::from(config.memory_mib) << 20) + VMM_OVERHEAD_BYTES,
        pids: VMM_MAX_PIDS,
    };
    match VmCgroup::create(limits) {
        Ok(cgroup) => Some(cgroup),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            let why = crate::errors::chain(&e);
            WARNED.call_once(|| {
                eprintln!(
                    "sbxrun: warning: VMs run without a cgroup, so their memory and process \
                     counts are not bounded: {why}"
                )
            });
            tracing::warn!("no cgroup for a VM: {why}");
            None
        }
    }
}

fn warn_unjailed() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "sbxrun: WARNING: --no-jail: VMM processes run WITHOUT their jail (no namespaces, \
             no seccomp, full privileges of this process); a guest that escapes into its \
             VMM owns this host account. Use only for debugging."
        )
    });
    tracing::warn!("starting a VMM without its jail (--no-jail)");
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Only now is the cgroup empty (the VMM dies with its relay).
        self.cgroup.take();
    }
}

static VMM_EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the binary that runs `__vmm` for this process (tests and benchmarks,
/// whose own executable is not sbxrun). Only the first call has effect.
pub fn set_vmm_executable(path: PathBuf) {
    let _ = VMM_EXE.set(path);
}

/// The binary that runs `__vmm`: this executable, or `SBXRUN_VMM_EXE` (tests
/// and benchmarks, whose own executable is not sbxrun).
pub fn vmm_executable() -> PathBuf {
    if let Some(p) = VMM_EXE.get() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("SBXRUN_VMM_EXE") {
        return PathBuf::from(p);
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sbxrun"))
}

fn spawn_control_reader(mut control: UnixStream, tx: mpsc::Sender<VmEvent>) {
    std::thread::spawn(move || loop {
        match read_frame::<VmmEvent>(&mut control) {
            Ok(Some(event)) => {
                if tx.send(VmEvent::Vmm(event)).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = tx.send(VmEvent::VmmGone);
                return;
            }
        }
    });
}

fn spawn_guest_reader(mut guest: UnixStream, tx: mpsc::Sender<VmEvent>) {
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::<GuestMsg>::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match guest.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.feed(&buf[..n]);
            loop {
                match decoder.next_message() {
                    Ok(Some(msg)) => {
                        if tx.send(VmEvent::Guest(msg)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(VmEvent::GuestProtocol(e));
                        return;
                    }
                }
            }
        }
    });
}
