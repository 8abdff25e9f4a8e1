//! Container images end to end, on real VMs: images the tests build from
//! files (the host's static busybox plus files of their own), pushed with
//! skopeo to a real registry (Debian's docker-registry) on 127.0.0.1, pulled
//! and converted by `sbxrun run`, then booted.

mod common;
#[path = "../crates/image/tests/common/mod.rs"]
mod registry;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{report, require_kvm, sbxrun_exe, text};
use registry::Registry;

/// One entry of a test layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    registry::gzip(&b.into_inner().unwrap())
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha(bytes);
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    digest
}

/// Writes an OCI layout at `dir` holding one image, tagged `tag`, of these
/// layers and this config; returns the manifest digest.
fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>], config: Value) -> String {
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(dir, l), "size": l.len()})
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha(l)).collect::<Vec<_>>()},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(dir, &config), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let digest = put(dir, &manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digest
}

fn busybox() -> Vec<u8> {
    fs::read("/bin/busybox")
        .expect("the image tests build images around /bin/busybox (busybox-static; `make assets` installs it)")
}

/// The tree image: busybox and a user in the base layer; a second layer
/// deletes a file (whiteout) and replaces a directory (opaque).
fn tree_image(dir: &Path) -> String {
    let bb = busybox();
    let base = layer(&[
        Entry::Dir("bin"),
        Entry::File("bin/busybox", &bb, 0o755),
        Entry::Link("bin/sh", "busybox"),
        Entry::Link("bin/ls", "busybox"),
        Entry::Link("bin/id", "busybox"),
        Entry::Link("bin/cat", "busybox"),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/data:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1002:\n", 0o644),
        Entry::Dir("data"),
        Entry::File("data/keep.txt", b"kept\n", 0o644),
        Entry::File("data/gone.txt", b"deleted by the next layer\n", 0o644),
        Entry::Dir("data/old"),
        Entry::File("data/old/a.txt", b"hidden by the opaque directory\n", 0o644),
    ]);
    let top = layer(&[
        Entry::File("data/.wh.gone.txt", b"", 0o644),
        Entry::Dir("data/old"),
        Entry::File("data/old/.wh..wh..opq", b"", 0o644),
        Entry::File("data/old/b.txt", b"new\n", 0o644),
    ]);
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=from-image"],
        "WorkingDir": "/data",
        "User": "app",
        "Cmd": ["/bin/sh", "-c", "echo $GREETING; id -u; id -g; pwd; ls /data /data/old"],
    });
    write_layout(dir, "1", &[base, top], config)
}

/// An image with busybox but no `/bin/sh`, as distroless images are.
fn shell_less_image(dir: &Path) -> String {
    let bb = busybox();
    let only = layer(&[
        Entry::Dir("usr"),
        Entry::Dir("usr/bin"),
        Entry::File("usr/bin/busybox", &bb, 0o755),
    ]);
    write_layout(
        dir,
        "1",
        &[only],
        serde_json::json!({"Cmd": ["/usr/bin/busybox", "true"]}),
    )
}

fn run_job(manifest: &Path, out: &Path) -> Output {
    require_kvm();
    Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .arg("run")
        .arg(manifest)
        .arg("-o")
        .arg(out)
        .output()
        .expect("cannot run sbxrun")
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

fn log(out: &Path, name: &str) -> String {
    fs::read_to_string(out.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

#[test]
fn a_pulled_image_runs_with_its_layers_config_and_digest_recorded() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let digest = tree_image(&layout);
    let reg = Registry::start(None);
    reg.push(&layout, "1", "test/tree", None);
    let image = format!("{}/test/tree:1", reg.addr);
    let manifest = work.path().join("job.yaml");
    fs::write(
        &manifest,
        format!(
            "name: oci\nsteps:\n  image-default:\n    image: {image}\n  as-root:\n    image: {image}\n    \
             needs: [image-default]\n    user: root\n    env: {{ GREETING: from-step }}\n    \
             run: echo $GREETING; id -u; pwd; cat /data/keep.txt\n"
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let run = run_job(&manifest, &out);
    assert!(
        run.status.success(),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );

    // The image's Cmd, Env, WorkingDir and User; the final tree of both layers.
    let default = log(&out, "image-default");
    let lines: Vec<&str> = default
        .lines()
        .map(|l| l.trim_start_matches("out| "))
        .collect();
    assert_eq!(
        &lines[..4],
        ["from-image", "1001", "1002", "/data"],
        "{default}"
    );
    assert!(default.contains("keep.txt"), "{default}");
    assert!(
        !default.contains("gone.txt"),
        "whiteout not applied: {default}"
    );
    assert!(
        default.contains("b.txt") && !default.contains("a.txt"),
        "opaque dir not applied: {default}"
    );
    // The step's own env and user win; its cwd is still the image's.
    let root = log(&out, "as-root");
    let lines: Vec<&str> = root
        .lines()
        .map(|l| l.trim_start_matches("out| "))
        .collect();
    assert_eq!(lines, ["from-step", "0", "/data", "kept"], "{root}");

    let report = report(&out);
    for name in ["image-default", "as-root"] {
        let s = step(&report, name);
        assert_eq!(s["image"]["reference"], image.as_str(), "{s}");
        assert_eq!(s["image"]["digest"], digest.as_str(), "{s}");
    }
    let junit = fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains(&format!("image.digest={digest}")), "{junit}");
}

#[test]
fn image_failures_name_the_image_and_leave_the_other_steps_alone() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    shell_less_image(&layout);
    let open = Registry::start(None);
    open.push(&layout, "1", "test/distroless", None);
    let private = Registry::start(Some(&[("alice", "s3cret")]));
    private.push(&layout, "1", "test/distroless", Some("alice:s3cret"));
    let manifest = work.path().join("job.yaml");
    fs::write(
        &manifest,
        format!(
            "name: broken\nsteps:\n  no-shell:\n    image: {open}/test/distroless:1\n    run: echo hi\n  \
             by-command:\n    image: {open}/test/distroless:1\n    command: [/usr/bin/busybox, echo, fine]\n  \
             private:\n    image: {private}/test/distroless:1\n    command: [/usr/bin/busybox, true]\n  \
             plain:\n    command: [\"true\"]\n",
            open = open.addr,
            private = private.addr,
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let run = run_job(&manifest, &out);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let report = report(&out);

    let no_shell = step(&report, "no-shell");
    assert_eq!(no_shell["verdict"], "failed", "{no_shell}");
    let message = no_shell["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("test/distroless:1") && message.contains("/bin/sh"),
        "{message}"
    );

    // The same image runs a `command:` step.
    assert_eq!(step(&report, "by-command")["verdict"], "passed");
    assert!(log(&out, "by-command").contains("fine"));

    let private_step = step(&report, "private");
    assert_ne!(private_step["verdict"], "passed", "{private_step}");
    let message = private_step["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{}/test/distroless:1", private.addr)),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");

    assert_eq!(step(&report, "plain")["verdict"], "passed");
}

/// The realistic image the setup builds: Debian bookworm with python3.
fn python_layout() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/image/build-python-oci.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("cannot run the image build");
    assert!(
        out.status.success(),
        "guest/image/build-python-oci.sh failed:\n{}",
        text(&out.stderr)
    );
    PathBuf::from(text(&out.stdout).trim())
}

#[test]
fn python_runs_from_a_debian_image_pulled_from_a_local_registry() {
    let layout = python_layout();
    let reg = Registry::start(None);
    reg.push(&layout, "3.11", "library/python", None);
    let work = tempfile::tempdir().unwrap();
    let manifest = work.path().join("job.yaml");
    fs::write(
        &manifest,
        format!(
            "name: py\nsteps:\n  add:\n    image: {}/library/python:3.11\n    \
             command: [python3, -c, 'print(2+2)']\n",
            reg.addr
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let run = run_job(&manifest, &out);
    assert!(
        run.status.success(),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert_eq!(log(&out, "add").trim(), "out| 4");
}

#[test]
fn oci_layouts_and_archives_run_steps_without_a_registry() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    tree_image(&layout);
    let skopeo = registry::require("skopeo");
    let copy = |dest: String| {
        let out = Command::new(&skopeo)
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {}", text(&out.stderr));
    };
    copy(format!(
        "oci-archive:{}:1",
        work.path().join("tree.tar").display()
    ));
    copy(format!(
        "docker-archive:{}:tree:1",
        work.path().join("docker.tar").display()
    ));
    let manifest = work.path().join("job.yaml");
    let command = "    command: [/bin/cat, /data/keep.txt]\n";
    fs::write(
        &manifest,
        format!(
            "name: local\nsteps:\n  layout:\n    image: oci:layout:1\n{command}  \
             archive:\n    image: oci-archive:tree.tar:1\n{command}  \
             docker:\n    image: docker-archive:docker.tar\n{command}"
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let run = run_job(&manifest, &out);
    assert!(
        run.status.success(),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    for name in ["layout", "archive", "docker"] {
        assert_eq!(log(&out, name).trim(), "out| kept", "{name}");
    }
}
