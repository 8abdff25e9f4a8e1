//! The control channel to the host: the virtio console `/dev/hvc0` in raw
//! mode, carrying `guest_init::proto` frames both ways.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use guest_init::proto::{
    self, ErrorCode, ErrorReport, FrameDecoder, GuestMsg, HostMsg, ProtoError,
};

use crate::sys::{self, Context, SysError};

/// Path of the control channel device.
pub const DEVICE: &str = "/dev/hvc0";

/// How long to wait for the console device to appear after boot (a
/// multiport virtio console adds its ports asynchronously, slowly when the
/// kernel is emulated).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(30);

/// Size of one read from the channel.
const READ_CHUNK: usize = 64 * 1024;

/// A decoded host message or the reason a frame was refused.
pub type Incoming = Result<HostMsg, ProtoError>;

/// The open control channel.
pub struct Channel {
    file: File,
    decoder: FrameDecoder<HostMsg>,
    deferred: VecDeque<Incoming>,
    rbuf: Vec<u8>,
}

impl Channel {
    /// Opens `DEVICE` (waiting for the console driver to create it) and puts
    /// it in raw mode.
    pub fn open() -> Result<Self, SysError> {
        let start = Instant::now();
        let file = loop {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(DEVICE)
            {
                Ok(f) => break f,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound && start.elapsed() < APPEAR_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context(format!("open {DEVICE}")),
            }
        };
        sys::make_raw(file.as_raw_fd()).context(format!("set {DEVICE} to raw mode"))?;
        Ok(Self {
            file,
            decoder: FrameDecoder::new(),
            deferred: VecDeque::new(),
            rbuf: vec![0; READ_CHUNK],
        })
    }

    /// Descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &GuestMsg) -> io::Result<()> {
        let frame = proto::encode(msg).map_err(io::Error::other)?;
        self.file.write_all(&frame)
    }

    /// Sends an `Error` frame.
    pub fn send_error(&mut self, code: ErrorCode, message: impl Into<String>) -> io::Result<()> {
        self.send(&GuestMsg::Error(ErrorReport {
            code,
            message: message.into(),
        }))
    }

    /// Writes pre-built frame pieces with as few `writev` calls as possible.
    pub fn send_vectored(&mut self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        while !parts.is_empty() {
            match self.file.write_vectored(parts) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One `read` from the channel into the decoder; returns the byte count
    /// (0 means the other end hung up).
    pub fn fill(&mut self) -> io::Result<usize> {
        let n = loop {
            match self.file.read(&mut self.rbuf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.decoder.feed(&self.rbuf[..n]);
        Ok(n)
    }

    /// The next complete message: messages put back with [`Channel::defer`]
    /// first, then what the decoder holds.
    pub fn next_message(&mut self) -> Option<Incoming> {
        if let Some(m) = self.deferred.pop_front() {
            return Some(m);
        }
        self.decoder.next_message().transpose()
    }

    /// Keeps a message for after the current request.
    pub fn defer(&mut self, msg: Incoming) {
        self.deferred.push_back(msg);
    }
}
