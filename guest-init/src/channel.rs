//! The control channel to the host: port 0 of the multiport virtio
//! console, a plain character device (`/dev/vportNp0`, not a tty), carrying
//! `guest_init::proto` frames both ways. Each write reaches the host as one
//! buffer of up to 32 KiB, so output goes in as few, large writes as
//! possible.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_init::proto::{
    self, ErrorCode, ErrorReport, FrameDecoder, GuestMsg, HostMsg, ProtoError,
};

use crate::sys::{self, Context, SysError};

/// Name the host gives the control port.
pub const PORT_NAME: &str = "sbxrun.control";

/// Where the console driver lists its ports, each with a `name` file.
const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// How long to wait for the port to appear and for the host to connect
/// after boot (the driver adds ports asynchronously, slowly when the kernel
/// is emulated).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(30);

/// How often to look again while waiting for the port.
const APPEAR_POLL: Duration = Duration::from_millis(10);

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
    /// Finds the control port (waiting for the console driver to add it),
    /// opens it and waits until the host end is connected.
    pub fn open() -> Result<Self, SysError> {
        let start = Instant::now();
        let path = loop {
            match find_port().context(format!("look for port {PORT_NAME} in {PORTS_DIR}"))? {
                Some(path) => break path,
                None if start.elapsed() < APPEAR_TIMEOUT => std::thread::sleep(APPEAR_POLL),
                None => {
                    return Err(io::Error::from(io::ErrorKind::NotFound))
                        .context(format!("virtio port {PORT_NAME} did not appear"))
                }
            }
        };
        let what = path.display().to_string();
        let file = loop {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => break f,
                // devtmpfs may lag the sysfs entry.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound && start.elapsed() < APPEAR_TIMEOUT =>
                {
                    std::thread::sleep(APPEAR_POLL);
                }
                Err(e) => return Err(e).context(format!("open {what}")),
            }
        };
        wait_host(&file, start).context(format!("wait for the host on {what}"))?;
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

    /// Writes one frame the caller built (header included). The port takes
    /// at most 32 KiB per write; write_all goes on after short writes and
    /// EINTR.
    pub fn send_raw(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write_all(frame)
    }

    /// One `read` from the channel into the decoder; returns the byte count
    /// (0 means the host end is not connected).
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

/// The `/dev` path of the port named [`PORT_NAME`], if the driver has added
/// and named it yet.
fn find_port() -> io::Result<Option<PathBuf>> {
    let dir = match fs::read_dir(PORTS_DIR) {
        Ok(dir) => dir,
        // No port added yet: the class directory comes with the first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        // `name` exists only once the host has named the port.
        let name = match fs::read(entry.path().join("name")) {
            Ok(name) => name,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if name.strip_suffix(b"\n").unwrap_or(&name) == PORT_NAME.as_bytes() {
            return Ok(Some(PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Waits until the host end of the port is connected: until then the port
/// reports hang-up, reads return 0 and writes block.
fn wait_host(file: &File, start: Instant) -> io::Result<()> {
    loop {
        let mut fds = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        sys::poll(&mut fds, Some(APPEAR_POLL))?;
        let ready = fds[0].revents;
        if ready & libc::POLLOUT != 0 && ready & libc::POLLHUP == 0 {
            return Ok(());
        }
        if start.elapsed() >= APPEAR_TIMEOUT {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        // Hang-up makes poll return at once; do not spin on it.
        if ready & libc::POLLHUP != 0 {
            std::thread::sleep(APPEAR_POLL);
        }
    }
}
