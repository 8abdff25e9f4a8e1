//! What a person at a terminal sees, on real VMs under a real pseudo
//! terminal (`script`): the first use of a directory image and of its VM
//! shape says what it is doing, running steps are redrawn in place with
//! their elapsed time, verdicts are coloured unless `NO_COLOR` is set, and
//! a failure shows its output's tail. The test runs in a
//! cache directory of its own, so "first use" is real and nothing is left
//! behind.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{require_kvm, sbxrun_exe, text};
use sbxrun_runner::assets::Asset;

/// A root tree with the default image's busybox as /bin/sh, and a marker
/// unique to this run so its image and snapshot are new.
fn busybox_tree(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = root.join("bin/busybox");
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /bin/busybox {}", busybox.display()))
        .arg(Asset::Image.resolve(None))
        .output()
        .expect("this test needs debugfs (e2fsprogs)");
    assert!(
        out.status.success() && busybox.is_file(),
        "{}",
        text(&out.stderr)
    );
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    let marker = format!(
        "{}-{:?}\n",
        std::process::id(),
        std::time::SystemTime::now()
    );
    fs::write(root.join("marker"), marker).unwrap();
}

/// Runs `sbxrun run ARGS` under `script`, which gives it a terminal, and
/// returns what the terminal received.
fn on_a_terminal(cache: &Path, args: &[&str], no_color: bool) -> (Option<i32>, String) {
    let transcript = cache.join(format!("typescript-{no_color}"));
    let command = std::iter::once(sbxrun_exe().display().to_string())
        .chain(std::iter::once("run".to_owned()))
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &command])
        .arg(&transcript)
        .env("SBXRUN_CACHE_DIR", cache)
        .env("SBXRUN_KERNEL", Asset::Kernel.resolve(None))
        .env("SBXRUN_INITRAMFS", Asset::Initramfs.resolve(None))
        .env("SBXRUN_IMAGE", Asset::Image.resolve(None))
        .env("SBXRUN_NO_CACHE", "1")
        .env("TERM", "xterm")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("NO_COLOR");
    if no_color {
        script.env("NO_COLOR", "1");
    }
    let out = script
        .output()
        .expect("this test needs script (util-linux)");
    let seen = fs::read(&transcript).unwrap_or_default();
    (
        out.status.code(),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[test]
fn a_terminal_sees_first_use_live_steps_colour_and_failure_tails() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    busybox_tree(&dir.path().join("rootfs"));
    let manifest = dir.path().join("job.yaml");
    fs::write(
        &manifest,
        "name: console\n\
         defaults:\n  image: ./rootfs\n  resources: { memory: 128MiB }\n\
         steps:\n  \
           ok:\n    run: echo fine\n  \
           bad:\n    run: echo out-line; echo err-line >&2; echo last-line; exit 3\n",
    )
    .unwrap();
    let m = manifest.display().to_string();
    let first_out = dir.path().join("first").display().to_string();
    let (code, seen) = on_a_terminal(&cache, &[&m, "-o", &first_out], false);
    assert_eq!(code, Some(1), "{seen}");
    for said in [
        "/rootfs: building the root image from the directory (first use)",
        "rootfs: root image built in ",
        "rootfs: booting a 128 MiB, 1 vCPU VM to snapshot it (first use of this VM shape)",
        "rootfs: snapshot ready in ",
    ] {
        assert!(seen.contains(said), "no `{said}` in:\n{seen}");
    }
    assert!(
        !seen.contains("/./"),
        "paths are named without `.` parts:\n{seen}"
    );
    // Redrawn in place: a line counting progress, erased and drawn again.
    assert!(seen.contains("done, "), "{seen}");
    assert!(seen.contains("\x1b[2K"), "nothing was redrawn:\n{seen}");
    assert!(
        seen.contains("\x1b[32m✓\x1b[0m ok \x1b[32mpassed\x1b[0m"),
        "{seen}"
    );
    assert!(
        seen.contains("\x1b[31m✗\x1b[0m bad \x1b[31mfailed\x1b[0m"),
        "{seen}"
    );
    // The failure's tail, each line under the step's name (their order
    // across streams is checked in run_jobs, where the guest's writes are
    // far enough apart to be read one by one).
    // (A live terminal gets each line padded to its width, not a newline.)
    let mut tail: Vec<&str> = seen
        .split("bad |\x1b[0m ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    tail.sort_unstable();
    assert_eq!(tail, ["err-line", "last-line", "out-line"], "{seen}");

    // Again, with NO_COLOR: the snapshot is there now, and nothing is coloured.
    let second_out = dir.path().join("second").display().to_string();
    let (code, seen) = on_a_terminal(&cache, &[&m, "-o", &second_out], true);
    assert_eq!(code, Some(1), "{seen}");
    assert!(!seen.contains("first use"), "{seen}");
    assert!(seen.contains("✓ ok passed"), "{seen}");
    for colour in ["\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[2m"] {
        assert!(
            !seen.contains(colour),
            "colour {colour:?} despite NO_COLOR:\n{seen}"
        );
    }
}
