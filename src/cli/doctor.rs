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

/// Runs `sbxrun doctor`; exit 0 when everything needed is present, 3 otherwise.
pub fn run(args: DoctorArgs) -> CliResult {
    let findings = collect();
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
