//! One instance as a Slurm job: its `sbatch` options (resources, time
//! limit, dependencies) and its batch script, which runs this same sbxrun
//! on the node for exactly that instance.

use std::path::Path;
use std::time::Duration;

use super::records::Records;
use crate::plan::Instance;

/// Memory a VM's VMM process and its page tables need beyond the guest's.
const VMM_OVERHEAD_MIB: u64 = 256;
/// Room per attempt for getting a VM (a first use on a node boots the
/// guest to make its snapshot) and for packing outputs.
const ATTEMPT_SLACK: Duration = Duration::from_secs(150);
/// Room per job for pulling and converting a container image on a node.
const JOB_SLACK: Duration = Duration::from_secs(300);

/// Where and how the jobs are submitted.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// More `sbatch` options, passed as given.
    pub extra: Vec<String>,
    /// Submit and return (`sbxrun report RUN_DIR --wait` follows later).
    pub detach: bool,
    /// Skip the check that the run directory is on a shared filesystem.
    pub assume_shared: bool,
}

/// The `--time` limit of an instance's job: every attempt its retries
/// allow, each with the host's own slack, plus a first image pull.
pub fn time_limit(inst: &Instance) -> Duration {
    let timeout = inst.settings.timeout.0;
    let per_attempt = timeout + timeout / 10 + Duration::from_secs(30) + ATTEMPT_SLACK;
    per_attempt * (inst.settings.retries + 1) + JOB_SLACK
}

/// `--time` in whole minutes, rounded up.
fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

/// `afterok:1:2`: the instance starts once each dependency's job has
/// recorded how it ended (the job exits 0 exactly then, whatever the
/// verdict), so a dependency whose job died keeps it waiting for a retry.
pub fn dependency(job_ids: &[String]) -> String {
    if job_ids.is_empty() {
        String::new()
    } else {
        format!("afterok:{}", job_ids.join(":"))
    }
}

/// The `sbatch` options of `inst`.
pub fn sbatch_args(
    inst: &Instance,
    job_name: &str,
    records: &Records,
    opts: &SlurmOptions,
    dependency: &str,
) -> Vec<String> {
    let s = &inst.settings;
    let mem_mib = (s.memory.0 >> 20) + VMM_OVERHEAD_MIB;
    let mut args = vec![
        format!("--job-name=sbxrun:{job_name}:{}", inst.name),
        format!(
            "--output={}",
            records.step_dir(&inst.name).join("slurm-%j.out").display()
        ),
        "--nodes=1".to_owned(),
        "--ntasks=1".to_owned(),
        format!("--cpus-per-task={}", s.vcpus),
        format!("--mem={mem_mib}M"),
        format!("--time={}", minutes(time_limit(inst))),
        // A dependency that can no longer be met keeps the job pending, so
        // the submitter can retry the dependency and point it at the retry.
        "--kill-on-invalid-dep=no".to_owned(),
    ];
    if !dependency.is_empty() {
        args.push(format!("--dependency={dependency}"));
    }
    if let Some(p) = &opts.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(a) = &opts.account {
        args.push(format!("--account={a}"));
    }
    args.extend(opts.extra.iter().cloned());
    args
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script: this sbxrun, on the node, for one instance.
pub fn batch_script(exe: &Path, run_dir: &Path, instance: &str) -> String {
    format!(
        "#!/bin/sh\n# sbxrun: step `{}` of the run in {}\nexec {} __slurm-step {} {}\n",
        instance.replace('\n', " "),
        run_dir.display(),
        quote(&exe.display().to_string()),
        quote(&run_dir.display().to_string()),
        quote(instance),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_what_the_shell_would_split() {
        let s = batch_script(
            Path::new("/opt/sbx run/sbxrun"),
            Path::new("/shared/it's"),
            "test[case=a b]",
        );
        assert!(
            s.contains(
                r"exec '/opt/sbx run/sbxrun' __slurm-step '/shared/it'\''s' 'test[case=a b]'"
            ),
            "{s}"
        );
        assert!(s.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn dependencies_and_time_limits_read_as_slurm_expects() {
        assert_eq!(dependency(&[]), "");
        assert_eq!(dependency(&["4".into(), "9".into()]), "afterok:4:9");
        assert_eq!(minutes(Duration::from_secs(61)), 2);
        assert_eq!(minutes(Duration::from_secs(0)), 1);
    }
}
