//! `sbxrun exec`: one command, one fresh microVM, its exit code.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use guest_init::proto::{Command as GuestCommand, ExitStatus, RunRequest, User, DEFAULT_CWD};

use super::units::{parse_duration, parse_size};
use crate::errors::{CliError, CliResult, EXIT_NOT_FOUND, EXIT_SIGNAL_BASE, EXIT_TIMEOUT};
use sbxrun_runner::assets::{self, Asset};
use sbxrun_runner::manifest::ImageRef;
use sbxrun_runner::pool::container;
use sbxrun_runner::pool::launch::{
    boot_cold, BootedVm, StepDisks, VmShape, DEFAULT_ARTIFACT_DISK_BYTES,
};
use sbxrun_runner::pool::warm::{clean_scratch, LeasedVm, PoolConfig};
use sbxrun_runner::pool::VmHandle;
use sbxrun_runner::pool::{resolve_image, session, OutputStream, RunError};
use sbxrun_runner::report::GuestTimings;
use sbxrun_runner::runner::{PrepProgress, StepImage};

/// Arguments of `sbxrun exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Root image: a container image (`python:3.12`, `oci:DIR[:tag]`,
    /// ...), an ext4 file or a directory (built into a cached ext4 image);
    /// default: the image `make assets` builds. Read as `image:` in a
    /// manifest is, relative to the current directory.
    #[arg(long)]
    pub image: Option<String>,
    /// Guest kernel (an ELF vmlinux with a PVH entry).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs holding guest-init.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Guest memory.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub vcpus: u8,
    /// Kill the command after this long (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Environment for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default: a container image's
    /// WorkingDir, else /work).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Run as root instead of the unprivileged user (or a container
    /// image's own user, root when it names none).
    #[arg(long)]
    pub root: bool,
    /// Write the guest's serial console here.
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// Print boot and run timings to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Extra guest kernel parameters (implies --no-snapshot: a snapshot
    /// already booted with its own).
    #[arg(long, value_name = "PARAMS")]
    pub kernel_args: Option<String>,
    /// Boot the kernel instead of restoring the shape's snapshot.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Debugging only: run the VMM without its jail (namespaces, empty
    /// root, seccomp, dropped privileges). Warns on stderr.
    #[arg(long)]
    pub no_jail: bool,
    #[command(flatten)]
    pub pull: super::image::PullArgs,
    /// The command and its arguments (default: a container image's
    /// Entrypoint and Cmd).
    #[arg(last = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Runs `sbxrun exec`: the guest command's exit code, or the codes
/// `errors` documents for a timeout, a missing command or a signal.
pub fn run(args: ExecArgs) -> CliResult {
    let kvm = super::require_kvm()?;
    let resolve = |asset, explicit: &Option<PathBuf>| {
        assets::require(asset, explicit.as_deref()).map_err(|e| CliError::Infra(e.to_string()))
    };
    let kernel = resolve(Asset::Kernel, &args.kernel)?;
    let initramfs = resolve(Asset::Initramfs, &args.initramfs)?;
    let prep = prep_progress();
    let image = root_image(&args, &prep)?;
    if args.command.is_empty() && image.config.is_none() {
        return Err(CliError::usage(
            "give the command after `--` (only a container image has a default command)",
        ));
    }
    let memory_mib =
        u32::try_from(args.memory >> 20).map_err(|_| CliError::usage("--memory is too large"))?;
    let shape = VmShape {
        kernel,
        initramfs,
        image: image.ext4.clone(),
        memory_mib,
        vcpus: args.vcpus,
        flavour: kvm.flavour,
        artifact_disk_bytes: DEFAULT_ARTIFACT_DISK_BYTES,
        jail: !args.no_jail,
    };
    let started = Instant::now();
    let name = image.reference.clone();
    let mut vm = start_vm(&args, shape, &prep, &name)
        .map_err(|e| CliError::Infra(format!("cannot start the VM: {e}")))?;
    let vm_ready = started.elapsed();
    let (command, env, cwd, user) = match &image.config {
        None => (
            GuestCommand::Argv(args.command.clone()),
            args.env.clone(),
            args.cwd.clone().unwrap_or_else(|| DEFAULT_CWD.to_owned()),
            if args.root {
                User::Root
            } else {
                User::Unprivileged
            },
        ),
        Some(config) => {
            let name = &image.reference;
            let command = if args.command.is_empty() {
                container::default_command(config, name).map_err(CliError::Infra)?
            } else {
                GuestCommand::Argv(args.command.clone())
            };
            let user = if args.root {
                User::Root
            } else {
                container::user(config, name).map_err(CliError::Infra)?
            };
            (
                command,
                container::layered_env(config, args.env.clone()),
                args.cwd
                    .clone()
                    .unwrap_or_else(|| container::work_dir(config)),
                user,
            )
        }
    };
    let request = RunRequest {
        command,
        env,
        cwd,
        user,
        rlimits: Default::default(),
        unix_time_ns: session::host_clock_ns(),
        rng_seed: session::fresh_seed(),
        timeout_ms: Some(args.timeout.as_millis() as u64),
        stdin: None,
        artifacts: Default::default(),
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut forward = |stream: OutputStream, bytes: &[u8]| {
        // Our own stdout closing (e.g. `| head`) must not kill the VM mid-run.
        let _ = match stream {
            OutputStream::Stdout => stdout
                .lock()
                .write_all(bytes)
                .and_then(|_| stdout.lock().flush()),
            OutputStream::Stderr => stderr.lock().write_all(bytes),
        };
    };
    let host_timeout = session::host_timeout(args.timeout);
    let result = session::run(vm.handle(), &request, host_timeout, &mut forward);
    if args.timings {
        let jail = if vm.handle().jailed() {
            format!("jailed, jail setup {} µs", vm.handle().jail_us)
        } else {
            "NOT jailed".to_string()
        };
        eprintln!(
            "sbxrun: VM ready after {vm_ready:?} ({}, {jail})",
            vm.describe()
        );
    }
    let code = match result {
        Ok(outcome) => {
            if args.timings {
                eprintln!("sbxrun: run {:?}", outcome.wall);
                if let Some(g) = outcome.exited.phases.map(GuestTimings::from) {
                    eprintln!(
                        "sbxrun: in the guest: prepare {:.1} ms, inputs {:.1} ms, spawn {:.1} ms, \
                         command {:.1} ms, outputs {:.1} ms; channel {:.1} ms",
                        g.prepare_ms,
                        g.inputs_ms,
                        g.spawn_ms,
                        g.command_ms,
                        g.outputs_ms,
                        (outcome.wall.as_secs_f64() * 1000.0 - g.total_ms).max(0.0)
                    );
                }
            }
            match outcome.exited.status {
                _ if outcome.exited.timed_out => {
                    eprintln!("sbxrun: command timed out after {:?}", args.timeout);
                    EXIT_TIMEOUT
                }
                ExitStatus::Code(c) => c,
                ExitStatus::Signal(s) => {
                    eprintln!("sbxrun: command killed by signal {s}");
                    EXIT_SIGNAL_BASE + s
                }
            }
        }
        Err(RunError::Timeout(_)) => {
            eprintln!("sbxrun: command timed out after {:?}", args.timeout);
            EXIT_TIMEOUT
        }
        Err(RunError::Guest(report))
            if report.code == guest_init::proto::ErrorCode::CommandNotFound =>
        {
            eprintln!("sbxrun: {}", report.message);
            EXIT_NOT_FOUND
        }
        Err(e) => return Err(CliError::infra(&e)),
    };
    drop(vm);
    Ok(code)
}

/// The image to boot: `--image` read as a manifest's `image:` is, else
/// `SBXRUN_IMAGE`, else the default image `make assets` builds.
/// What exec shows of a first use (building an image, booting a shape to
/// its snapshot): on a terminal only, since stderr is also the command's.
fn prep_progress() -> PrepProgress {
    if std::io::stderr().is_terminal() {
        super::prep::progress(
            sbxrun_runner::report::console::LogFormat::Text,
            super::prep::JsonTo::Stderr,
        )
    } else {
        PrepProgress::none()
    }
}

fn root_image(args: &ExecArgs, prep: &PrepProgress) -> Result<StepImage, CliError> {
    let plain = |ext4: PathBuf, reference: String| StepImage {
        ext4,
        reference,
        digest: None,
        config: None,
        pulled: false,
    };
    let here = std::env::current_dir().map_err(|e| CliError::Infra(e.to_string()))?;
    match args.image.as_deref().map(|i| ImageRef::classify(i, &here)) {
        None | Some(ImageRef::Name(_)) => {
            let path = Asset::Image.resolve(None);
            // Say which asset is missing and how to build it.
            if !path.exists() {
                let e = assets::require(Asset::Image, None).map_err(|e| e.to_string());
                return Err(CliError::Infra(e.err().unwrap_or_default()));
            }
            let ext4 =
                resolve_image(&path, &assets::cache_dir()).map_err(|e| CliError::infra(&e))?;
            Ok(plain(ext4, "default".into()))
        }
        Some(ImageRef::Path(path)) => {
            let ext4 = prep
                .build_dir_image(&path, &assets::cache_dir())
                .map_err(|e| CliError::infra(&e))?;
            Ok(plain(ext4, path.display().to_string()))
        }
        Some(ImageRef::Container(source)) => {
            let resolved = sbxrun_image::resolve(&source, &args.pull.options(), &prep.of(&source))
                .map_err(|e| CliError::infra(&e))?;
            Ok(StepImage {
                ext4: resolved.ext4,
                reference: resolved.reference,
                digest: resolved.manifest_digest,
                config: resolved.config,
                pulled: resolved.pulled,
            })
        }
    }
}

/// The VM `exec` runs in: restored from the pool, or cold-booted.
enum ExecVm {
    /// `first_use`: how long opening the pool took when it had to boot the
    /// guest to create the shape's snapshot.
    Restored {
        lease: Box<LeasedVm>,
        first_use: Option<Duration>,
    },
    Cold {
        booted: Box<BootedVm>,
        _scratch: ScratchDir,
    },
}

impl ExecVm {
    fn handle(&mut self) -> &mut VmHandle {
        match self {
            ExecVm::Restored { lease, .. } => &mut lease.vm,
            ExecVm::Cold { booted, .. } => &mut booted.vm,
        }
    }

    fn describe(&self) -> String {
        match self {
            ExecVm::Restored {
                lease,
                first_use: None,
            } => format!("restored from snapshot in {:?}", lease.restore_time),
            // Not a restore the user should expect next time: say what the
            // time went to.
            ExecVm::Restored {
                lease,
                first_use: Some(built),
            } => format!(
                "first use of this VM shape: cold boot and snapshot in {built:?}, \
                 then restored in {:?}",
                lease.restore_time
            ),
            ExecVm::Cold { booted, .. } => format!("cold boot {:?}", booted.boot_time),
        }
    }
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_vm(
    args: &ExecArgs,
    shape: VmShape,
    prep: &PrepProgress,
    image: &str,
) -> Result<ExecVm, String> {
    let cache = assets::cache_dir();
    let scratch = cache.join("run");
    if args.no_snapshot || args.kernel_args.is_some() {
        let dir = scratch.join(format!("exec-{}", std::process::id()));
        let disks =
            StepDisks::create_in(&dir, shape.artifact_disk_bytes).map_err(|e| e.to_string())?;
        let guard = ScratchDir(dir);
        let extra = args.kernel_args.clone().unwrap_or_default();
        let booted = boot_cold(&shape, &disks, &extra, args.console_log.clone(), None)
            .map_err(|e| sbxrun_runner::errors::chain(&e))?;
        return Ok(ExecVm::Cold {
            booted: Box::new(booted),
            _scratch: guard,
        });
    }
    clean_scratch(&scratch);
    let opening = Instant::now();
    let config = PoolConfig {
        cache,
        scratch,
        shape,
        warm: 0,
        console_dir: None,
    };
    let pool = prep
        .open_pool(image, config)
        .map_err(|e| sbxrun_runner::errors::chain(&e))?;
    let open_time = opening.elapsed();
    let lease = match &args.console_log {
        Some(path) => pool.acquire_logged(path.clone()),
        None => pool.acquire(),
    }
    .map_err(|e| sbxrun_runner::errors::chain(&e))?;
    Ok(ExecVm::Restored {
        lease: Box::new(lease),
        first_use: pool.stats().snapshot_built.then_some(open_time),
    })
}
