//! `sbxrun doctor`: can this host run microVMs, and if not, what to do.

use super::stdout::outln;
use clap::Args;
use serde::Serialize;

use crate::errors::{CliResult, EXIT_INFRA, EXIT_OK};
use sbxrun_runner::assets::Asset;
use sbxrun_runner::host::{probe_kvm, KvmFlavour};

/// Arguments of `sbxrun doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check this executor: `local` (this host's KVM and assets) or
    /// `slurm` (the Slurm commands, the shared run directory, and one tiny
    /// step run on a node).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: super::run::Executor,
    /// With `--executor slurm`: the directory runs will use as `--out`
    /// (default: the current one); it must be shared by every node.
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// With `--executor slurm`: the partition to check.
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

#[derive(Debug, Serialize)]
struct Findings {
    kvm_flavour: KvmFlavour,
    checks: Vec<Check>,
}

fn collect() -> Findings {
    let kvm = probe_kvm();
    let mut checks = vec![Check {
        name: "/dev/kvm".into(),
        ok: kvm.accessible,
        detail: match &kvm.error {
            None => "readable and writable".into(),
            Some(e) => e.clone(),
        },
        fix: (!kvm.accessible).then(|| {
            "load KVM (modprobe kvm_intel or kvm_amd) and give this user access to /dev/kvm \
             (e.g. add it to the `kvm` group)"
                .to_string()
        }),
    }];
    checks.push(Check {
        name: "KVM flavour".into(),
        ok: true,
        detail: match kvm.flavour {
            KvmFlavour::Hardware => kvm.flavour.label().to_string(),
            KvmFlavour::Pvm => format!(
                "{}: guest kernel code is emulated (slow); compatibility boot parameters are used",
                kvm.flavour.label()
            ),
        },
        fix: None,
    });
    for asset in Asset::ALL {
        let path = asset.resolve(None);
        let ok = path.is_file();
        checks.push(Check {
            name: asset.label().into(),
            ok,
            detail: path.display().to_string(),
            fix: (!ok).then(|| asset.fix().to_string()),
        });
    }
    Findings {
        kvm_flavour: kvm.flavour,
        checks,
    }
}

/// What a Slurm run needs: the commands, a controller that answers, a
/// run directory every node sees, and a node that can run a step.
fn collect_slurm(args: &DoctorArgs) -> Findings {
    let mut checks = Vec::new();
    let mut check = |name: &str, result: Result<String, (String, String)>| {
        let ok = result.is_ok();
        let (detail, fix) = match result {
            Ok(d) => (d, None),
            Err((d, fix)) => (d, Some(fix)),
        };
        checks.push(Check {
            name: name.into(),
            ok,
            detail,
            fix,
        });
        ok
    };
    let version = std::process::Command::new("sbatch")
        .arg("--version")
        .output();
    let found = check(
        "sbatch",
        match version {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            Ok(o) => Err((
                String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                "check SLURM_CONF and the Slurm installation".into(),
            )),
            Err(e) => Err((
                e.to_string(),
                "install Slurm's client commands (Debian: slurm-client) and put them on PATH"
                    .into(),
            )),
        },
    );
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let dir = dir.canonicalize().unwrap_or(dir);
    let shared = found
        && check(
            "shared run directory",
            sbxrun_runner::runner::slurm::check_shared(&dir, args.partition.as_deref())
                .map(|()| format!("{} (every node can see it)", dir.display()))
                .map_err(|e| (e, "pass --out DIR on a filesystem every node mounts".into())),
        );
    if shared {
        check(
            "a step on a node",
            tiny_step(&dir, args.partition.as_deref()),
        );
    }
    Findings {
        kvm_flavour: probe_kvm().flavour,
        checks,
    }
}

/// Runs a one-step job through Slurm in a scratch directory under `dir`.
fn tiny_step(dir: &std::path::Path, partition: Option<&str>) -> Result<String, (String, String)> {
    let scratch = tempfile_in(dir).map_err(|e| (e, "make the directory writable".into()))?;
    let job = scratch.join("doctor.yaml");
    let written = std::fs::write(
        &job,
        "name: doctor
defaults:
  resources: { memory: 256MiB }
  timeout: 2m
steps:
  hello:
    run: echo hello from the guest
",
    );
    let result = written.map_err(|e| (e.to_string(), "make the directory writable".into())).and_then(|()| {
        let exe = std::env::current_exe().map_err(|e| (e.to_string(), String::new()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("run").arg(&job).arg("--executor").arg("slurm").arg("--out").arg(scratch.join("out")).args(["-q", "--no-cache"]);
        if let Some(p) = partition {
            cmd.arg("--partition").arg(p);
        }
        let o = cmd.output().map_err(|e| (e.to_string(), String::new()))?;
        let report: serde_json::Value = std::fs::read(scratch.join("out/report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let step = &report["steps"][0];
        if o.status.success() && step["verdict"] == "passed" {
            Ok(format!(
                "passed on node {} (Slurm job {})",
                step["attempts"][0]["slurm"]["node"].as_str().unwrap_or("?"),
                step["attempts"][0]["slurm"]["job_id"].as_str().unwrap_or("?")
            ))
        } else {
            let why = step["message"].as_str().map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(&o.stderr).trim().to_owned());
            Err((why, "run `sbxrun doctor` on the node; it needs /dev/kvm, the guest assets and this sbxrun at the same path".into()))
        }
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A new directory under `dir`.
fn tempfile_in(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let path = dir.join(format!(".sbxrun-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs `sbxrun doctor`; exit 0 when everything needed is present, 3 otherwise.
pub fn run(args: DoctorArgs) -> CliResult {
    let findings = match args.executor {
        super::run::Executor::Local => collect(),
        super::run::Executor::Slurm => collect_slurm(&args),
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&findings).unwrap_or_default()
        );
    } else {
        for c in &findings.checks {
            outln!(
                "{} {:<24} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
            if let Some(fix) = &c.fix {
                outln!("     {:<24} fix: {fix}", "");
            }
        }
    }
    // A failed check is the command's answer, printed above, not an error.
    Ok(if findings.checks.iter().all(|c| c.ok) {
        EXIT_OK
    } else {
        EXIT_INFRA
    })
}
