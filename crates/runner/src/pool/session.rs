//! Talking to guest-init inside a VM: wait for it, ping it, run a command
//! and stream its output. Everything the guest sends is checked; a guest
//! that lies or breaks the protocol fails its own step with a typed error.

use std::time::{Duration, Instant};

use guest_init::proto::{encode, ErrorReport, Exited, GuestMsg, HostMsg, Ping, Ready, RunRequest};

use super::vm::{VmEvent, VmHandle, VmHandleError};

/// Which of the command's output streams a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub exited: Exited,
    /// Host-measured time from sending the request to the exit report.
    pub wall: Duration,
}

/// Why a command produced no exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Vm(#[from] VmHandleError),
    #[error("guest-init refused the command ({:?}): {}", .0.code, .0.message)]
    Guest(ErrorReport),
    #[error("the command did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot encode the request")]
    Encode(#[from] guest_init::proto::ProtoError),
}

/// Waits for guest-init's `Ready` after a cold boot.
pub fn wait_ready(vm: &mut VmHandle, timeout: Duration) -> Result<Ready, VmHandleError> {
    let deadline = Instant::now() + timeout;
    loop {
        match vm.next_event(deadline)? {
            VmEvent::Guest(GuestMsg::Ready(ready)) => return Ok(ready),
            VmEvent::Guest(GuestMsg::Error(report)) => {
                return Err(VmHandleError::Exited(
                    sbxrun_proto::control::VmExit::HostError {
                        message: format!("guest-init failed to start: {}", report.message),
                    },
                ))
            }
            VmEvent::Guest(_) => return Err(VmHandleError::Unexpected("output before Ready")),
            other => vm.fail_on(other)?,
        }
    }
}

/// Round trip to guest-init: proves the guest is live (after a restore).
pub fn ping(vm: &mut VmHandle, nonce: u64, timeout: Duration) -> Result<(), VmHandleError> {
    let frame = encode(&HostMsg::Ping(Ping { nonce }))?;
    vm.send_to_guest(&frame)?;
    let deadline = Instant::now() + timeout;
    loop {
        match vm.next_event(deadline)? {
            VmEvent::Guest(GuestMsg::Pong(p)) if p.nonce == nonce => return Ok(()),
            VmEvent::Guest(_) => {
                return Err(VmHandleError::Unexpected("a reply other than the pong"))
            }
            other => vm.fail_on(other)?,
        }
    }
}

/// The host's hard deadline for a run whose guest-side timeout is
/// `guest`: the guest must have time to kill the command, report its usage
/// and pack the outputs after its own timeout fires, so the host waits
/// 30 s plus a tenth of the timeout longer before it gives up on the VM.
/// Every caller (the runner, `exec`) uses this one rule.
pub fn host_timeout(guest: Duration) -> Duration {
    guest + Duration::from_secs(30) + guest / 10
}

/// Runs `request`, passing output chunks to `on_output` as they arrive.
/// The host-side `timeout` is a hard deadline; the guest-side one (in the
/// request) should be shorter so the guest can report usage.
pub fn run(
    vm: &mut VmHandle,
    request: &RunRequest,
    timeout: Duration,
    on_output: &mut dyn FnMut(OutputStream, &[u8]),
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let frame = encode(&HostMsg::Run(request.clone()))?;
    vm.send_to_guest(&frame)?;
    let deadline = started + timeout;
    loop {
        let event = match vm.next_event(deadline) {
            Ok(event) => event,
            Err(VmHandleError::Timeout(_)) => return Err(RunError::Timeout(timeout)),
            Err(e) => return Err(e.into()),
        };
        match event {
            VmEvent::Guest(GuestMsg::Stdout(bytes)) => on_output(OutputStream::Stdout, &bytes),
            VmEvent::Guest(GuestMsg::Stderr(bytes)) => on_output(OutputStream::Stderr, &bytes),
            VmEvent::Guest(GuestMsg::Exited(exited)) => {
                return Ok(RunOutcome {
                    exited,
                    wall: started.elapsed(),
                });
            }
            VmEvent::Guest(GuestMsg::Error(report)) => return Err(RunError::Guest(report)),
            VmEvent::Guest(_) => {
                return Err(VmHandleError::Unexpected("a message out of place during a run").into())
            }
            other => vm.fail_on(other)?,
        }
    }
}

/// Wall-clock time for a guest to adopt before it runs anything: a VM
/// restored from a snapshot otherwise believes it is still snapshot time.
pub fn host_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// 32 bytes from the host's kernel RNG for the guest to mix into its own:
/// clones of one snapshot would otherwise share their RNG state.
pub fn fresh_seed() -> [u8; 32] {
    use std::io::Read;
    let mut seed = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut seed);
    }
    seed
}
