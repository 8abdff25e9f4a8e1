//! Shared setup for the integration tests: they run real VMs, so they need
//! /dev/kvm and the guest assets, and fail loudly when either is missing.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use sbxrun::host::probe_kvm;
use sbxrun::pool::launch::VmShape;

/// Panics with a clear message unless this host can run VMs.
pub fn require_kvm() {
    let kvm = probe_kvm();
    assert!(
        kvm.accessible,
        "integration tests need /dev/kvm ({}); run `sbxrun doctor`",
        kvm.error.unwrap_or_default()
    );
}

/// The sbxrun binary under test, also used as the VMM executable.
pub fn sbxrun_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sbxrun"))
}

/// The default VM shape from the built assets.
pub fn default_shape() -> VmShape {
    require_kvm();
    sbxrun::pool::vm::set_vmm_executable(sbxrun_exe());
    VmShape::from_default_assets(256, 1)
        .unwrap_or_else(|e| panic!("integration tests need the guest assets: {e}"))
}

/// Runs `sbxrun ARGS` and returns its output.
pub fn sbxrun(args: &[&str]) -> Output {
    require_kvm();
    Command::new(sbxrun_exe())
        .args(args)
        .output()
        .expect("cannot run the sbxrun binary")
}

/// Runs `sbxrun exec [FLAGS] -- CMD`.
pub fn exec(flags: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["exec"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    sbxrun(&args)
}

/// Makes sure the default shape's snapshot exists before parallel tests
/// race to build it (they would all succeed, but each would boot a kernel).
pub fn warm_snapshot() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = exec(&[], &["true"]);
        assert!(
            out.status.success(),
            "cannot run a VM: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
