//! A directory as the root image: `sbxrun exec --image DIR` builds it into
//! an ext4 file and boots a VM from it.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{exec, text};
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

const MARKER: &str = "built from a directory\n";

/// Pins every entry's times, so the tree (and so its cached image and
/// snapshot) is the same on every run of this test.
fn pin_times(path: &Path) {
    let t = TimeSpec::new(1_700_000_000, 0);
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("cannot set times of {}: {e}", path.display()));
}

#[test]
fn exec_boots_a_directory_image() {
    common::require_kvm();
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::create_dir(root.join("bin")).unwrap();
    // The default image's busybox: a static binary known to run in the guest.
    let default_image = sbxrun_runner::assets::Asset::Image.default_path();
    let busybox = root.join("bin/busybox");
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /bin/busybox {}", busybox.display()))
        .arg(&default_image)
        .output()
        .expect("this test needs debugfs (e2fsprogs)");
    assert!(
        out.status.success() && busybox.is_file(),
        "cannot extract busybox from {}: {}",
        default_image.display(),
        text(&out.stderr)
    );
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    symlink("busybox", root.join("bin/cat")).unwrap();
    fs::write(root.join("marker.txt"), MARKER).unwrap();
    fs::set_permissions(root.join("marker.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o755)).unwrap();
    for p in ["bin/busybox", "bin/sh", "bin/cat", "marker.txt", "bin", ""] {
        pin_times(&root.join(p));
    }

    let image = root.to_str().unwrap();
    let out = exec(&["--image", image], &["cat", "/marker.txt"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), MARKER);
}
