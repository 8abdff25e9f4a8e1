//! The process around the VM: read the runner's config, enter the jail
//! (the parent becomes the relay), lock it once every file is open, and
//! report how the process ends. Also the jail self-test, which is the same
//! process with a probe in place of the VM.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use super::control::run_vm;
use super::error::RuntimeError;
use sbxrun_jail::{self as jail, ChildEnd, Entered, JailError, ThreadFilter};
use sbxrun_proto::control::{read_frame, write_frame, VmConfig, VmExit, VmmEvent};

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
pub(super) struct VmIo {
    pub guest: UnixStream,
    pub net: UnixDatagram,
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

pub(super) fn jail_failed(e: &JailError) -> VmExit {
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
pub(super) struct VmJail {
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
pub(super) struct PendingFilters {
    pub vmm: Option<ThreadFilter>,
    pub vcpu: Option<ThreadFilter>,
    pub net: Option<ThreadFilter>,
    pub jail_us: u64,
}

/// Locks the jail (every file is open by now).
pub(super) fn lock_jail(jail: Option<VmJail>) -> Result<PendingFilters, RuntimeError> {
    let Some(VmJail { jail, enter_time }) = jail else {
        return Ok(PendingFilters::default());
    };
    let started = Instant::now();
    let filters = jail.lock_down()?;
    Ok(PendingFilters {
        vmm: Some(filters.vmm),
        vcpu: Some(filters.vcpu),
        net: Some(filters.net),
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
                    jail::ThreadKind::Net => filters.net,
                };
                filter.as_ref().map(ThreadFilter::apply).transpose()?;
                Ok::<_, JailError>(probe.attempt())
            };
            let outcome = match kind {
                jail::ThreadKind::Vmm => attempt()?,
                // Like the real ones, these threads start before the main
                // thread has a filter and apply only their own.
                jail::ThreadKind::Vcpu | jail::ThreadKind::Net => {
                    std::thread::spawn(attempt).join().map_err(|_| {
                        RuntimeError::Thread(std::io::Error::other("probe thread panicked"))
                    })??
                }
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
