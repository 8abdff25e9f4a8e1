//! Command-line interface: clap types and dispatch. Each subcommand's work
//! lives in its own file.

pub mod cache;
mod cache_images;
mod doctor;
mod exec;
pub mod graph;
mod image;
mod prep;
pub mod run;
pub mod schema;
mod slurm;
mod stdout;
pub mod units;
pub mod validate;

use clap::{Parser, Subcommand};

use crate::errors::{CliError, CliResult, EXIT_OK, EXIT_USAGE};

/// Declarative batch jobs where every step runs in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "sbxrun", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: every step in its own microVM, then JUnit and JSON
    /// reports (`sbxrun JOB` is short for `sbxrun run JOB`).
    Run(run::Args),
    /// Run one command in a fresh microVM and exit with its exit code.
    Exec(exec::ExecArgs),
    /// Check a job manifest; exit 0 if valid, 2 if not.
    Validate(validate::Args),
    /// Print a job's step graph.
    Graph(graph::Args),
    /// Print the JSON Schema of job manifests, `report.json` or the
    /// `--log-format json` events.
    Schema(schema::Args),
    /// Check that this host can run microVMs and say how to fix what is missing.
    Doctor(doctor::DoctorArgs),
    /// List or remove cached VM snapshots and built guest assets.
    Cache(cache::CacheArgs),
    /// Pull, list, inspect or remove container images.
    Image(image::ImageArgs),
    /// Rebuild the reports of a run made with `--executor slurm` from what
    /// its steps recorded; with --wait, follow its jobs to the end.
    Report(slurm::ReportArgs),
    /// Internal: one step instance of a Slurm run, on a compute node
    /// (started by the batch script sbxrun submitted).
    #[command(name = "__slurm-step", hide = true)]
    SlurmStep(slurm::StepArgs),
    /// Internal: the VMM process of one microVM (started by sbxrun itself).
    #[command(name = "__vmm", hide = true)]
    Vmm,
    /// Internal, for tests: jail this process exactly like a VMM, then try
    /// one escape (PROBE) and report whether it got through.
    #[command(name = "__jail-selftest", hide = true)]
    JailSelftest(JailSelftestArgs),
}

/// Arguments of `__jail-selftest`.
#[derive(Debug, clap::Args)]
pub struct JailSelftestArgs {
    /// open-host-file, inet-socket, ptrace, execve, mount, setuid, unlisted-syscall
    pub probe: sbxrun_jail::selftest::Probe,
    /// Run the probe on a vCPU-kind thread (its filter) instead of the main one.
    #[arg(long, conflicts_with = "net")]
    pub vcpu: bool,
    /// Run the probe on a network-kind thread (its filter).
    #[arg(long)]
    pub net: bool,
    /// Leave the seccomp filter off, to test the layers underneath it.
    #[arg(long)]
    pub layers: bool,
}

/// Entry point used by `main`: the exit code of a command that ran, or
/// the error that stopped it (which `main` prints).
pub fn main() -> CliResult {
    init_tracing();
    let cli = match Cli::try_parse_from(with_run_shorthand(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            // clap renders its own usage errors (with colour and hints) and
            // `--help`/`--version`, which are not errors.
            let _ = e.print();
            return Ok(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Image(args) => image::run(args),
        Command::Report(args) => slurm::report(args),
        Command::SlurmStep(args) => slurm::step(args),
        Command::Vmm => run_vmm(None),
        Command::JailSelftest(args) => run_vmm(Some(args)),
    }
}

/// `sbxrun JOB [FLAGS]` means `sbxrun run JOB [FLAGS]`: a first argument
/// that is no subcommand or flag but names a manifest gets `run` put before it.
pub(crate) fn with_run_shorthand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let is_subcommand = Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first))
        || first == "help";
    let manifest_like = [".yaml", ".yml", ".kdl"].iter().any(|e| first.ends_with(e))
        || std::path::Path::new(first).is_file();
    if !first.starts_with('-') && !is_subcommand && manifest_like {
        args.insert(1, "run".into());
    }
    args
}

/// The host's KVM, or why sbxrun cannot use it.
fn require_kvm() -> Result<sbxrun_runner::host::KvmInfo, CliError> {
    let kvm = sbxrun_runner::host::probe_kvm();
    if !kvm.accessible {
        return Err(CliError::Infra(format!(
            "cannot use /dev/kvm: {}; run `sbxrun doctor`",
            kvm.error.as_deref().unwrap_or("unknown error")
        )));
    }
    Ok(kvm)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SBXRUN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_vmm(selftest: Option<JailSelftestArgs>) -> CliResult {
    use sbxrun_jail::ThreadKind;
    use sbxrun_proto::control::{CHILD_CONTROL_FD, CHILD_GUEST_FD, CHILD_NET_FD};
    let adopt = |fd| sbxrun_jail::adopt_inherited_fd(fd).map(std::os::unix::net::UnixStream::from);
    let net =
        sbxrun_jail::adopt_inherited_fd(CHILD_NET_FD).map(std::os::unix::net::UnixDatagram::from);
    match (adopt(CHILD_CONTROL_FD), adopt(CHILD_GUEST_FD), net) {
        (Ok(control), Ok(guest), Ok(net)) => Ok(match selftest {
            None => sbxrun_vmm::runtime::run(sbxrun_vmm::runtime::Channels {
                control,
                guest,
                net,
            }),
            Some(args) => {
                drop(guest);
                drop(net);
                let kind = if args.vcpu {
                    ThreadKind::Vcpu
                } else if args.net {
                    ThreadKind::Net
                } else {
                    ThreadKind::Vmm
                };
                sbxrun_vmm::runtime::run_jail_selftest(control, args.probe, kind, !args.layers)
            }
        }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(CliError::Infra(format!(
            "__vmm is started by sbxrun itself: {e}"
        ))),
    }
}
