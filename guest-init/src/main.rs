//! guest-init: PID 1 of every sbxrun microVM. Sets the VM up, says `Ready`
//! on the control channel, then serves the host's requests (normally one
//! `Run`) until told to shut down. On a fatal error it reports on the serial
//! console and the channel, then resets the VM.

mod artifacts;
mod channel;
mod direct;
mod memcg;
mod net;
mod run;
mod setup;
mod spawn;
mod sys;

use std::fmt::Display;
use std::io;
use std::time::Instant;

use guest_init::proto::{ErrorCode, GuestMsg, HostMsg, Pong, ProtoError, Ready, PROTO_VERSION};

use crate::channel::Channel;
use crate::run::{Flow, Handles};

fn main() {
    let started = Instant::now();
    sys::default_sigpipe();
    let mut chan = None;
    if let Err(e) = boot(started, &mut chan) {
        let code = match e {
            BootError::Channel(_) => ErrorCode::Internal,
            _ => ErrorCode::Setup,
        };
        fatal(chan.as_mut(), code, &e);
    }
}

/// Everything from the first mount to the end of serving.
fn boot(started: Instant, chan_slot: &mut Option<Channel>) -> Result<(), BootError> {
    sys::set_umask();
    setup::early()?;
    setup::mounts()?;
    net::loopback_up()?;
    let handles = Handles {
        devnull: setup::open_device("/dev/null", true)?,
        urandom: setup::open_device("/dev/urandom", true)?,
    };
    run::warm_step_root(&handles);
    // Before the snapshot, so that a step with a memory limit only sets it.
    // A kernel without cgroups fails here; such a step then fails alone.
    let _ = memcg::prepare_hierarchy();
    let chan = chan_slot.insert(Channel::open()?);
    let ready = Ready {
        proto_version: PROTO_VERSION,
        kernel_release: sys::kernel_release(),
        boot_ms: sys::boottime_ms(),
        init_ms: started.elapsed().as_millis() as u64,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    chan.send(&GuestMsg::Ready(ready))
        .map_err(BootError::Channel)?;
    serve(chan, &handles).map_err(BootError::Channel)?;
    sys::sync_and_reboot()
}

/// Answers requests until `Shutdown`; `Err` only when the channel breaks.
fn serve(chan: &mut Channel, handles: &Handles) -> io::Result<()> {
    loop {
        while let Some(msg) = chan.next_message() {
            let flow = match msg {
                Ok(HostMsg::Ping(p)) => {
                    chan.send(&GuestMsg::Pong(Pong { nonce: p.nonce }))?;
                    Flow::Continue
                }
                Ok(HostMsg::Run(req)) => run::handle_run(chan, handles, req)?,
                Ok(HostMsg::Shutdown) => Flow::Shutdown,
                Err(e @ ProtoError::FrameTooLarge { .. }) => {
                    // The stream cannot be resynchronised.
                    return Err(io::Error::other(e));
                }
                Err(e @ ProtoError::UnknownKind(_)) => {
                    chan.send_error(ErrorCode::UnknownKind, e.to_string())?;
                    Flow::Continue
                }
                Err(e) => {
                    chan.send_error(ErrorCode::BadRequest, e.to_string())?;
                    Flow::Continue
                }
            };
            if flow == Flow::Shutdown {
                return Ok(());
            }
        }
        if chan.fill()? == 0 {
            // The host end of the port is not connected; ours never
            // disconnects. Back off instead of spinning on it.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Fatal errors of guest-init.
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error("setup: {0}")]
    Setup(#[from] setup::SetupError),
    #[error("setup: {0}")]
    Sys(#[from] sys::SysError),
    #[error("control channel: {0}")]
    Channel(#[source] io::Error),
}

/// Reports on the serial console and (if open) the channel, then resets.
fn fatal(chan: Option<&mut Channel>, code: ErrorCode, e: &dyn Display) -> ! {
    eprintln!("guest-init: fatal: {e}");
    if let Some(c) = chan {
        let _ = c.send_error(code, format!("guest-init: {e}"));
    }
    sys::sync_and_reboot()
}
