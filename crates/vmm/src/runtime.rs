//! The body of a `__vmm` process: build the VM from the runner's
//! [`VmConfig`] (cold boot or snapshot restore), run it, and report how it
//! ended — or pause it and write its snapshot.
//!
//! Threads: the vCPU thread (guest execution, device emulation on exits),
//! the guest-input pump (runner bytes -> virtio-console), the control reader
//! (runner requests). The main thread waits for the first of them to end
//! the VM, reports, and returns; the process exit tears everything down.
//!
//! Jail (see `sbxrun_jail`): entered right after the config arrives (the
//! process forks there; the parent only relays how the VMM ended), locked
//! once every file is open, and each thread applies its seccomp filter
//! before it handles anything the guest controls.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::boot::{self, cmdline};
use super::devices::attach::{DeviceBackends, VirtioSet, VirtioSetState};
use super::devices::bus::MmioBus;
use super::devices::legacy::serial::{ConsoleTranscript, SerialConsole, SerialSnapshot};
use super::net::NetStack;
use super::netwire::{spawn_broker_reader, ChannelBroker, DeviceBackend, NetInbox, TransportPort};
use super::vstate::memory::{create_guest_memory, dump_sparse, map_snapshot};
use super::vstate::persist::{self, VcpuState, VmState};
use super::vstate::vcpu::{ExitHandler, Vcpu};
use super::vstate::vm::Vm;
use sbxrun_jail::{self as jail, ChildEnd, Entered, JailError, ThreadFilter};
use sbxrun_proto::control::{
    read_frame, write_frame, SnapshotFiles, VmConfig, VmExit, VmmEvent, VmmRequest,
};
use sbxrun_proto::layout::*;
use sbxrun_proto::snapshot_file as snapshot;

/// Why the VM could not be built, restored or snapshotted.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("guest memory")]
    Memory(#[from] super::vstate::memory::MemoryError),
    #[error("KVM VM")]
    Vm(#[from] super::vstate::vm::VmError),
    #[error("vCPU")]
    Vcpu(#[from] super::vstate::vcpu::VcpuError),
    #[error("KVM state")]
    Persist(#[from] persist::PersistError),
    #[error("boot")]
    Boot(#[from] boot::BootError),
    #[error("devices")]
    Devices(#[from] super::devices::attach::AttachError),
    #[error("snapshot state file {path}")]
    StateFile {
        path: String,
        #[source]
        source: snapshot::SnapshotFileError,
    },
    #[error("snapshot was taken of a different VM shape: {0}")]
    ShapeMismatch(String),
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control channel")]
    Control(#[from] sbxrun_proto::control::FrameError),
    #[error("the runner closed the control channel before sending a VM config")]
    NoConfig,
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("serial console")]
    Serial(#[from] super::devices::legacy::serial::SerialRestoreError),
    #[error("the vCPU did not pause within {0:?}")]
    PauseTimeout(Duration),
    #[error("a snapshot was requested, but the VM was not started with `snapshot_to` files")]
    NoSnapshotFiles,
    #[error("jail")]
    Jail(#[from] JailError),
}

/// Everything a snapshot holds besides guest memory.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub memory_mib: u32,
    pub disk_count: usize,
    pub cmdline: String,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub virtio: VirtioSetState,
}

/// Port I/O and MMIO as seen from the vCPU thread.
struct Platform {
    serial: SerialConsole,
    bus: MmioBus,
}

impl ExitHandler for Platform {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port.checked_sub(SERIAL_PORT_BASE) {
            Some(offset) if offset < SERIAL_PORT_LEN && data.len() == 1 => {
                data[0] = self.serial.read(offset as u8)
            }
            // i8042 status: nothing to read, ready for commands.
            _ if port == I8042_COMMAND_PORT => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match port.checked_sub(SERIAL_PORT_BASE) {
            Some(offset) if offset < SERIAL_PORT_LEN && data.len() == 1 => {
                self.serial.write(offset as u8, data[0]);
                false
            }
            _ => port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET_COMMAND),
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.bus.read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.bus.write(addr, data);
    }
}

/// The runner's channels to one VMM process.
pub struct Channels {
    /// Control frames both ways.
    pub control: UnixStream,
    /// The guest's byte stream (virtio-console).
    pub guest: UnixStream,
    /// Egress broker requests and replies, with descriptors.
    pub net: UnixDatagram,
}

/// Runs a VMM process on the channels from the runner; returns the exit
/// code for the process.
pub fn run(channels: Channels) -> i32 {
    let Channels {
        control: mut ctl,
        guest,
        net,
    } = channels;
    let started = Instant::now();
    let result = read_config(&mut ctl).and_then(|config| match enter_jail(&config)? {
        JailEntry::Relay(relay) => Ok(Err(relay)),
        JailEntry::Vmm(jail) => {
            let io = VmIo { guest, net };
            run_vm(&mut ctl, io, config, jail, started).map(Ok)
        }
    });
    finish(ctl, result)
}

/// The guest-facing channels a VM is built around.
struct VmIo {
    guest: UnixStream,
    net: UnixDatagram,
}

fn read_config(ctl: &mut UnixStream) -> Result<VmConfig, RuntimeError> {
    read_frame(ctl)?.ok_or(RuntimeError::NoConfig)
}

/// Reports how the process ends: its own event, or (in the relay) how the
/// jailed VMM died.
fn finish(mut ctl: UnixStream, result: Result<Result<VmmEvent, jail::Relay>, RuntimeError>) -> i32 {
    let event = match result {
        Ok(Ok(event)) => event,
        Ok(Err(relay)) => match relay.wait() {
            ChildEnd::Exited(code) => return code,
            ChildEnd::Seccomp(v) => exited(VmExit::SeccompViolation {
                syscall: v.syscall_name(),
                thread: v.thread.map_or("unknown", |t| t.name()).into(),
            }),
            ChildEnd::Signaled(signal) => exited(VmExit::VmmKilled { signal }),
        },
        Err(RuntimeError::Jail(e)) => exited(jail_failed(&e)),
        Err(e) => exited(VmExit::HostError {
            message: sbxrun_proto::error_chain(&e),
        }),
    };
    match write_frame(&mut ctl, &event) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn exited(exit: VmExit) -> VmmEvent {
    VmmEvent::Exited { exit }
}

fn jail_failed(e: &JailError) -> VmExit {
    VmExit::JailFailed {
        step: e.step.to_string(),
        reason: e.reason(),
    }
}

enum JailEntry {
    Relay(jail::Relay),
    Vmm(Option<VmJail>),
}

/// The jail of this VMM, between entering and locking down.
struct VmJail {
    jail: jail::Jail,
    enter_time: Duration,
}

/// Enters the jail unless the runner turned it off. Must run while the
/// process is single-threaded.
fn enter_jail(config: &VmConfig) -> Result<JailEntry, RuntimeError> {
    if !config.jail.enabled {
        return Ok(JailEntry::Vmm(None));
    }
    match jail::enter(&config.jail)? {
        Entered::Relay(relay) => Ok(JailEntry::Relay(relay)),
        Entered::Jailed(jail) => Ok(JailEntry::Vmm(Some(VmJail {
            enter_time: jail.started().elapsed(),
            jail,
        }))),
    }
}

/// The seccomp filters left to apply once the jail is locked.
#[derive(Default)]
struct PendingFilters {
    vmm: Option<ThreadFilter>,
    vcpu: Option<ThreadFilter>,
    jail_us: u64,
}

/// Locks the jail (every file is open by now).
fn lock_jail(jail: Option<VmJail>) -> Result<PendingFilters, RuntimeError> {
    let Some(VmJail { jail, enter_time }) = jail else {
        return Ok(PendingFilters::default());
    };
    let started = Instant::now();
    let filters = jail.lock_down()?;
    Ok(PendingFilters {
        vmm: Some(filters.vmm),
        vcpu: Some(filters.vcpu),
        jail_us: (enter_time + started.elapsed()).as_micros() as u64,
    })
}

/// Runs a jail self-test probe instead of a VM (`sbxrun __jail-selftest`):
/// the same jail as a VMM, the probe on a thread of `kind`, the result
/// reported as the VM's exit.
pub fn run_jail_selftest(
    mut ctl: UnixStream,
    probe: jail::selftest::Probe,
    kind: jail::ThreadKind,
    seccomp: bool,
) -> i32 {
    let result = read_config(&mut ctl).and_then(|config| match enter_jail(&config)? {
        JailEntry::Relay(relay) => Ok(Err(relay)),
        JailEntry::Vmm(jail) => {
            let mut filters = lock_jail(jail)?;
            if !seccomp {
                filters = PendingFilters::default();
            }
            write_frame(
                &mut ctl,
                &VmmEvent::Started {
                    setup_us: 0,
                    jailed: true,
                    jail_us: filters.jail_us,
                },
            )?;
            let attempt = move || {
                let filter = match kind {
                    jail::ThreadKind::Vmm => filters.vmm,
                    jail::ThreadKind::Vcpu => filters.vcpu,
                };
                filter.as_ref().map(ThreadFilter::apply).transpose()?;
                Ok::<_, JailError>(probe.attempt())
            };
            let outcome = match kind {
                jail::ThreadKind::Vmm => attempt()?,
                jail::ThreadKind::Vcpu => std::thread::spawn(attempt).join().map_err(|_| {
                    RuntimeError::Thread(std::io::Error::other("probe thread panicked"))
                })??,
            };
            let message = match outcome {
                Ok(what) => format!("selftest {}: got through: {what}", probe.name()),
                Err(e) => format!("selftest {}: refused: {e}", probe.name()),
            };
            Ok(Ok(exited(VmExit::HostError { message })))
        }
    });
    finish(ctl, result)
}

enum Finished {
    Exit(VmExit),
    /// The vCPU stopped on request; its state and the platform come back.
    Paused(Box<Result<VcpuState, persist::PersistError>>, Box<Platform>),
    SnapshotRequested,
    ShutdownRequested,
    RunnerGone,
}

/// The signal that kicks the vCPU thread out of KVM_RUN. Its handler does
/// nothing: the point is the EINTR.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

struct Built {
    vm: Vm,
    memory: GuestMemoryMmap,
    vcpu: Vcpu,
    platform: Platform,
    virtio: VirtioSet,
    transcript: Arc<Mutex<ConsoleTranscript>>,
    cmdline: String,
}

fn open_console_log(config: &VmConfig) -> Result<Option<Box<dyn Write + Send>>, RuntimeError> {
    let Some(path) = &config.console_log else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| RuntimeError::Open {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Some(Box::new(LineWriter::new(file))))
}

/// Builds a VM, opening every host file it needs before any guest code runs
/// (so the process can be jailed without a filesystem).
fn build(config: &VmConfig, guest: &UnixStream, inbox: &NetInbox) -> Result<Built, RuntimeError> {
    let console_log = open_console_log(config)?;
    let transcript = Arc::new(Mutex::new(ConsoleTranscript::default()));
    let backends = || -> Result<DeviceBackends, RuntimeError> {
        Ok(DeviceBackends {
            guest_out: Box::new(guest.try_clone().map_err(RuntimeError::Thread)?),
            net: Box::new(DeviceBackend::new(inbox.clone())),
        })
    };
    let mut bus = MmioBus::default();
    let vcpus = config.vcpus.max(1);

    match &config.restore {
        None => {
            let memory = create_guest_memory(config.memory_mib)?;
            let vm = Vm::new(&memory)?;
            let serial =
                SerialConsole::new(vm.irq_eventfd(SERIAL_IRQ)?, console_log, transcript.clone());
            let virtio = VirtioSet::new(&vm, &memory, &config.disks, backends()?, &mut bus)?;
            let cmdline = cmdline::for_config(config);
            debug_assert!(cmdline.matches("virtio_mmio.device=").count() == virtio.device_count());
            let entry = boot::load_pvh(&memory, &config.kernel, &config.initramfs, &cmdline)?;
            let vcpu = Vcpu::new(&vm, 0, vcpus, config.flavour)?;
            vcpu.configure_pvh_boot(entry.0)?;
            Ok(Built {
                vm,
                memory,
                vcpu,
                platform: Platform { serial, bus },
                virtio,
                transcript,
                cmdline,
            })
        }
        Some(files) => {
            let state: SnapshotState =
                snapshot::read_file(&files.state).map_err(|source| RuntimeError::StateFile {
                    path: files.state.display().to_string(),
                    source,
                })?;
            if state.memory_mib != config.memory_mib
                || state.disk_count != config.disks.len()
                || state.vcpus.len() != usize::from(vcpus)
            {
                return Err(RuntimeError::ShapeMismatch(format!(
                    "snapshot has {} MiB, {} disks, {} vCPUs",
                    state.memory_mib,
                    state.disk_count,
                    state.vcpus.len()
                )));
            }
            let mem_file = File::open(&files.memory).map_err(|source| RuntimeError::Open {
                path: files.memory.display().to_string(),
                source,
            })?;
            let memory = map_snapshot(mem_file, config.memory_mib)?;
            let vm = Vm::new(&memory)?;
            persist::restore_vm(vm.fd(), &state.vm)?;
            let serial = SerialConsole::from_snapshot(
                &state.serial,
                vm.irq_eventfd(SERIAL_IRQ)?,
                console_log,
                transcript.clone(),
            )?;
            let virtio = VirtioSet::restore(
                &vm,
                &memory,
                &config.disks,
                backends()?,
                &mut bus,
                &state.virtio,
            )?;
            let vcpu = Vcpu::new(&vm, 0, vcpus, config.flavour)?;
            persist::restore_vcpu(vcpu.fd(), &state.vcpus[0])?;
            Ok(Built {
                vm,
                memory,
                vcpu,
                platform: Platform { serial, bus },
                virtio,
                transcript,
                cmdline: state.cmdline,
            })
        }
    }
}

/// The pre-opened files a snapshot request writes into.
struct SnapshotTarget {
    files: SnapshotFiles,
    state: File,
    memory: File,
}

fn open_snapshot_target(config: &VmConfig) -> Result<Option<SnapshotTarget>, RuntimeError> {
    let Some(files) = &config.snapshot_to else {
        return Ok(None);
    };
    let create = |path: &std::path::Path| {
        File::create(path).map_err(|source| RuntimeError::Open {
            path: path.display().to_string(),
            source,
        })
    };
    Ok(Some(SnapshotTarget {
        state: create(&files.state)?,
        memory: create(&files.memory)?,
        files: files.clone(),
    }))
}

fn run_vm(
    ctl: &mut UnixStream,
    io: VmIo,
    config: VmConfig,
    jail: Option<VmJail>,
    started: Instant,
) -> Result<VmmEvent, RuntimeError> {
    let VmIo { guest, net } = io;
    let (net_tx, net_rx) = mpsc::channel();
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(RuntimeError::Thread)?;
    let thread_wake = wake.try_clone().map_err(RuntimeError::Thread)?;
    let inbox = NetInbox::new(net_tx, Arc::new(wake));
    let Built {
        vm,
        memory,
        mut vcpu,
        mut platform,
        virtio,
        transcript,
        cmdline,
    } = build(&config, &guest, &inbox)?;
    let snapshot_target = open_snapshot_target(&config)?;
    register_signal_handler(kick_signal(), on_kick).map_err(|e| RuntimeError::Thread(e.into()))?;
    let jailed = jail.is_some();
    let PendingFilters {
        vmm: vmm_filter,
        vcpu: vcpu_filter,
        jail_us,
    } = lock_jail(jail)?;

    let vm = Arc::new(vm);
    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    let stop = Arc::new(AtomicBool::new(false));
    let vcpu_thread = {
        let done = done_tx.clone();
        let stop = stop.clone();
        let vm = vm.clone();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                if let Some(Err(e)) = vcpu_filter.as_ref().map(ThreadFilter::apply) {
                    let _ = done.send(Finished::Exit(jail_failed(&e)));
                    return;
                }
                let finished = match vcpu.run(&mut platform, &stop) {
                    Some(exit) => Finished::Exit(exit),
                    None => {
                        vcpu.finish_pending_exit();
                        let state = persist::save_vcpu(vm.kvm(), vcpu.fd());
                        Finished::Paused(Box::new(state), Box::new(platform))
                    }
                };
                let _ = done.send(finished);
                // The vCPU fd must stay open until the process exits: closing
                // it while the main thread still saves VM state would race.
                loop {
                    std::thread::park();
                }
            })
            .map_err(RuntimeError::Thread)?
    };
    // The device threads started below inherit this filter.
    vmm_filter.as_ref().map(ThreadFilter::apply).transpose()?;
    virtio
        .spawn_input_pump(guest)
        .map_err(RuntimeError::Thread)?;
    let stack = NetStack::new(
        Box::new(TransportPort::new(virtio.net())),
        Box::new(ChannelBroker::new(
            net.try_clone().map_err(RuntimeError::Thread)?,
        )),
        Instant::now(),
    );
    super::net::spawn(stack, net_rx, thread_wake).map_err(RuntimeError::Thread)?;
    spawn_broker_reader(net, inbox).map_err(RuntimeError::Thread)?;
    spawn_control_reader(ctl.try_clone().map_err(RuntimeError::Thread)?, done_tx)?;

    write_frame(
        ctl,
        &VmmEvent::Started {
            setup_us: started.elapsed().as_micros() as u64,
            jailed,
            jail_us,
        },
    )?;

    let finished = done_rx.recv().unwrap_or(Finished::RunnerGone);
    let panic_line = || {
        transcript
            .lock()
            .ok()
            .and_then(|t| t.panic_line().map(str::to_string))
    };
    let exit = match finished {
        Finished::SnapshotRequested => {
            let target = snapshot_target.ok_or(RuntimeError::NoSnapshotFiles)?;
            let ctx = SnapshotContext {
                vm: &vm,
                memory: &memory,
                virtio: &virtio,
                config: &config,
                cmdline,
            };
            return snapshot_vm(ctx, target, &stop, &vcpu_thread, &done_rx);
        }
        Finished::Exit(exit) => panic_line()
            .map(|line| VmExit::GuestPanic { line })
            .unwrap_or(exit),
        Finished::Paused(..) | Finished::ShutdownRequested => VmExit::GuestReset,
        Finished::RunnerGone => VmExit::HostError {
            message: "the runner went away".into(),
        },
    };
    Ok(VmmEvent::Exited { exit })
}

fn spawn_control_reader(
    mut ctl: UnixStream,
    done: mpsc::Sender<Finished>,
) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let finished = match read_frame::<VmmRequest>(&mut ctl) {
                Ok(Some(VmmRequest::Shutdown)) => Finished::ShutdownRequested,
                Ok(Some(VmmRequest::Snapshot)) => Finished::SnapshotRequested,
                Ok(None) | Err(_) => Finished::RunnerGone,
            };
            let _ = done.send(finished);
        })
        .map_err(RuntimeError::Thread)?;
    Ok(())
}

struct SnapshotContext<'a> {
    vm: &'a Vm,
    memory: &'a GuestMemoryMmap,
    virtio: &'a VirtioSet,
    config: &'a VmConfig,
    cmdline: String,
}

/// Stops the vCPU, then saves vCPU, VM, device state and memory.
fn snapshot_vm(
    ctx: SnapshotContext<'_>,
    target: SnapshotTarget,
    stop: &AtomicBool,
    vcpu_thread: &JoinHandle<()>,
    done: &Receiver<Finished>,
) -> Result<VmmEvent, RuntimeError> {
    const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
    let pause_started = Instant::now();
    stop.store(true, Ordering::Release);
    // A signal that lands just before the vCPU enters KVM_RUN is lost, so
    // keep kicking until it reports back.
    let (vcpu_state, platform) = loop {
        let _ = vcpu_thread.kill(kick_signal());
        match done.recv_timeout(Duration::from_millis(2)) {
            Ok(Finished::Paused(state, platform)) => break ((*state)?, platform),
            Ok(Finished::Exit(exit)) => return Ok(VmmEvent::Exited { exit }),
            Ok(_) | Err(RecvTimeoutError::Timeout) if pause_started.elapsed() < PAUSE_TIMEOUT => {}
            Ok(_) | Err(_) => return Err(RuntimeError::PauseTimeout(PAUSE_TIMEOUT)),
        }
    };
    let pause_us = pause_started.elapsed().as_micros() as u64;

    let save_started = Instant::now();
    let state = SnapshotState {
        memory_mib: ctx.config.memory_mib,
        disk_count: ctx.config.disks.len(),
        cmdline: ctx.cmdline,
        vm: persist::save_vm(ctx.vm.fd())?,
        vcpus: vec![vcpu_state],
        serial: platform.serial.snapshot(),
        virtio: ctx.virtio.save()?,
    };
    let SnapshotTarget {
        files,
        state: mut state_file,
        memory: mem_file,
    } = target;
    let state_err = |source| RuntimeError::StateFile {
        path: files.state.display().to_string(),
        source,
    };
    let bytes = snapshot::encode(&state).map_err(state_err)?;
    state_file
        .write_all(&bytes)
        .and_then(|()| state_file.sync_all())
        .map_err(|e| state_err(e.into()))?;
    let open_err = |source| RuntimeError::Open {
        path: files.memory.display().to_string(),
        source,
    };
    let memory_bytes = dump_sparse(
        ctx.memory,
        u64::from(ctx.config.memory_mib) << 20,
        &mem_file,
    )?;
    mem_file.sync_all().map_err(open_err)?;
    Ok(VmmEvent::Snapshotted {
        pause_us,
        save_us: save_started.elapsed().as_micros() as u64,
        memory_bytes,
    })
}
