//! Development tool: boots guest-init in a QEMU microvm and drives it over
//! the control channel with `guest_init::proto`, checking behaviour and
//! printing timings. QEMU is a development aid here, not a dependency of
//! sbxrun.
//!
//! ```text
//! cargo run -p guest-init --example qemu_client -- VMLINUX INITRAMFS ROOTFS
//! ```
//!
//! Exits non-zero when a check fails.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_init::proto::{
    self, Command, ErrorCode, ErrorReport, ExitStatus, Exited, FrameDecoder, GuestMsg, HostMsg,
    Ping, Ready, RunRequest, User,
};

type Res<T> = Result<T, String>;

/// kvm-pvm refuses QEMU's IA32_ARCH_CAPABILITIES write, and with kvmclock
/// visible the guest's PTP-KVM init spins on its hypercall under QEMU.
const QEMU_CPU: &str = "host,-arch-capabilities,-kvmclock";

const CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k pvmcompat noxsave \
                       clearcpuid=smap,popcnt,erms,fsrm rodata=off quiet";

struct Vm {
    qemu: Child,
    sock: UnixStream,
    decoder: FrameDecoder<GuestMsg>,
    console: PathBuf,
    spawned: Instant,
}

/// What one `Run` produced.
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Result<Exited, ErrorReport>,
    elapsed: Duration,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn seed(tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..8].copy_from_slice(&now_ns().to_le_bytes());
    s
}

fn request(command: Command) -> RunRequest {
    RunRequest {
        command,
        env: Vec::new(),
        cwd: proto::DEFAULT_CWD.to_owned(),
        user: User::Unprivileged,
        rlimits: Default::default(),
        unix_time_ns: now_ns(),
        rng_seed: seed(1),
        timeout_ms: None,
        stdin: None,
        artifacts: Default::default(),
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    }
}

fn sh(script: &str) -> RunRequest {
    request(Command::Shell(script.to_owned()))
}

impl Vm {
    fn boot(dir: &Path, kernel: &str, initrd: &str, rootfs: &str) -> Res<(Self, Ready)> {
        let sock_path = dir.join("ctl.sock");
        let console = dir.join("console.log");
        let spawned = Instant::now();
        let qemu = Proc::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
                "-enable-kvm",
                "-cpu",
                QEMU_CPU,
                "-m",
                "256",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
            ])
            .arg(format!("file:{}", console.display()))
            .args(["-kernel", kernel, "-initrd", initrd, "-append", CMDLINE])
            .arg("-drive")
            .arg(format!(
                "id=root,file={rootfs},format=raw,if=none,readonly=on"
            ))
            .args([
                "-device",
                "virtio-blk-device,drive=root",
                "-device",
                "virtio-serial-device",
                "-chardev",
            ])
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                sock_path.display()
            ))
            .args(["-device", "virtconsole,chardev=ctl"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("start qemu: {e}"))?;
        let sock = loop {
            match UnixStream::connect(&sock_path) {
                Ok(s) => break s,
                Err(_) if spawned.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("connect {}: {e}", sock_path.display())),
            }
        };
        let mut vm = Vm {
            qemu,
            sock,
            decoder: FrameDecoder::new(),
            console,
            spawned,
        };
        match vm.recv(Duration::from_secs(180))? {
            GuestMsg::Ready(r) => Ok((vm, r)),
            other => Err(format!("expected Ready, got {other:?}")),
        }
    }

    fn send(&mut self, msg: &HostMsg) -> Res<()> {
        let frame = proto::encode(msg).map_err(|e| e.to_string())?;
        self.sock.write_all(&frame).map_err(|e| e.to_string())
    }

    fn recv(&mut self, timeout: Duration) -> Res<GuestMsg> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0; 256 * 1024];
        loop {
            if let Some(m) = self.decoder.next_message().map_err(|e| e.to_string())? {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for the guest".into());
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.sock.read(&mut buf) {
                Ok(0) => return Err("control channel closed".into()),
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn run(&mut self, req: RunRequest) -> Res<Outcome> {
        let start = Instant::now();
        self.send(&HostMsg::Run(req))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let end = loop {
            match self.recv(Duration::from_secs(120))? {
                GuestMsg::Stdout(b) => stdout.extend(b),
                GuestMsg::Stderr(b) => stderr.extend(b),
                GuestMsg::Exited(e) => break Ok(e),
                GuestMsg::Error(e) => break Err(e),
                other => return Err(format!("unexpected {other:?} during run")),
            }
        };
        Ok(Outcome {
            stdout,
            stderr,
            end,
            elapsed: start.elapsed(),
        })
    }

    /// Waits for QEMU to exit (the guest reset with `-no-reboot`).
    fn wait_exit(&mut self, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("qemu did not exit (guest did not reset)".into())
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

struct Checker {
    failures: usize,
}

impl Checker {
    fn check(&mut self, name: &str, result: Res<String>) {
        match result {
            Ok(detail) => println!("ok   {name} {detail}"),
            Err(e) => {
                self.failures += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

fn exited(o: &Outcome) -> Res<Exited> {
    o.end
        .clone()
        .map_err(|e| format!("guest error {:?}: {}", e.code, e.message))
}

fn expect_code(o: &Outcome, code: i32) -> Res<String> {
    let e = exited(o)?;
    if e.status != ExitStatus::Code(code) {
        return Err(format!(
            "status {:?}, stderr {:?}",
            e.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(format!("({} ms)", o.elapsed.as_millis()))
}

fn stdout_is(o: &Outcome, want: &str) -> Res<String> {
    expect_code(o, 0)?;
    let got = String::from_utf8_lossy(&o.stdout);
    if got.trim_end() != want {
        return Err(format!("stdout {got:?}, want {want:?}"));
    }
    Ok(format!("({} ms)", o.elapsed.as_millis()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn session_checks(vm: &mut Vm, c: &mut Checker) -> Res<()> {
    let t = Instant::now();
    vm.send(&HostMsg::Ping(Ping { nonce: 77 }))?;
    let pong = vm.recv(Duration::from_secs(10))?;
    c.check(
        "ping",
        match pong {
            GuestMsg::Pong(p) if p.nonce == 77 => Ok(format!("({} us)", t.elapsed().as_micros())),
            other => Err(format!("{other:?}")),
        },
    );

    let o = vm.run(request(Command::Argv(vec!["uname".into(), "-a".into()])))?;
    c.check(
        "uname -a",
        expect_code(&o, 0).map(|_| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
    );

    for code in [0, 1, 42] {
        let o = vm.run(sh(&format!("exit {code}")))?;
        c.check(&format!("exit {code}"), expect_code(&o, code));
    }

    // Every byte value on stdout (one printf, no forks), another pattern on
    // stderr.
    let fmt: String = (0..=255u32).map(|b| format!("\\{b:03o}")).collect();
    let o = vm.run(request(Command::Argv(vec![
        "sh".into(),
        "-c".into(),
        "printf \"$1\"; printf 'E\\0\\377' >&2".into(),
        "sh".into(),
        fmt,
    ])))?;
    let all: Vec<u8> = (0..=255).collect();
    c.check(
        "binary stdout/stderr separation",
        expect_code(&o, 0).and_then(|d| {
            if o.stdout == all && o.stderr == b"E\0\xff" {
                Ok(d)
            } else {
                Err(format!("stdout {:?} stderr {:?}", o.stdout, o.stderr))
            }
        }),
    );

    let mut req = sh("echo \"$FOO|$(pwd)|$HOME\"");
    req.env = vec![("FOO".into(), "bar baz".into())];
    req.cwd = "/tmp".into();
    let o = vm.run(req)?;
    c.check("env and cwd", stdout_is(&o, "bar baz|/tmp|/work"));

    let o = vm.run(sh("id -u; id -g"))?;
    c.check("default user is 1000", stdout_is(&o, "1000\n1000"));
    let mut req = sh("id -u");
    req.user = User::Root;
    let o = vm.run(req)?;
    c.check("root user", stdout_is(&o, "0"));

    let mut req = sh("cat; printf x");
    req.stdin = Some(b"in\0put".to_vec());
    let o = vm.run(req)?;
    c.check(
        "stdin bytes",
        expect_code(&o, 0).and_then(|d| {
            if o.stdout == b"in\0putx" {
                Ok(d)
            } else {
                Err(format!("{:?}", o.stdout))
            }
        }),
    );

    let o = vm.run(sh("kill -9 $$"))?;
    c.check(
        "signal death",
        match exited(&o) {
            Ok(e) if e.status == ExitStatus::Signal(9) && !e.timed_out => Ok(String::new()),
            other => Err(format!("{other:?}")),
        },
    );

    let mut req = sh("sleep 30");
    req.timeout_ms = Some(1000);
    let o = vm.run(req)?;
    c.check(
        "guest-side timeout",
        match exited(&o) {
            Ok(e) if e.timed_out && e.status == ExitStatus::Signal(9) => {
                Ok(format!("({} ms)", o.elapsed.as_millis()))
            }
            other => Err(format!("{other:?}")),
        },
    );

    let o = vm.run(sh("sleep 1000 & echo started"))?;
    c.check(
        "background daemon does not hang the step",
        stdout_is(&o, "started"),
    );

    let o = vm.run(request(Command::Argv(vec!["no-such-cmd".into()])))?;
    c.check(
        "command not found is an error, not an exit code",
        match &o.end {
            Err(e) if e.code == ErrorCode::CommandNotFound => Ok(e.message.clone()),
            other => Err(format!("{other:?}")),
        },
    );
    let mut req = sh("true");
    req.cwd = "/nonexistent".into();
    let o = vm.run(req)?;
    c.check(
        "missing cwd is a spawn error",
        match &o.end {
            Err(e) if e.code == ErrorCode::SpawnFailed => Ok(e.message.clone()),
            other => Err(format!("{other:?}")),
        },
    );

    vm.sock
        .write_all(&[1, 0, 0, 0, 0x7e])
        .map_err(|e| e.to_string())?;
    let m = vm.recv(Duration::from_secs(10))?;
    c.check(
        "unknown kind answered with an error",
        match m {
            GuestMsg::Error(e) if e.code == ErrorCode::UnknownKind => Ok(e.message),
            other => Err(format!("{other:?}")),
        },
    );

    let mut rand = Vec::new();
    for tag in [1u8, 2] {
        let mut req = sh("head -c16 /dev/urandom | od -x");
        req.rng_seed = seed(tag);
        rand.push(vm.run(req)?.stdout);
    }
    c.check(
        "different seeds give different random bytes",
        if rand[0] != rand[1] && !rand[0].is_empty() {
            Ok(String::new())
        } else {
            Err(format!("{rand:?}"))
        },
    );

    let o = vm.run(sh("date +%s"))?;
    let host = now_ns() / 1_000_000_000;
    c.check(
        "guest clock follows the host",
        expect_code(&o, 0).and_then(|_| {
            let guest: u64 = String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .map_err(|e| format!("{e}"))?;
            if guest.abs_diff(host) <= 2 {
                Ok(format!("guest {guest} host {host}"))
            } else {
                Err(format!("guest {guest} host {host}"))
            }
        }),
    );

    let mut rtts = Vec::new();
    let mut guest = Vec::new();
    for _ in 0..5 {
        let o = vm.run(request(Command::Argv(vec!["true".into()])))?;
        expect_code(&o, 0)?;
        rtts.push(o.elapsed);
        guest.push(Duration::from_micros(exited(&o)?.wall_us));
    }
    println!(
        "measure `true` round trip: median {} ms (min {} ms, max {} ms)",
        median(rtts.clone()).as_millis(),
        rtts.iter().min().map_or(0, |d| d.as_millis()),
        rtts.iter().max().map_or(0, |d| d.as_millis())
    );
    println!(
        "measure `true` inside the guest (spawn to exit): median {} ms",
        median(guest).as_millis()
    );

    // What a fresh mount + PID namespace would add per step: the same
    // fork+exec with and without them.
    for (label, argv) in [
        ("fork+exec", vec!["unshare", "-f", "true"]),
        (
            "fork+exec in new mount+pid ns",
            vec!["unshare", "-m", "-p", "-f", "true"],
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut req = request(Command::Argv(
                argv.iter().map(|s| (*s).to_owned()).collect(),
            ));
            req.user = User::Root;
            let o = vm.run(req)?;
            expect_code(&o, 0)?;
            times.push(o.elapsed);
        }
        println!("measure {label}: median {} ms", median(times).as_millis());
    }

    let bytes = 1_000_000;
    let o = vm.run(sh(&format!("head -c {bytes} /dev/zero")))?;
    c.check(
        "stdout throughput",
        expect_code(&o, 0).and_then(|_| {
            if o.stdout.len() == bytes && o.stdout.iter().all(|b| *b == 0) {
                Ok(format!(
                    "{:.2} MB/s ({} bytes in {} ms)",
                    bytes as f64 / o.elapsed.as_secs_f64() / 1e6,
                    bytes,
                    o.elapsed.as_millis()
                ))
            } else {
                Err(format!("got {} bytes", o.stdout.len()))
            }
        }),
    );

    let t = Instant::now();
    vm.send(&HostMsg::Shutdown)?;
    c.check(
        "shutdown resets the VM",
        vm.wait_exit(Duration::from_secs(180))
            .map(|_| format!("({} ms)", t.elapsed().as_millis())),
    );
    Ok(())
}

/// The tail of the serial console, to explain a failure.
fn print_console(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    eprintln!(
        "--- console (last {} lines) ---\n{}",
        tail.len(),
        tail.join("\n")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initrd, rootfs] = args.as_slice() else {
        eprintln!("usage: qemu_client VMLINUX INITRAMFS ROOTFS");
        std::process::exit(2);
    };
    let dir = std::env::temp_dir().join(format!("sbxrun-qemu-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("create {}: {e}", dir.display());
        std::process::exit(2);
    }
    let mut c = Checker { failures: 0 };
    match Vm::boot(&dir, kernel, initrd, rootfs) {
        Ok((mut vm, ready)) => {
            println!(
                "measure boot: Ready after {} ms on the host clock (guest: boot_ms {}, guest-init setup {} ms), kernel {}",
                vm.spawned.elapsed().as_millis(),
                ready.boot_ms,
                ready.init_ms,
                ready.kernel_release
            );
            if let Err(e) = session_checks(&mut vm, &mut c) {
                c.check("session", Err(e));
                print_console(&dir);
            }
        }
        Err(e) => {
            c.check("boot", Err(e));
            print_console(&dir);
        }
    }
    // A second VM: a kernel crash must end the VM.
    match Vm::boot(&dir, kernel, initrd, rootfs) {
        Ok((mut vm, _)) => {
            let mut req = sh("echo c > /proc/sysrq-trigger");
            req.user = User::Root;
            let _ = vm.run(req);
            let r = vm.wait_exit(Duration::from_secs(60)).and_then(|_| {
                if vm.console().contains("Kernel panic") {
                    Ok(String::new())
                } else {
                    Err("no panic message on the console".into())
                }
            });
            c.check("sysrq crash resets the VM", r);
        }
        Err(e) => {
            c.check("second boot", Err(e));
            print_console(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if c.failures > 0 {
        println!("{} check(s) failed", c.failures);
        std::process::exit(1);
    }
    println!("all checks passed");
}
