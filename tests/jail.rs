//! The VMM jail on real KVM: escape probes run by a process jailed exactly
//! like a VMM, the state of a real jailed VMM process as the kernel sees
//! it, and `exec` with and without the jail.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{default_shape, exec, text};
use sbxrun_jail::selftest::Probe;
use sbxrun_proto::control::{VmConfig, VmExit};
use sbxrun_runner::pool::launch::StepDisks;
use sbxrun_runner::pool::warm::{Pool, PoolConfig};
use sbxrun_runner::pool::{VmHandle, VmHandleError};

fn selftest_config() -> VmConfig {
    let no_disks = StepDisks {
        input: PathBuf::new(),
        output: PathBuf::new(),
    };
    default_shape().vm_config(&no_disks, None)
}

/// Runs `sbxrun __jail-selftest ARGS` through the runner's VM handle and
/// returns how the runner saw it end.
fn selftest_with(config: &VmConfig, args: &[&str]) -> VmExit {
    let timeout = Duration::from_secs(20);
    let mut vm = match VmHandle::spawn_jail_selftest(args, config, timeout) {
        Ok(vm) => vm,
        Err(VmHandleError::Exited(exit)) => return exit,
        Err(e) => panic!("selftest {args:?} did not start: {e}"),
    };
    assert!(vm.jailed(), "selftest {args:?} says it is not jailed");
    let deadline = Instant::now() + timeout;
    loop {
        let event = vm
            .next_event(deadline)
            .unwrap_or_else(|e| panic!("selftest {args:?}: {e}"));
        match vm.fail_on(event) {
            Err(VmHandleError::Exited(exit)) => return exit,
            Err(e) => panic!("selftest {args:?} ended without a report: {e}"),
            Ok(()) => {}
        }
    }
}

fn selftest(args: &[&str]) -> VmExit {
    selftest_with(&selftest_config(), args)
}

#[test]
fn every_escape_probe_is_killed_by_the_vmm_filter_and_named() {
    for probe in Probe::ALL {
        match selftest(&[probe.name()]) {
            VmExit::SeccompViolation { syscall, thread } => {
                assert_eq!(syscall, probe.first_syscall(), "probe {}", probe.name());
                assert_eq!(thread, "vmm", "probe {}", probe.name());
            }
            other => panic!(
                "probe {} was not stopped by seccomp: {other:?}",
                probe.name()
            ),
        }
    }
}

#[test]
fn the_vcpu_filter_kills_an_open_and_the_report_names_the_vcpu_thread() {
    let exit = selftest(&["--vcpu", "open-host-file"]);
    assert_eq!(
        exit,
        VmExit::SeccompViolation {
            syscall: "openat".into(),
            thread: "vcpu".into()
        }
    );
    assert!(exit.describe().contains("seccomp"), "{}", exit.describe());
}

#[test]
fn the_network_threads_filter_kills_an_open_and_the_report_names_the_net_thread() {
    // The thread that parses the guest's frames may not open files (nor
    // take snapshots), though the VMM thread's filter would let it.
    let exit = selftest(&["--net", "open-host-file"]);
    assert_eq!(
        exit,
        VmExit::SeccompViolation {
            syscall: "openat".into(),
            thread: "net".into()
        }
    );
}

#[test]
fn without_seccomp_the_other_layers_still_refuse_each_escape() {
    let expect = [
        (Probe::OpenHostFile, "No such file"),
        (Probe::InetSocket, "connect failed"),
        (Probe::Ptrace, "refused"),
        (Probe::Execve, "No such file"),
        (Probe::Mount, "Operation not permitted"),
        (Probe::Setuid, "Operation not permitted"),
    ];
    for (probe, why) in expect {
        match selftest(&["--layers", probe.name()]) {
            VmExit::HostError { message } => {
                assert!(
                    message.contains(": refused: ") && message.contains(why),
                    "probe {} should be refused with `{why}`: {message}",
                    probe.name()
                );
            }
            other => panic!("probe {}: unexpected end {other:?}", probe.name()),
        }
    }
}

#[test]
fn a_jail_setup_failure_names_the_step_and_the_cause() {
    let mut config = selftest_config();
    config.jail.cgroup_procs = vec![PathBuf::from("/nonexistent/sbxrun/cgroup.procs")];
    match selftest_with(&config, &["open-host-file"]) {
        VmExit::JailFailed { step, reason } => {
            assert_eq!(step, "join the VM's cgroup");
            assert!(
                reason.contains("/nonexistent/sbxrun/cgroup.procs"),
                "{reason}"
            );
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("expected a jail failure, got {other:?}"),
    }
}

fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn a_restored_vmm_runs_unprivileged_in_its_own_namespaces_and_cgroup() {
    let shape = default_shape();
    common::warm_snapshot();
    let cache = sbxrun_runner::assets::cache_dir();
    let pool = Pool::open(PoolConfig {
        scratch: cache.join("run"),
        cache,
        shape,
        warm: 0,
        console_dir: None,
    })
    .unwrap();
    let lease = pool.acquire().unwrap();
    assert!(lease.vm.jailed());
    let relay = lease.vm.pid();
    let children = std::fs::read_to_string(format!("/proc/{relay}/task/{relay}/children")).unwrap();
    let vmm = children
        .split_whitespace()
        .next()
        .expect("the relay has no VMM child")
        .to_string();

    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares our {ns} namespace");
    }
    assert_eq!(
        status_field(&vmm, "NSpid").split_whitespace().last(),
        Some("1")
    );
    assert!(status_field(&vmm, "Uid").starts_with("65534"));
    assert_eq!(status_field(&vmm, "NoNewPrivs"), "1");
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&vmm, caps), "0000000000000000", "{caps}");
    }
    // Every thread (main, vCPU, console input, control) is filtered.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{vmm}/task"))
        .unwrap()
        .flatten()
        .collect();
    assert!(tasks.len() >= 4, "expected at least 4 VMM threads");
    for task in tasks {
        let tid = task.file_name().to_string_lossy().to_string();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "thread {tid} is not filtered"
        );
    }
    let dirs = lease.vm.cgroup_dirs().to_vec();
    assert!(
        !dirs.is_empty(),
        "this host has cgroups, the VM should be in one"
    );
    // The VMM joins thread by thread (v1 `tasks`) while single-threaded,
    // so every thread it starts later must be in the cgroup too.
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() >= 4, "VMM threads: {tasks:?}");
    for tid in &tasks {
        let cgroups = std::fs::read_to_string(format!("/proc/{vmm}/task/{tid}/cgroup")).unwrap();
        for dir in &dirs {
            let name = dir.file_name().unwrap().to_string_lossy();
            assert!(
                cgroups.contains(&*name),
                "VMM thread {tid} not in {name}: {cgroups}"
            );
        }
    }
    drop(lease);
    for dir in &dirs {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

#[test]
fn exec_echo_runs_in_a_jailed_vm() {
    common::warm_snapshot();
    let out = exec(&["--timings"], &["echo", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(
        text(&out.stderr).contains(", jailed, jail setup"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_jail_warns_loudly_and_is_recorded() {
    common::warm_snapshot();
    let out = exec(&["--no-jail", "--timings"], &["echo", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("WARNING: --no-jail"), "{stderr}");
    assert!(stderr.contains("NOT jailed"), "{stderr}");
}
