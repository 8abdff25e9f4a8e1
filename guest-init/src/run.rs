//! One `Run` request: set the clock, reseed the RNG, start the command in the
//! step's root, stream its output as frames, and report how it ended.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use guest_init::proto::{
    self, kind, Command, ErrorCode, ExitStatus, Exited, GuestMsg, GuestPhases, HostMsg, Pong,
    ProtoError, Rlimits, RunRequest, Rusage, User, OUTPUT_CHUNK_MAX,
};

use crate::channel::Channel;
use crate::memcg::StepCgroup;
use crate::spawn::{self, SpawnError, SpawnSpec};
use crate::sys;

/// Root directory of every step (the overlay).
pub const STEP_ROOT: &str = "/mnt/root";

/// uid and gid of the unprivileged user "sbx".
pub const SBX_ID: u32 = 1000;

/// `PATH` of a step unless the request sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// Flush buffered output after this long without new output...
const FLUSH_QUIET: Duration = Duration::from_millis(2);
/// ...and at the latest this long after the oldest unsent byte arrived.
const FLUSH_MAX_DELAY: Duration = Duration::from_millis(50);
/// After the main process exits, how long leftover holders of its pipes may
/// keep them open (they have been killed) before the pipes are abandoned.
const DRAIN: Duration = Duration::from_millis(200);

/// Descriptors kept open across requests.
pub struct Handles {
    /// `/dev/null`, stdin when the request gives none.
    pub devnull: OwnedFd,
    /// `/dev/urandom`, for reseeding.
    pub urandom: OwnedFd,
}

/// What the serving loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Wait for the next request.
    Continue,
    /// The host asked to shut down.
    Shutdown,
}

/// The step's environment: defaults for the user, then the request's
/// variables (a later definition of a name replaces an earlier one in place).
pub fn step_env(user: User, extra: &[(String, String)]) -> Vec<(String, String)> {
    let uid_name;
    let (home, name) = match user {
        User::Root | User::Ids { uid: 0, .. } => ("/root", "root"),
        User::Unprivileged => (proto::DEFAULT_CWD, "sbx"),
        // The image's own passwd names the user; the number is what the
        // step can rely on without reading it.
        User::Ids { uid, .. } => {
            uid_name = uid.to_string();
            ("/", uid_name.as_str())
        }
    };
    let mut env: Vec<(String, String)> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", home),
        ("USER", name),
        ("LOGNAME", name),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1.clone_from(v),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// The argument vector a command runs as.
pub fn command_argv(command: &Command) -> Vec<String> {
    match command {
        Command::Argv(argv) => argv.clone(),
        Command::Shell(script) => ["/bin/sh", "-eu", "-c", script]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

/// Paths `execve` tries for `argv0`, searching `path` like `execvp`.
pub fn exec_candidates(argv0: &str, path: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_owned()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{argv0}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// The `(resource, soft, hard)` limits of a request. The CPU limit's soft
/// limit is its time rounded up to whole seconds (SIGXCPU, which ends the
/// process unless it handles it), the hard one a second later (SIGKILL).
fn rlimit_triples(r: &Rlimits, cpu_time_ms: Option<u64>) -> Vec<(libc::c_int, u64, u64)> {
    let mut v: Vec<(libc::c_int, u64, u64)> = [
        (libc::RLIMIT_NOFILE as libc::c_int, r.nofile),
        (libc::RLIMIT_NPROC as libc::c_int, r.nproc),
        (libc::RLIMIT_FSIZE as libc::c_int, r.fsize),
        (libc::RLIMIT_AS as libc::c_int, r.address_space),
    ]
    .into_iter()
    .filter_map(|(res, v)| v.map(|v| (res, v, v)))
    .collect();
    if let Some(ms) = cpu_time_ms {
        let soft = ms.div_ceil(1000).max(1);
        v.push((libc::RLIMIT_CPU as libc::c_int, soft, soft + 1));
    }
    v
}

fn cstrings<'a>(items: impl IntoIterator<Item = &'a str>) -> io::Result<Vec<CString>> {
    items.into_iter().map(sys::cstr).collect()
}

fn build_spec(
    req: &RunRequest,
    stdio: [i32; 3],
    cgroup_procs: Option<i32>,
) -> io::Result<SpawnSpec> {
    let argv = command_argv(&req.command);
    let env = step_env(req.user, &req.env);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let argv0 = argv.first().map_or("", String::as_str);
    let candidates = exec_candidates(argv0, path);
    let env_strings: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(SpawnSpec {
        candidates: cstrings(candidates.iter().map(String::as_str))?,
        argv: cstrings(argv.iter().map(String::as_str))?,
        envp: cstrings(env_strings.iter().map(String::as_str))?,
        root: sys::cstr(STEP_ROOT)?,
        cwd: sys::cstr(&req.cwd)?,
        ids: match req.user {
            User::Unprivileged => Some((SBX_ID, SBX_ID)),
            User::Root => None,
            User::Ids { uid, gid } => Some((uid, gid)),
        },
        rlimits: rlimit_triples(&req.rlimits, req.cpu_time_ms),
        stdio,
        stdin_file: req.stdin_file.as_deref().map(sys::cstr).transpose()?,
        cgroup_procs,
    })
}

/// A pipe for stdin already holding all of `data`, its write end closed.
fn stdin_pipe(data: &[u8]) -> io::Result<OwnedFd> {
    let (r, w) = sys::pipe()?;
    // The whole input must fit so that this write cannot block; frames are
    // capped at 1 MiB, which is the kernel's default maximum pipe size.
    if data.len() > 64 * 1024 {
        sys::set_pipe_size(&w, data.len())?;
    }
    File::from(w).write_all(data)?;
    Ok(r)
}

/// The shell every `run:` script starts with.
const STEP_SHELL: &str = "/bin/sh";

/// Runs the step shell once, as a step would run it, before the snapshot is
/// taken: its binary, libraries and the kernel's caches for them are then
/// part of the snapshot instead of being read from the root disk by every
/// step (about half a second of a trivial step's time on kvm-pvm hosts).
/// An image without a shell has nothing to warm; a failure here only
/// forgoes the gain, so it is not an error.
pub fn warm_step_root(h: &Handles) {
    if std::fs::symlink_metadata(format!("{STEP_ROOT}{STEP_SHELL}")).is_err() {
        return;
    }
    let req = RunRequest {
        command: Command::Argv(vec![STEP_SHELL.into(), "-c".into(), ":".into()]),
        env: Vec::new(),
        cwd: proto::DEFAULT_CWD.into(),
        user: User::Unprivileged,
        rlimits: Rlimits::default(),
        unix_time_ns: 0,
        rng_seed: [0; 32],
        timeout_ms: None,
        stdin: None,
        artifacts: Default::default(),
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    };
    let null = h.devnull.as_raw_fd();
    let Ok(spec) = build_spec(&req, [null, null, null], None) else {
        return;
    };
    if let Ok(child) = spawn::spawn(&spec) {
        let _ = sys::wait4(child.pid, false);
        let _ = sys::kill_group(child.pid, libc::SIGKILL);
    }
}

/// Runs `req` to completion, streaming frames on `chan`. An `Err` means the
/// channel itself failed.
pub fn handle_run(chan: &mut Channel, h: &Handles, req: RunRequest) -> io::Result<Flow> {
    let mut clock = PhaseClock::start();
    if let Err(e) = req.validate() {
        chan.send_error(ErrorCode::BadRequest, e.to_string())?;
        return Ok(Flow::Continue);
    }
    if let Err(e) = sys::set_realtime(req.unix_time_ns) {
        chan.send_error(ErrorCode::Internal, format!("set the clock: {e}"))?;
        return Ok(Flow::Continue);
    }
    if let Err(e) = sys::reseed_rng(&h.urandom, &req.rng_seed) {
        chan.send_error(ErrorCode::Internal, format!("reseed the RNG: {e}"))?;
        return Ok(Flow::Continue);
    }
    if let Some(setup) = &req.network {
        if let Err(e) = crate::net::configure(setup) {
            chan.send_error(ErrorCode::Internal, format!("configure the network: {e}"))?;
            return Ok(Flow::Continue);
        }
    }
    clock.phases.prepared_us = clock.now_us();
    if req.artifacts.unpack_inputs {
        if let Err(e) = crate::artifacts::unpack_inputs(&work_dir(&req), req.artifacts.input_bytes)
        {
            chan.send_error(ErrorCode::Internal, format!("unpack the inputs: {e}"))?;
            return Ok(Flow::Continue);
        }
    }
    clock.phases.inputs_us = clock.now_us();
    match start_and_pump(chan, h, &req, &mut clock) {
        Ok(flow) => Ok(flow),
        Err(RunError::Channel(e)) => Err(e),
        Err(RunError::Spawn(e @ SpawnError::NotFound(_))) => {
            chan.send_error(ErrorCode::CommandNotFound, e.to_string())?;
            Ok(Flow::Continue)
        }
        Err(RunError::Spawn(e @ SpawnError::Stdin { .. })) => {
            chan.send_error(ErrorCode::Stdin, e.to_string())?;
            Ok(Flow::Continue)
        }
        Err(RunError::Spawn(e)) => {
            chan.send_error(ErrorCode::SpawnFailed, e.to_string())?;
            Ok(Flow::Continue)
        }
        Err(RunError::Local(e)) => {
            chan.send_error(ErrorCode::Internal, e.to_string())?;
            Ok(Flow::Continue)
        }
    }
}

/// Failures while running one request.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The control channel failed: fatal for guest-init.
    #[error("control channel: {0}")]
    Channel(#[source] io::Error),
    /// The command could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Preparing or supervising the command failed.
    #[error("{0}")]
    Local(#[source] io::Error),
}

/// Marks the end of each phase of a request, relative to its arrival.
struct PhaseClock {
    origin: Instant,
    phases: GuestPhases,
}

impl PhaseClock {
    fn start() -> Self {
        Self {
            origin: Instant::now(),
            phases: GuestPhases::default(),
        }
    }

    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }
}

fn start_and_pump(
    chan: &mut Channel,
    h: &Handles,
    req: &RunRequest,
    clock: &mut PhaseClock,
) -> Result<Flow, RunError> {
    let stdin = match &req.stdin {
        Some(data) => Some(stdin_pipe(data).map_err(RunError::Local)?),
        None => None,
    };
    let (out_r, out_w) = sys::pipe().map_err(RunError::Local)?;
    let (err_r, err_w) = sys::pipe().map_err(RunError::Local)?;
    let stdin_fd = stdin.as_ref().unwrap_or(&h.devnull).as_raw_fd();
    let cgroup = match req.memory_max {
        Some(max) => Some(StepCgroup::create(max).map_err(RunError::Local)?),
        None => None,
    };
    let spec = build_spec(
        req,
        [stdin_fd, out_w.as_raw_fd(), err_w.as_raw_fd()],
        cgroup.as_ref().map(StepCgroup::procs_fd),
    )
    .map_err(RunError::Local)?;
    let start = Instant::now();
    clock.phases.sandbox_us = clock.us(start);
    let child = spawn::spawn(&spec)?;
    clock.phases.spawned_us = clock.now_us();
    // Only the child may hold the write ends, or EOF never comes.
    drop((out_w, err_w, stdin));
    let mut pump = Pump {
        chan,
        child,
        streams: [
            Stream::new(out_r, kind::STDOUT),
            Stream::new(err_r, kind::STDERR),
        ],
        oldest: None,
    };
    let deadline = req.timeout_ms.map(|ms| start + Duration::from_millis(ms));
    let ended = pump.run(deadline)?;
    let memory = cgroup.as_ref().map(StepCgroup::events);
    clock.phases.exited_us = clock.now_us();
    let outputs = if req.artifacts.outputs.is_empty() {
        None
    } else {
        let (summary, err) = crate::artifacts::pack_outputs(&work_dir(req), &req.artifacts.outputs);
        if let Some(e) = err {
            let msg = format!("sbxrun: cannot pack the outputs: {e}\n");
            pump.chan
                .send(&GuestMsg::Stderr(msg.into_bytes()))
                .map_err(RunError::Channel)?;
        }
        Some(summary)
    };
    clock.phases.outputs_us = clock.now_us();
    clock.phases.reply_us = clock.now_us();
    let exited = Exited {
        status: exit_status(ended.reaped.status),
        rusage: rusage(&ended.reaped.rusage),
        wall_us: (ended.at - start).as_micros() as u64,
        timed_out: ended.timed_out,
        outputs,
        memory,
        phases: Some(clock.phases),
    };
    pump.chan
        .send(&GuestMsg::Exited(exited))
        .map_err(RunError::Channel)?;
    sys::reap_zombies();
    Ok(if ended.shutdown {
        Flow::Shutdown
    } else {
        Flow::Continue
    })
}

/// The step's working directory as guest-init sees it.
fn work_dir(req: &RunRequest) -> std::path::PathBuf {
    std::path::Path::new(STEP_ROOT).join(req.cwd.trim_start_matches('/'))
}

fn exit_status(raw: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

fn micros(tv: libc::timeval) -> u64 {
    (tv.tv_sec as u64) * 1_000_000 + tv.tv_usec as u64
}

fn rusage(ru: &libc::rusage) -> Rusage {
    Rusage {
        user_us: micros(ru.ru_utime),
        system_us: micros(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
    }
}

/// One output pipe and its unsent bytes, read in place behind room for the
/// frame header so a chunk goes out as it came in: guest-init copies no
/// output in user space. Besides saving a copy, that keeps the output off
/// the SSE registers, which some kvm-pvm hosts do not preserve for guest
/// processes that are preempted (16-byte holes of zeros; see
/// docs/kvm-pvm-hosts.md).
struct Stream {
    file: Option<File>,
    kind: u8,
    /// `proto::HEADER_LEN` bytes for the header, then the chunk.
    buf: Vec<u8>,
    /// Bytes of the chunk filled.
    len: usize,
}

impl Stream {
    fn new(fd: OwnedFd, kind: u8) -> Self {
        Self {
            file: Some(File::from(fd)),
            kind,
            buf: vec![0; proto::HEADER_LEN + OUTPUT_CHUNK_MAX],
            len: 0,
        }
    }

    /// The chunk as one frame, its header written in front of it.
    fn frame(&mut self) -> Result<&[u8], ProtoError> {
        let header = proto::raw_header(self.kind, self.len)?;
        self.buf[..proto::HEADER_LEN].copy_from_slice(&header);
        Ok(&self.buf[..proto::HEADER_LEN + self.len])
    }

    fn poll_fd(&self) -> i32 {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// One read; returns whether the buffer is now full.
    fn read(&mut self) -> io::Result<bool> {
        let Some(f) = self.file.as_mut() else {
            return Ok(false);
        };
        match f.read(&mut self.buf[proto::HEADER_LEN + self.len..]) {
            Ok(0) => self.file = None,
            Ok(n) => self.len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(self.len == OUTPUT_CHUNK_MAX)
    }
}

/// How the main process ended.
struct Ended {
    reaped: sys::Reaped,
    at: Instant,
    timed_out: bool,
    shutdown: bool,
}

/// Moves output from the child's pipes to the channel until it is done.
struct Pump<'a> {
    chan: &'a mut Channel,
    child: spawn::Child,
    streams: [Stream; 2],
    /// When the oldest unsent output byte arrived.
    oldest: Option<Instant>,
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Pump<'_> {
    /// Sends everything buffered, a frame per stream that has output.
    fn flush(&mut self) -> Result<(), RunError> {
        for s in self.streams.iter_mut().filter(|s| s.len > 0) {
            let frame = s
                .frame()
                .map_err(|e| RunError::Local(io::Error::other(e)))?;
            self.chan.send_raw(frame).map_err(RunError::Channel)?;
            s.len = 0;
        }
        self.oldest = None;
        Ok(())
    }

    fn kill(&self) {
        // ESRCH (everyone already gone) is the expected outcome, not an error.
        let _ = sys::kill_group(self.child.pid, libc::SIGKILL);
    }

    /// Handles what the host sent while the command runs: pings are answered
    /// at once, shutdown kills the command, the rest waits.
    fn host_input(&mut self, shutdown: &mut bool) -> Result<bool, RunError> {
        if self.chan.fill().map_err(RunError::Channel)? == 0 {
            return Ok(false);
        }
        while let Some(msg) = self.chan.next_message() {
            match msg {
                Ok(HostMsg::Ping(p)) => self
                    .chan
                    .send(&GuestMsg::Pong(Pong { nonce: p.nonce }))
                    .map_err(RunError::Channel)?,
                Ok(HostMsg::Shutdown) => {
                    self.kill();
                    *shutdown = true;
                }
                Err(e @ ProtoError::FrameTooLarge { .. }) => {
                    self.chan.defer(Err(e));
                    return Ok(false);
                }
                other => self.chan.defer(other),
            }
        }
        Ok(true)
    }

    fn run(&mut self, deadline: Option<Instant>) -> Result<Ended, RunError> {
        let mut reaped: Option<(sys::Reaped, Instant)> = None;
        let mut timed_out = false;
        let mut shutdown = false;
        let mut chan_open = true;
        loop {
            let now = Instant::now();
            if let Some((_, at)) = &reaped {
                let open = self.streams.iter().any(|s| s.file.is_some());
                if !open || now >= *at + DRAIN {
                    break;
                }
            }
            let mut wait: Option<Duration> = None;
            if reaped.is_none() && !timed_out {
                if let Some(d) = deadline {
                    if now >= d {
                        self.kill();
                        timed_out = true;
                    } else {
                        wait = earliest(wait, d - now);
                    }
                }
            }
            if let Some((_, at)) = &reaped {
                wait = earliest(wait, (*at + DRAIN).saturating_duration_since(now));
            }
            if let Some(t) = self.oldest {
                let age = now - t;
                if age >= FLUSH_MAX_DELAY {
                    self.flush()?;
                } else {
                    wait = earliest(wait, FLUSH_QUIET.min(FLUSH_MAX_DELAY - age));
                }
            }
            let mut fds = [
                pollfd(self.streams[0].poll_fd()),
                pollfd(self.streams[1].poll_fd()),
                pollfd(if reaped.is_none() {
                    self.child.pidfd.as_raw_fd()
                } else {
                    -1
                }),
                pollfd(if chan_open { self.chan.fd() } else { -1 }),
            ];
            let n = sys::poll(&mut fds, wait).map_err(RunError::Local)?;
            if n == 0 {
                if self.oldest.is_some() {
                    self.flush()?;
                }
                continue;
            }
            let ready = |i: usize| fds[i].revents != 0;
            for i in 0..2 {
                if ready(i) {
                    let had = self.streams[i].len;
                    let full = self.streams[i].read().map_err(RunError::Local)?;
                    if self.streams[i].len > had && self.oldest.is_none() {
                        self.oldest = Some(Instant::now());
                    }
                    if full {
                        self.flush()?;
                    }
                }
            }
            if ready(2) {
                if let Some(r) = sys::wait4(self.child.pid, true).map_err(RunError::Local)? {
                    // Background processes of the step must not keep the
                    // pipes (and this loop) alive.
                    self.kill();
                    reaped = Some((r, Instant::now()));
                }
            }
            if ready(3) {
                chan_open = self.host_input(&mut shutdown)?;
            }
        }
        self.flush()?;
        match reaped {
            Some((reaped, at)) => Ok(Ended {
                reaped,
                at,
                timed_out,
                shutdown,
            }),
            None => Err(RunError::Local(io::Error::other("child vanished"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_env_has_defaults_per_user_and_request_overrides_in_place() {
        let env = step_env(User::Unprivileged, &[]);
        assert!(env.contains(&("HOME".into(), "/work".into())));
        assert!(env.contains(&("USER".into(), "sbx".into())));
        let env = step_env(
            User::Root,
            &[("PATH".into(), "/x".into()), ("FOO".into(), "1".into())],
        );
        assert_eq!(env[0], ("PATH".into(), "/x".into()));
        assert!(env.contains(&("HOME".into(), "/root".into())));
        assert_eq!(env.last(), Some(&("FOO".into(), "1".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn shell_commands_run_under_sh_with_errexit_and_nounset() {
        let argv = command_argv(&Command::Shell("echo hi".into()));
        assert_eq!(argv, ["/bin/sh", "-eu", "-c", "echo hi"]);
    }

    #[test]
    fn exec_candidates_search_path_unless_name_has_a_slash() {
        assert_eq!(exec_candidates("./x", "/bin"), ["./x"]);
        assert_eq!(
            exec_candidates("ls", "/usr/bin/::/bin"),
            ["/usr/bin/ls", "./ls", "/bin/ls"]
        );
    }

    #[test]
    fn only_requested_rlimits_are_set() {
        let r = Rlimits {
            nofile: Some(10),
            fsize: Some(20),
            ..Rlimits::default()
        };
        assert_eq!(
            rlimit_triples(&r, None),
            [
                (libc::RLIMIT_NOFILE as libc::c_int, 10, 10),
                (libc::RLIMIT_FSIZE as libc::c_int, 20, 20)
            ]
        );
    }

    #[test]
    fn cpu_time_becomes_whole_seconds_with_a_hard_limit_a_second_above() {
        let cpu = |ms| rlimit_triples(&Rlimits::default(), Some(ms));
        let res = libc::RLIMIT_CPU as libc::c_int;
        assert_eq!(cpu(500), [(res, 1, 2)]);
        assert_eq!(cpu(2000), [(res, 2, 3)]);
        assert_eq!(cpu(2001), [(res, 3, 4)]);
        assert_eq!(cpu(0), [(res, 1, 2)]);
    }

    #[test]
    fn wait_status_maps_to_code_or_signal() {
        assert_eq!(exit_status(42 << 8), ExitStatus::Code(42));
        assert_eq!(exit_status(9), ExitStatus::Signal(9));
    }
}
