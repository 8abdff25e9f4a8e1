//! What an attempt asks of the guest: the inputs to pack onto its input
//! disk, their owner, and the run request guest-init receives. Pure apart
//! from reading the secrets' values and the host clock, so the attempt's
//! phases stay about the VM.

use std::path::Path;

use guest_init::proto::{ArtifactsRequest, Command as GuestCommand, RunRequest, User as GuestUser};

use super::attempt::artifact_dir;
use crate::artifacts::InputItem;
use crate::manifest::{output_covers, User};
use crate::plan::{Command, Instance, Plan, PlannedInput};
use crate::pool::{container, session};
use crate::runner::StepImage;

/// uid/gid of the guest's unprivileged step user.
const STEP_UID: u64 = 1000;

/// The trees to pack onto the input disk, in the manifest's order.
pub fn input_items(plan: &Plan, run_dir: &Path, inst: &Instance) -> Vec<InputItem> {
    let mut items = Vec::new();
    for input in &inst.inputs {
        match input {
            PlannedInput::Host { path, to } => items.push(InputItem {
                root: path.clone(),
                filter: None,
                to: to.clone(),
            }),
            PlannedInput::Step { from, path, to, .. } => {
                for id in from {
                    let dir = artifact_dir(run_dir, &plan.instance(*id).name);
                    // A producer that failed (allowed) or was skipped has none.
                    if dir.is_dir() {
                        items.push(InputItem {
                            root: dir,
                            filter: path.clone(),
                            to: to.clone(),
                        });
                    }
                }
            }
        }
    }
    items
}

/// Who owns the unpacked inputs in the guest: the user the step runs as,
/// so it can modify them.
pub fn input_owner(user: GuestUser) -> (u64, u64) {
    match user {
        GuestUser::Root => (0, 0),
        GuestUser::Unprivileged => (STEP_UID, STEP_UID),
        GuestUser::Ids { uid, gid } => (u64::from(uid), u64::from(gid)),
    }
}

/// How a step starts in the guest: its command, user, work directory and
/// environment, with a container image's config filling in what the step
/// leaves open (`pool::container` has the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub command: GuestCommand,
    pub user: GuestUser,
    pub cwd: String,
    pub env: Vec<(String, String)>,
}

/// The start of `inst` on `image`; an error names the image and what the
/// step must say instead (no command, no shell, an undefined user).
pub fn start(inst: &Instance, image: &StepImage) -> Result<Start, String> {
    let s = &inst.settings;
    let mut env: Vec<(String, String)> = inst
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for name in &inst.secrets {
        if let Ok(v) = std::env::var(name) {
            env.push((name.clone(), v));
        }
    }
    let manifest_user = match s.user {
        User::Root => GuestUser::Root,
        User::Unprivileged => GuestUser::Unprivileged,
    };
    let Some(config) = &image.config else {
        let command = match &inst.command {
            Command::Shell(script) => GuestCommand::Shell(script.clone()),
            Command::Exec(argv) => GuestCommand::Argv(argv.clone()),
            Command::ImageDefault => {
                return Err(format!(
                    "image {} is not a container image, so it has no default command; \
                     give the step `run` or `command`",
                    image.reference
                ))
            }
        };
        return Ok(Start {
            command,
            user: manifest_user,
            cwd: guest_init::proto::DEFAULT_CWD.into(),
            env,
        });
    };
    let name = &image.reference;
    let command = match &inst.command {
        Command::Shell(script) => {
            container::check_shell(config, name)?;
            GuestCommand::Shell(script.clone())
        }
        Command::Exec(argv) => GuestCommand::Argv(argv.clone()),
        Command::ImageDefault => container::default_command(config, name)?,
    };
    let user = if s.user_given {
        manifest_user
    } else {
        container::user(config, name)?
    };
    Ok(Start {
        command,
        user,
        cwd: container::work_dir(config),
        env: container::layered_env(config, env),
    })
}

/// The guest's request; `input_bytes` is the length of the packed inputs'
/// archive, when there are inputs.
pub fn request(inst: &Instance, start: Start, input_bytes: Option<u64>) -> RunRequest {
    let s = &inst.settings;
    let mut outputs = inst.outputs.clone();
    if let Some(j) = &inst.junit {
        if !outputs.iter().any(|o| output_covers(o, j)) {
            outputs.push(j.clone());
        }
    }
    RunRequest {
        command: start.command,
        env: start.env,
        cwd: start.cwd,
        user: start.user,
        rlimits: guest_init::proto::Rlimits {
            nofile: Some(u64::from(s.open_files)),
            nproc: Some(u64::from(s.pids)),
            fsize: Some(s.file_size.0),
            address_space: None,
        },
        unix_time_ns: session::host_clock_ns(),
        rng_seed: session::fresh_seed(),
        timeout_ms: Some(s.timeout.0.as_millis() as u64),
        stdin: None,
        artifacts: ArtifactsRequest {
            unpack_inputs: input_bytes.is_some(),
            input_bytes,
            outputs,
        },
        network: None,
        stdin_file: inst.stdin.clone(),
        cpu_time_ms: s.cpu_time.map(|t| t.0.as_millis() as u64),
        memory_max: s.memory_limit.map(|m| m.0),
    }
}

/// The guest side of the VMM's network, as guest-init configures it.
pub fn network_setup() -> guest_init::proto::NetworkSetup {
    use sbxrun_proto::guest_net::{GATEWAY_IP, GUEST_IP, PREFIX_LEN};
    guest_init::proto::NetworkSetup {
        address: GUEST_IP,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY_IP,
        dns: GATEWAY_IP,
    }
}
