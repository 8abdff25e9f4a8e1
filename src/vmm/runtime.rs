//! The body of a `__vmm` process: build the VM from the runner's
//! [`VmConfig`], run it, report how it ended.
//!
//! Threads: the vCPU thread (guest execution, device emulation on exits),
//! the guest-input pump (runner bytes -> virtio-console), the control reader
//! (runner requests). The main thread waits for the first of them to finish
//! the VM, reports, and exits the process, which tears everything down.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::api::{read_frame, write_frame, VmConfig, VmExit, VmmEvent, VmmRequest};
use super::boot::{self, cmdline};
use super::devices::attach::VirtioSet;
use super::devices::bus::MmioBus;
use super::devices::legacy::serial::{ConsoleTranscript, SerialConsole};
use super::layout::*;
use super::vstate::memory::create_guest_memory;
use super::vstate::vcpu::{ExitHandler, Vcpu};
use super::vstate::vm::Vm;

/// Why the VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("guest memory")]
    Memory(#[from] super::vstate::memory::MemoryError),
    #[error("KVM VM")]
    Vm(#[from] super::vstate::vm::VmError),
    #[error("vCPU")]
    Vcpu(#[from] super::vstate::vcpu::VcpuError),
    #[error("boot")]
    Boot(#[from] boot::BootError),
    #[error("devices")]
    Devices(#[from] super::devices::attach::AttachError),
    #[error("cannot open the console log {path}")]
    ConsoleLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control channel")]
    Control(#[from] super::api::FrameError),
    #[error("the runner closed the control channel before sending a VM config")]
    NoConfig,
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
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

/// Runs a VMM process on the two channels from the runner; returns the exit
/// code for the process.
pub fn run(mut ctl: UnixStream, guest: UnixStream) -> i32 {
    let started = Instant::now();
    let exit = match setup_and_run(&mut ctl, guest, started) {
        Ok(exit) => exit,
        Err(e) => VmExit::HostError {
            message: error_chain(&e),
        },
    };
    match write_frame(&mut ctl, &VmmEvent::Exited { exit }) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

enum Finished {
    Vcpu(Option<VmExit>),
    ShutdownRequested,
    RunnerGone,
}

fn setup_and_run(
    ctl: &mut UnixStream,
    guest: UnixStream,
    started: Instant,
) -> Result<VmExit, SetupError> {
    let config: VmConfig = read_frame(ctl)?.ok_or(SetupError::NoConfig)?;

    // Everything the VM needs from the host filesystem is opened here, before
    // the guest runs, so the process can later be jailed without a filesystem.
    let console_log: Option<Box<dyn Write + Send>> = match &config.console_log {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SetupError::ConsoleLog {
                    path: path.display().to_string(),
                    source,
                })?;
            Some(Box::new(LineWriter::new(file)))
        }
        None => None,
    };

    let memory: GuestMemoryMmap = create_guest_memory(config.memory_mib)?;
    let vm = Vm::new(&memory)?;
    let transcript = Arc::new(Mutex::new(ConsoleTranscript::default()));
    let serial = SerialConsole::new(vm.irq_eventfd(SERIAL_IRQ)?, console_log, transcript.clone());

    let mut bus = MmioBus::default();
    let guest_out = guest.try_clone().map_err(SetupError::Thread)?;
    let virtio = VirtioSet::new(&vm, &memory, &config.disks, Box::new(guest_out), &mut bus)?;

    let line = cmdline::build(config.flavour, virtio.device_count(), &config.extra_cmdline);
    let entry = boot::load_pvh(&memory, &config.kernel, &config.initramfs, &line)?;
    let mut vcpu = Vcpu::new(&vm, 0, config.vcpus.max(1), config.flavour)?;
    vcpu.configure_pvh_boot(entry.0)?;

    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut platform = Platform { serial, bus };
    {
        let done = done_tx.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                // The VM and memory must outlive guest execution.
                let _keep = (&vm, &memory);
                let exit = vcpu.run(&mut platform, &stop);
                let _ = done.send(Finished::Vcpu(exit));
                // Park instead of returning: dropping the VM here would race the
                // main thread's report; process exit cleans up.
                loop {
                    std::thread::park();
                }
            })
            .map_err(SetupError::Thread)?;
    }
    virtio.spawn_input_pump(guest).map_err(SetupError::Thread)?;
    {
        let done = done_tx;
        let mut ctl_in = ctl.try_clone().map_err(SetupError::Thread)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let finished = loop {
                    match read_frame::<VmmRequest>(&mut ctl_in) {
                        Ok(Some(VmmRequest::Shutdown)) => break Finished::ShutdownRequested,
                        Ok(None) | Err(_) => break Finished::RunnerGone,
                    }
                };
                let _ = done.send(finished);
            })
            .map_err(SetupError::Thread)?;
    }

    write_frame(
        ctl,
        &VmmEvent::Started {
            setup_us: started.elapsed().as_micros() as u64,
        },
    )?;

    let finished = done_rx.recv().unwrap_or(Finished::RunnerGone);
    let panic_line = transcript
        .lock()
        .ok()
        .and_then(|t| t.panic_line().map(str::to_string));
    Ok(match (finished, panic_line) {
        (_, Some(line)) => VmExit::GuestPanic { line },
        (Finished::Vcpu(Some(exit)), None) => exit,
        (Finished::Vcpu(None), None) | (Finished::ShutdownRequested, None) => VmExit::GuestReset,
        (Finished::RunnerGone, None) => VmExit::HostError {
            message: "the runner went away".into(),
        },
    })
}
