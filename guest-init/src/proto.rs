//! The host<->guest wire protocol: the single definition both the runner and
//! guest-init use to talk over the control channel (a plain byte stream).
//!
//! Every frame is `u32 LE length` (of what follows), `u8 kind`, payload.
//! Control messages carry a JSON payload; stdout/stderr chunks carry raw
//! bytes so binary output needs no escaping. The length is checked against
//! [`MAX_FRAME_LEN`] before anything is buffered for it, so a peer cannot make
//! the other side allocate more than that per frame.
//!
//! The exchange is strictly sequential: the guest sends [`GuestMsg::Ready`]
//! once, then for each host message answers with `Pong` (for `Ping`), or a
//! stream of `Stdout`/`Stderr` ended by exactly one `Exited` or `Error` (for
//! `Run`). `Shutdown` gets no answer: the VM resets.
//!
//! This module is deliberately free of guest-only code so the host builds and
//! tests it.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of this protocol; sent in [`Ready`]. Bump on incompatible change.
pub const PROTO_VERSION: u32 = 1;

/// Largest accepted value of the length prefix (kind byte + payload).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the frame header: the `u32` length and the kind byte.
pub const HEADER_LEN: usize = 5;

/// Largest stdout/stderr chunk the guest puts in one frame.
pub const OUTPUT_CHUNK_MAX: usize = 64 * 1024;

/// Working directory of a step when the request names none.
pub const DEFAULT_CWD: &str = "/work";

/// Frame kind bytes. Guest→host kinds are below 0x80, host→guest above.
pub mod kind {
    /// Guest is set up and waiting (JSON [`super::Ready`]).
    pub const READY: u8 = 0x01;
    /// Answer to a ping (JSON [`super::Pong`]).
    pub const PONG: u8 = 0x02;
    /// Raw bytes the step wrote to stdout.
    pub const STDOUT: u8 = 0x03;
    /// Raw bytes the step wrote to stderr.
    pub const STDERR: u8 = 0x04;
    /// The step ended (JSON [`super::Exited`]).
    pub const EXITED: u8 = 0x05;
    /// A request failed or was not understood (JSON [`super::ErrorReport`]).
    pub const ERROR: u8 = 0x06;
    /// Liveness probe (JSON [`super::Ping`]).
    pub const PING: u8 = 0x81;
    /// Run one command (JSON [`super::RunRequest`]).
    pub const RUN: u8 = 0x82;
    /// Sync and reset the VM (empty payload).
    pub const SHUTDOWN: u8 = 0x83;
}

/// Everything that can go wrong encoding or decoding frames.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`]. The stream cannot be
    /// resynchronised after this; the decoder keeps returning it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length the frame claimed (or would have had, when encoding).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A length prefix of zero: no kind byte.
    #[error("empty frame without a kind byte")]
    EmptyFrame,
    /// A kind byte this side does not know (or one meant for the other side).
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// The payload does not parse as the message the kind announces.
    #[error("bad payload for message kind {kind:#04x}: {reason}")]
    BadPayload {
        /// Kind byte of the offending frame.
        kind: u8,
        /// What the parser said.
        reason: String,
    },
    /// A message could not be serialised.
    #[error("failed to encode message: {0}")]
    Encode(String),
}

/// Guest→host: guest-init has mounted everything and waits for requests.
/// This waiting point is where pool snapshots are taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// [`PROTO_VERSION`] of the guest.
    pub proto_version: u32,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Milliseconds since kernel boot (CLOCK_BOOTTIME) when ready.
    pub boot_ms: u64,
    /// Milliseconds guest-init itself spent on setup.
    #[serde(default)]
    pub init_ms: u64,
    /// Version of the guest-init crate.
    #[serde(default)]
    pub agent_version: String,
}

/// Host→guest liveness probe, sent after restoring a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed back in [`Pong`].
    pub nonce: u64,
}

/// Guest→host answer to [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the ping.
    pub nonce: u64,
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `argv[0]` is looked up in the step's `PATH` unless it contains `/`.
    Argv(Vec<String>),
    /// Run as `/bin/sh -eu -c SCRIPT`.
    Shell(String),
}

/// Which user the step runs as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum User {
    /// uid/gid 1000 ("sbx"), home `/work`.
    #[default]
    Unprivileged,
    /// uid/gid 0.
    Root,
    /// The user a container image's config names, resolved by the host in
    /// the image's own `/etc/passwd` and `/etc/group`.
    Ids { uid: u32, gid: u32 },
}

/// Resource limits applied to the step (soft = hard). `None` keeps the
/// guest kernel's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open file descriptors.
    #[serde(default)]
    pub nofile: Option<u64>,
    /// RLIMIT_NPROC: processes of the step's user.
    #[serde(default)]
    pub nproc: Option<u64>,
    /// RLIMIT_FSIZE: largest file the step may write, in bytes.
    #[serde(default)]
    pub fsize: Option<u64>,
    /// RLIMIT_AS: address space per process, in bytes.
    #[serde(default)]
    pub address_space: Option<u64>,
}

/// Host→guest: run one command and stream its output.
///
/// Optional fields default so that older hosts keep working when the request
/// grows; unknown fields are refused so a newer host never has a setting
/// silently ignored by an older guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The command.
    pub command: Command,
    /// Extra environment on top of a clean one holding `PATH`, `HOME`,
    /// `USER` and `LOGNAME` defaults (which these may override).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the step's root.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// User to run as.
    #[serde(default)]
    pub user: User,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Rlimits,
    /// Wall clock to set before running (nanoseconds since the Unix epoch).
    pub unix_time_ns: u64,
    /// Mixed into the kernel RNG, which is then reseeded, before running.
    #[serde(with = "hex_seed")]
    pub rng_seed: [u8; 32],
    /// Guest-side deadline; on expiry the step's process group is killed and
    /// [`Exited::timed_out`] is set.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes fed to stdin (hex in JSON); `None` means `/dev/null`.
    #[serde(default, with = "hex_opt")]
    pub stdin: Option<Vec<u8>>,
    /// Artifacts moved over the input and output disks.
    #[serde(default)]
    pub artifacts: ArtifactsRequest,
    /// The step's network; `None` leaves the interface down (no egress).
    #[serde(default)]
    pub network: Option<NetworkSetup>,
    /// A regular file, relative to `cwd`, opened as the step's user and
    /// given as stdin (instead of [`RunRequest::stdin`] or `/dev/null`).
    /// Failing to open it ends the request with [`ErrorCode::Stdin`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_file: Option<String>,
    /// CPU time limit in milliseconds: RLIMIT_CPU with the soft limit
    /// rounded up to whole seconds (SIGXCPU) and the hard limit a second
    /// above it (SIGKILL). The host judges the exact limit from
    /// [`Exited::rusage`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Memory limit in bytes: the step runs in a cgroup with this
    /// `memory.max`, memory overcommit is allowed so that allocations fail
    /// at the limit instead of at `mmap`, and [`Exited::memory`] reports
    /// the cgroup's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
}

/// The IPv4 setup of a step that may reach the outside through the VMM's
/// userspace network stack, which answers at `gateway` and `dns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSetup {
    /// The guest's address on its interface.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of the link's subnet.
    pub prefix_len: u8,
    /// The default route.
    pub gateway: std::net::Ipv4Addr,
    /// The only resolver (written to `/etc/resolv.conf`).
    pub dns: std::net::Ipv4Addr,
}

/// Input disk path, as the guest sees it (read-only).
pub const INPUT_DISK: &str = "/dev/vdb";
/// Output disk path, as the guest sees it.
pub const OUTPUT_DISK: &str = "/dev/vdc";

/// What guest-init does with the artifact disks around a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsRequest {
    /// Before running: unpack the tar stream at offset 0 of
    /// [`INPUT_DISK`] into the working directory, owned by the step's user.
    #[serde(default)]
    pub unpack_inputs: bool,
    /// Length of that tar stream, so the guest reads just the archive and
    /// not the disk's readahead around it. Absent: read until its end marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// After running: pack these paths or globs (relative to the working
    /// directory; `*` and `?` never match `/`) as a tar stream at offset 0
    /// of [`OUTPUT_DISK`]. Empty: the output disk is left untouched.
    #[serde(default)]
    pub outputs: Vec<String>,
}

/// How packing the outputs went (reported in [`Exited`]). Advisory only:
/// the host validates the output disk itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSummary {
    /// Entries written.
    pub entries: u64,
    /// Bytes of the tar stream.
    pub bytes: u64,
    /// Time spent packing, microseconds.
    pub pack_us: u64,
    /// Packing failed (the reason went to stderr); the disk holds no
    /// complete archive.
    pub failed: bool,
}

fn default_cwd() -> String {
    DEFAULT_CWD.to_owned()
}

/// Why a [`RunRequest`] is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// `Argv` with no elements.
    #[error("empty argv")]
    EmptyArgv,
    /// A string that must become a C string holds a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// An environment name that is empty or holds `=`.
    #[error("invalid environment variable name {0:?}")]
    BadEnvName(String),
    /// The working directory is not absolute.
    #[error("cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    /// `stdin_file` names no file.
    #[error("stdin_file is empty")]
    EmptyStdinFile,
}

impl RunRequest {
    /// Checks what the guest would otherwise refuse at spawn time, so the
    /// host can reject a bad request early with the same rules.
    pub fn validate(&self) -> Result<(), RequestError> {
        match &self.command {
            Command::Argv(argv) => {
                if argv.is_empty() {
                    return Err(RequestError::EmptyArgv);
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(RequestError::Nul("argv"));
                }
            }
            Command::Shell(script) => {
                if script.contains('\0') {
                    return Err(RequestError::Nul("script"));
                }
            }
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(RequestError::BadEnvName(name.clone()));
            }
            if name.contains('\0') || value.contains('\0') {
                return Err(RequestError::Nul("env"));
            }
        }
        if self.cwd.contains('\0') {
            return Err(RequestError::Nul("cwd"));
        }
        if !self.cwd.starts_with('/') {
            return Err(RequestError::RelativeCwd(self.cwd.clone()));
        }
        if let Some(f) = &self.stdin_file {
            if f.contains('\0') {
                return Err(RequestError::Nul("stdin_file"));
            }
            if f.is_empty() {
                return Err(RequestError::EmptyStdinFile);
            }
        }
        Ok(())
    }
}

/// How the step's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Normal exit with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

/// Resource usage of the step's main process and its waited-for children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rusage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub system_us: u64,
    /// Peak resident set size, KiB.
    pub max_rss_kib: u64,
}

/// Guest→host: the step's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// Exit code or signal.
    pub status: ExitStatus,
    /// Resource usage.
    pub rusage: Rusage,
    /// Wall time from spawn to exit, microseconds.
    pub wall_us: u64,
    /// The guest-side timeout fired and killed the step.
    pub timed_out: bool,
    /// Present when outputs were requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<PackSummary>,
    /// The step's memory cgroup events; present when the request had a
    /// [`RunRequest::memory_max`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryEvents>,
    /// When guest-init reached each phase of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<GuestPhases>,
}

/// Counters of the step's cgroup `memory.events` (cgroup v2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    /// Times usage reached `memory.max` and reclaim ran.
    #[serde(default)]
    pub max: u64,
    /// Times an allocation was about to fail at the limit.
    #[serde(default)]
    pub oom: u64,
    /// Processes the OOM killer killed in the cgroup.
    #[serde(default)]
    pub oom_kill: u64,
}

impl MemoryEvents {
    /// Parses the text of a `memory.events` file; unknown keys and
    /// malformed lines are ignored.
    pub fn parse(text: &str) -> MemoryEvents {
        let mut m = MemoryEvents::default();
        for line in text.lines() {
            let mut parts = line.split_ascii_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "max" => m.max = n,
                "oom" => m.oom = n,
                "oom_kill" => m.oom_kill = n,
                _ => {}
            }
        }
        m
    }
}

/// Where guest-init's time for one request went: the moment each phase
/// ended, in microseconds after guest-init read the request. Only the
/// guest's clock can tell these apart; the host sees one round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPhases {
    /// Clock set, RNG reseeded, network configured.
    pub prepared_us: u64,
    /// Input archive unpacked (equal to `prepared_us` without inputs).
    pub inputs_us: u64,
    /// Pipes and the process description ready, just before the spawn.
    pub sandbox_us: u64,
    /// The command's process exists (its exec has been attempted).
    pub spawned_us: u64,
    /// The command's main process was reaped and its output drained.
    pub exited_us: u64,
    /// Outputs packed and synced (equal to `exited_us` without outputs).
    pub outputs_us: u64,
    /// The exit report is about to be written to the channel.
    pub reply_us: u64,
}

/// Category of a guest-side failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or refused by validation.
    BadRequest,
    /// A frame kind the guest does not know.
    UnknownKind,
    /// The command does not exist in the step's root.
    CommandNotFound,
    /// The command exists but could not be started (cwd, permissions, ...).
    SpawnFailed,
    /// guest-init could not set the VM up; it reboots after sending this.
    Setup,
    /// The request's `stdin_file` could not be opened as the step's user.
    Stdin,
    /// Any other guest-side failure.
    Internal,
    /// A code this side does not know yet.
    #[serde(other)]
    Other,
}

/// Guest→host: a request failed or was not understood. Ends a `Run` like
/// `Exited` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Category.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// A message the guest sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    /// See [`Ready`].
    Ready(Ready),
    /// See [`Pong`].
    Pong(Pong),
    /// A chunk of the step's stdout.
    Stdout(Vec<u8>),
    /// A chunk of the step's stderr.
    Stderr(Vec<u8>),
    /// See [`Exited`].
    Exited(Exited),
    /// See [`ErrorReport`].
    Error(ErrorReport),
}

/// A message the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one message per request; boxing would only burden callers"
)]
pub enum HostMsg {
    /// See [`Ping`].
    Ping(Ping),
    /// See [`RunRequest`].
    Run(RunRequest),
    /// Sync filesystems and reset the VM.
    Shutdown,
}

/// A message type that travels in frames.
pub trait Message: Sized {
    /// The frame kind byte for this message.
    fn kind(&self) -> u8;
    /// Appends the payload (without header) to `out`.
    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), ProtoError>;
    /// Parses a frame's kind and payload.
    fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtoError>;
}

fn write_json<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    serde_json::to_writer(out, value).map_err(|e| ProtoError::Encode(e.to_string()))
}

fn read_json<'a, T: Deserialize<'a>>(kind: u8, payload: &'a [u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(|e| ProtoError::BadPayload {
        kind,
        reason: e.to_string(),
    })
}

impl Message for GuestMsg {
    fn kind(&self) -> u8 {
        match self {
            GuestMsg::Ready(_) => kind::READY,
            GuestMsg::Pong(_) => kind::PONG,
            GuestMsg::Stdout(_) => kind::STDOUT,
            GuestMsg::Stderr(_) => kind::STDERR,
            GuestMsg::Exited(_) => kind::EXITED,
            GuestMsg::Error(_) => kind::ERROR,
        }
    }

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        match self {
            GuestMsg::Ready(m) => write_json(m, out),
            GuestMsg::Pong(m) => write_json(m, out),
            GuestMsg::Stdout(b) | GuestMsg::Stderr(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            GuestMsg::Exited(m) => write_json(m, out),
            GuestMsg::Error(m) => write_json(m, out),
        }
    }

    fn decode(k: u8, payload: &[u8]) -> Result<Self, ProtoError> {
        match k {
            kind::READY => read_json(k, payload).map(GuestMsg::Ready),
            kind::PONG => read_json(k, payload).map(GuestMsg::Pong),
            kind::STDOUT => Ok(GuestMsg::Stdout(payload.to_vec())),
            kind::STDERR => Ok(GuestMsg::Stderr(payload.to_vec())),
            kind::EXITED => read_json(k, payload).map(GuestMsg::Exited),
            kind::ERROR => read_json(k, payload).map(GuestMsg::Error),
            other => Err(ProtoError::UnknownKind(other)),
        }
    }
}

impl Message for HostMsg {
    fn kind(&self) -> u8 {
        match self {
            HostMsg::Ping(_) => kind::PING,
            HostMsg::Run(_) => kind::RUN,
            HostMsg::Shutdown => kind::SHUTDOWN,
        }
    }

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        match self {
            HostMsg::Ping(m) => write_json(m, out),
            HostMsg::Run(m) => write_json(m, out),
            HostMsg::Shutdown => Ok(()),
        }
    }

    fn decode(k: u8, payload: &[u8]) -> Result<Self, ProtoError> {
        match k {
            kind::PING => read_json(k, payload).map(HostMsg::Ping),
            kind::RUN => read_json(k, payload).map(HostMsg::Run),
            kind::SHUTDOWN if payload.is_empty() => Ok(HostMsg::Shutdown),
            kind::SHUTDOWN => Err(ProtoError::BadPayload {
                kind: k,
                reason: "shutdown carries no payload".to_owned(),
            }),
            other => Err(ProtoError::UnknownKind(other)),
        }
    }
}

/// Appends one complete frame holding `msg` to `out`. On error `out` is left
/// as it was.
pub fn encode_into<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(msg.kind());
    if let Err(e) = msg.write_payload(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    let prefix = match u32::try_from(len) {
        Ok(l) if len <= MAX_FRAME_LEN => l,
        _ => {
            out.truncate(start);
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
    };
    out[start..start + 4].copy_from_slice(&prefix.to_le_bytes());
    Ok(())
}

/// Encodes `msg` as one complete frame.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Header of a raw frame of `kind` whose payload (`payload_len` bytes) the
/// caller writes itself, e.g. with `writev` to avoid copying output chunks.
pub fn raw_header(kind: u8, payload_len: usize) -> Result<[u8; HEADER_LEN], ProtoError> {
    let len = payload_len + 1;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // Cannot truncate: bounded by MAX_FRAME_LEN above.
    let len = len as u32;
    let mut h = [0; HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind;
    Ok(h)
}

/// Incremental decoder: feed it bytes as they arrive, pop complete messages.
///
/// A frame with an unknown kind or bad payload is consumed and reported, and
/// decoding continues with the next frame. An oversized length cannot be
/// skipped safely (the peer is broken or hostile), so it poisons the decoder.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buf: Vec<u8>,
    start: usize,
    poisoned: Option<ProtoError>,
    _msg: PhantomData<fn() -> M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            poisoned: None,
            _msg: PhantomData,
        }
    }

    /// Appends received bytes. Ignored once the decoder is poisoned.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Pops the next complete message: `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<M>, ProtoError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        let Some(prefix) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > MAX_FRAME_LEN {
            let e = ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            };
            self.poisoned = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(e);
        }
        if len == 0 {
            self.start += 4;
            return Err(ProtoError::EmptyFrame);
        }
        let Some(frame) = avail.get(4..4 + len) else {
            return Ok(None);
        };
        let result = M::decode(frame[0], &frame[1..]);
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        result.map(Some)
    }
}

/// Hex text for the fixed-size RNG seed.
mod hex_seed {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(d)?;
        let bytes = super::hex::decode(text).map_err(D::Error::custom)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| D::Error::custom("rng_seed must be 32 bytes"))
    }
}

/// Hex text for optional byte strings.
mod hex_opt {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&super::hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<&str>::deserialize(d)? {
            Some(text) => super::hex::decode(text).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// Lower-case hex without a dependency.
mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    fn nibble(c: u8) -> Result<u8, &'static str> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err("invalid hex digit"),
        }
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, &'static str> {
        let t = text.as_bytes();
        if t.len() % 2 != 0 {
            return Err("odd number of hex digits");
        }
        t.chunks_exact(2)
            .map(|p| Ok((nibble(p[0])? << 4) | nibble(p[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests;
