//! Snapshot create: pause the vCPU at a clean point, save every
//! [`Persist`] piece into one [`SnapshotState`], and write it and guest
//! memory into the files the runner opened for us before the jail closed.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use super::control::{kick_signal, Finished};
use super::error::RuntimeError;
use crate::devices::attach::{VirtioSet, VirtioSetState};
use crate::devices::legacy::serial::SerialConsoleState;
use crate::persist::Persist;
use crate::vstate::memory::dump_sparse;
use crate::vstate::persist::{VcpuState, VmState};
use crate::vstate::vm::Vm;
use sbxrun_proto::control::{SnapshotFiles, VmConfig, VmmEvent};
use sbxrun_proto::snapshot_file as snapshot;

/// Everything a snapshot holds besides guest memory: the payload of the
/// state file. Field names and types are the file format (JSON); changing
/// them needs a `FORMAT_MAJOR` bump.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotState {
    pub memory_mib: u32,
    pub disk_count: usize,
    pub cmdline: String,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialConsoleState,
    pub virtio: VirtioSetState,
}

/// The pre-opened files a snapshot request writes into.
pub(super) struct SnapshotTarget {
    files: SnapshotFiles,
    state: File,
    memory: File,
}

/// Creates the snapshot files while the process can still open files.
pub(super) fn open_snapshot_target(
    config: &VmConfig,
) -> Result<Option<SnapshotTarget>, RuntimeError> {
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

/// The VM-wide pieces the main thread saves itself; the vCPU and the
/// platform come back from the vCPU thread once it has paused.
pub(super) struct SnapshotContext<'a> {
    pub vm: &'a Vm,
    pub memory: &'a GuestMemoryMmap,
    pub virtio: &'a VirtioSet,
    pub config: &'a VmConfig,
    pub cmdline: String,
}

/// How to reach the running vCPU thread.
pub(super) struct VcpuControl<'a> {
    /// Set to ask the vCPU thread to pause.
    pub stop: &'a AtomicBool,
    /// Signalled to kick it out of KVM_RUN.
    pub thread: &'a JoinHandle<()>,
    /// Where it reports that it paused (or ended).
    pub done: &'a Receiver<Finished>,
}

/// Stops the vCPU, then saves vCPU, VM, device state and memory.
pub(super) fn snapshot_vm(
    ctx: SnapshotContext<'_>,
    target: SnapshotTarget,
    vcpu: VcpuControl<'_>,
) -> Result<VmmEvent, RuntimeError> {
    const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
    let pause_started = Instant::now();
    vcpu.stop.store(true, Ordering::Release);
    // A signal that lands just before the vCPU enters KVM_RUN is lost, so
    // keep kicking until it reports back.
    let (vcpu_state, platform) = loop {
        let _ = vcpu.thread.kill(kick_signal());
        match vcpu.done.recv_timeout(Duration::from_millis(2)) {
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
        vm: ctx.vm.save()?,
        vcpus: vec![vcpu_state],
        serial: platform.serial.save()?,
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
