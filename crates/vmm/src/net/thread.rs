//! The network thread: waits with poll(2) on the inbox's eventfd and on
//! every upstream socket the proxy can make progress on, with smoltcp's
//! next timer as the timeout, and drives [`NetStack`] in between.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::{NetInput, NetStack};

/// Why the network thread stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetThreadError {
    /// poll(2) failed with something other than EINTR.
    #[error("wait for network events")]
    Poll(#[source] Errno),
}

/// Runs the stack until [`NetInput::Shutdown`] arrives or every sender of
/// `inbox` is gone. Whoever sends on `inbox` writes `wake` afterwards.
///
/// Syscalls in the loop, for the thread's seccomp filter (`ThreadKind::Net`
/// in `sbxrun_jail`): `poll` (glibc may use `ppoll`), `read` on the
/// eventfd, `recvfrom`/`sendto` (std's read and write on a `TcpStream`),
/// `shutdown` and `close` on upstream sockets, `sendmsg` to the broker,
/// `write` on the virtio-net irqfd, `clock_gettime` (vDSO, normally no
/// syscall), `futex` (the channel, the transport's lock), and
/// `mmap`/`mprotect`/`munmap`/`mremap`/`brk`/`madvise` from the allocator.
/// Writing the inbox eventfd is the senders' business.
pub(crate) fn run_net_thread(
    mut stack: NetStack,
    inbox: Receiver<NetInput>,
    wake: EventFd,
) -> Result<(), NetThreadError> {
    #[expect(unsafe_code, reason = "vmm-sys-util's EventFd has no AsFd")]
    // SAFETY: `wake` is owned by this function and outlives every use of
    // the borrowed fd, which never leaves this function.
    let wake_fd = unsafe { BorrowedFd::borrow_raw(wake.as_raw_fd()) };
    loop {
        loop {
            match inbox.try_recv() {
                Ok(input) => {
                    if !stack.handle(input, Instant::now()) {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        let timeout = poll_timeout(stack.poll_once(Instant::now()));
        let woken = {
            let mut fds = vec![PollFd::new(wake_fd, PollFlags::POLLIN)];
            fds.extend(stack.upstream_interests().map(|(fd, interest)| {
                let mut flags = PollFlags::empty();
                flags.set(PollFlags::POLLIN, interest.readable);
                flags.set(PollFlags::POLLOUT, interest.writable);
                PollFd::new(fd, flags)
            }));
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(NetThreadError::Poll(e)),
            }
            fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
        };
        if woken {
            // Resets the counter; inputs sent after this write it again.
            let _ = wake.read();
        }
    }
}

/// smoltcp's delay, rounded up to whole milliseconds: rounding down would
/// wake early and spin until the timer is due.
fn poll_timeout(delay: Option<Duration>) -> PollTimeout {
    match delay {
        None => PollTimeout::NONE,
        Some(delay) => {
            let ms = delay.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}
