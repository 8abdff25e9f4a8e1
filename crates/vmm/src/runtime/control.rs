//! The running VM: starts its threads (each under its seccomp filter),
//! reports `Started`, and waits for the first thing that ends the run: the
//! guest, the runner's request (shutdown or snapshot), or the runner going
//! away.

use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::build::{build, Built, Platform};
use super::error::RuntimeError;
use super::process::{jail_failed, lock_jail, PendingFilters, VmIo, VmJail};
use super::snapshot::{open_snapshot_target, snapshot_vm, SnapshotContext, VcpuControl};
use crate::net::{run_net_thread, NetInput, NetStack};
use crate::netwire::{spawn_broker_reader, ChannelBroker, NetInbox, TransportPort};
use crate::persist::Persist;
use crate::vstate::persist::{PersistError, VcpuState};
use sbxrun_jail::ThreadFilter;
use sbxrun_proto::control::{read_frame, write_frame, VmConfig, VmExit, VmmEvent, VmmRequest};

/// What ended the wait for the VM.
pub(super) enum Finished {
    Exit(VmExit),
    /// The vCPU stopped on request; its state and the platform come back.
    Paused(Box<Result<VcpuState, PersistError>>, Box<Platform>),
    SnapshotRequested,
    ShutdownRequested,
    RunnerGone,
}

/// The signal that kicks the vCPU thread out of KVM_RUN. Its handler does
/// nothing: the point is the EINTR.
pub(super) fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Builds the VM, runs it, and returns how it ended (or its snapshot).
pub(super) fn run_vm(
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
        net: net_filter,
        jail_us,
    } = lock_jail(jail)?;

    let vm = Arc::new(vm);
    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    let stop = Arc::new(AtomicBool::new(false));
    let vcpu_thread = {
        let done = done_tx.clone();
        let stop = stop.clone();
        // Held for as long as the thread lives: when the main thread returns
        // while the guest still runs (the runner went away), the VM must not
        // be torn down under a vCPU in KVM_RUN.
        let vm = vm.clone();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let _vm = vm;
                if let Some(Err(e)) = vcpu_filter.as_ref().map(ThreadFilter::apply) {
                    let _ = done.send(Finished::Exit(jail_failed(&e)));
                    return;
                }
                let finished = match vcpu.run(&mut platform, &stop) {
                    Some(exit) => Finished::Exit(exit),
                    None => {
                        vcpu.finish_pending_exit();
                        let state = vcpu.save();
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
    let stack = NetStack::new(
        Box::new(TransportPort::new(virtio.net())),
        Box::new(ChannelBroker::new(
            net.try_clone().map_err(RuntimeError::Thread)?,
        )),
        Instant::now(),
    );
    spawn_net_thread(stack, net_rx, thread_wake, net_filter, done_tx.clone())?;
    // The device threads started below inherit this filter; the vCPU and
    // network threads above have their own and must not stack this one.
    vmm_filter.as_ref().map(ThreadFilter::apply).transpose()?;
    virtio
        .spawn_input_pump(guest)
        .map_err(RuntimeError::Thread)?;
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
            let vcpu = VcpuControl {
                stop: &stop,
                thread: &vcpu_thread,
                done: &done_rx,
            };
            return snapshot_vm(ctx, target, vcpu);
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

/// Starts the network thread. It parses frames the guest wrote, so it
/// applies its own filter (no files, no snapshots, no KVM) before the
/// first one; started before the main thread's filter, it inherits none.
fn spawn_net_thread(
    stack: NetStack,
    inbox: mpsc::Receiver<NetInput>,
    wake: EventFd,
    filter: Option<ThreadFilter>,
    done: mpsc::Sender<Finished>,
) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            if let Some(Err(e)) = filter.as_ref().map(ThreadFilter::apply) {
                let _ = done.send(Finished::Exit(jail_failed(&e)));
                return;
            }
            // A failed poll ends the thread; the guest's connections then
            // time out, and the VM's end is decided elsewhere.
            let _ = run_net_thread(stack, inbox, wake);
        })
        .map_err(RuntimeError::Thread)?;
    Ok(())
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
