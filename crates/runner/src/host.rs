//! Facts about the host that decide how VMs are run: is KVM usable, and is
//! it hardware-assisted or kvm-pvm (software nested virtualization).

use std::fs::OpenOptions;
use std::path::Path;

use serde::Serialize;

pub use sbxrun_proto::control::{detect_flavour, KvmFlavour};

/// What `/dev/kvm` looks like on this host.
#[derive(Debug, Clone, Serialize)]
pub struct KvmInfo {
    /// `/dev/kvm` opened read-write.
    pub accessible: bool,
    /// Why it could not be opened, if it could not.
    pub error: Option<String>,
    /// Hardware or kvm-pvm.
    pub flavour: KvmFlavour,
}

/// Probes `/dev/kvm` and the KVM flavour.
pub fn probe_kvm() -> KvmInfo {
    let (accessible, error) = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flavour = detect_flavour(Path::new("/sys/module/kvm_pvm").exists(), &cpuinfo);
    KvmInfo {
        accessible,
        error,
        flavour,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_without_vmx_is_pvm() {
        assert_eq!(
            detect_flavour(true, "flags\t: fpu sse2 hypervisor\n"),
            KvmFlavour::Pvm
        );
    }

    #[test]
    fn vmx_or_svm_means_hardware() {
        assert_eq!(
            detect_flavour(true, "flags\t: fpu vmx\n"),
            KvmFlavour::Hardware
        );
        assert_eq!(
            detect_flavour(false, "flags\t: fpu svm\n"),
            KvmFlavour::Hardware
        );
        assert_eq!(
            detect_flavour(false, "flags\t: fpu\n"),
            KvmFlavour::Hardware
        );
    }
}
