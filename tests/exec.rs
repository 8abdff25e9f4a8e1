//! `sbxrun exec` end to end: a real kernel, guest-init and our VMM.

mod common;

use common::{exec, text, warm_snapshot};
use sha2::{Digest, Sha256};

#[test]
fn exit_codes_propagate() {
    warm_snapshot();
    for code in [0, 1, 42] {
        let out = exec(&[], &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stderr: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn stdout_and_stderr_stay_apart() {
    warm_snapshot();
    let out = exec(
        &[],
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
        ],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out1\nout2\n");
    assert_eq!(text(&out.stderr), "err1\nerr2\n");
}

#[test]
fn env_and_cwd_reach_the_command() {
    warm_snapshot();
    let out = exec(
        &["-e", "GREETING=hello world", "--cwd", "/tmp"],
        &["sh", "-c", "echo \"$GREETING\"; pwd"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello world\n/tmp\n");
}

#[test]
fn commands_run_unprivileged_unless_root_is_asked() {
    warm_snapshot();
    let out = exec(&[], &["id", "-u"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "1000",
        "stderr: {}",
        text(&out.stderr)
    );
    let out = exec(&["--root"], &["id", "-u"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "0",
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn guest_kernel_is_ours() {
    warm_snapshot();
    let out = exec(&[], &["uname", "-r"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("6.1."),
        "unexpected kernel {}",
        text(&out.stdout)
    );
}

#[test]
fn a_signal_death_is_reported_as_such() {
    warm_snapshot();
    let out = exec(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(
        text(&out.stderr).contains("killed by signal 9"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_command_outliving_its_timeout_is_killed() {
    warm_snapshot();
    let started = std::time::Instant::now();
    let out = exec(&["--timeout", "2s"], &["sleep", "60"]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("timed out"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "the sleep was not cut short"
    );
}

/// A restored guest's timers fire: its LAPIC timer deadline survives the
/// snapshot (KVM drops it when the MSRs are restored before the LAPIC).
#[test]
fn a_restored_guest_wakes_from_sleep_and_flushes_output_on_its_timer() {
    warm_snapshot();
    let out = exec(
        &["--timeout", "60s"],
        &[
            "sh",
            "-c",
            "a=$(date +%s); sleep 1; b=$(date +%s); echo $((b - a))",
        ],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let slept: u64 = text(&out.stdout).trim().parse().unwrap_or(0);
    assert!((1..=3).contains(&slept), "slept {slept} s");
}

#[test]
fn a_missing_command_is_not_an_exit_code_of_the_command() {
    warm_snapshot();
    let out = exec(&[], &["/no/such/program"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_guest_kernel_panic_is_an_error_with_the_panic_line() {
    warm_snapshot();
    let out = exec(&["--root"], &["sh", "-c", "echo c > /proc/sysrq-trigger"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Kernel panic"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_ten_megabyte_stream_arrives_intact() {
    warm_snapshot();
    const LEN: usize = 10 * 1024 * 1024;
    let out = exec(
        &["--timeout", "5m"],
        &["sh", "-c", &format!("yes 0123456789abcdef | head -c {LEN}")],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(LEN)
        .collect();
    assert_eq!(out.stdout.len(), LEN);
    assert_eq!(
        hex::encode(Sha256::digest(&out.stdout)),
        hex::encode(Sha256::digest(&expected))
    );
}

#[test]
fn timings_say_when_a_first_use_built_the_snapshot_instead_of_restoring() {
    common::require_kvm();
    // A cache of its own with the built assets in it: no snapshot yet.
    let cache = tempfile::tempdir().unwrap();
    let assets = cache.path().join("assets");
    std::fs::create_dir(&assets).unwrap();
    let real = sbxrun_runner::assets::cache_dir().join("assets");
    for name in ["vmlinux", "initramfs.cpio", "rootfs.ext4"] {
        let target = std::fs::canonicalize(real.join(name))
            .unwrap_or_else(|e| panic!("guest asset {name} missing ({e}); run `make assets`"));
        std::os::unix::fs::symlink(target, assets.join(name)).unwrap();
    }
    let run = || {
        std::process::Command::new(common::sbxrun_exe())
            // Every run here runs its steps; tests/step_cache.rs covers the cache.
            .env("SBXRUN_NO_CACHE", "1")
            .args(["exec", "--timings", "--", "true"])
            .env("SBXRUN_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let said = text(&first.stderr);
    assert!(said.contains("first use of this VM shape"), "{said}");
    assert!(!said.contains("restored from snapshot in"), "{said}");
    let second = run();
    let said = text(&second.stderr);
    assert!(said.contains("restored from snapshot in"), "{said}");
    assert!(!said.contains("first use"), "{said}");
}
