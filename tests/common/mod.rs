//! Shared setup for the integration tests: they run real VMs, so they need
//! /dev/kvm and the guest assets, and fail loudly when either is missing.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};

use sbxrun_runner::host::probe_kvm;
use sbxrun_runner::pool::launch::VmShape;

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
    sbxrun_runner::pool::vm::set_vmm_executable(sbxrun_exe());
    VmShape::from_default_assets(256, 1)
        .unwrap_or_else(|e| panic!("integration tests need the guest assets: {e}"))
}

/// Runs `sbxrun ARGS` and returns its output.
pub fn sbxrun(args: &[&str]) -> Output {
    require_kvm();
    Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
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

/// A tiny HTTP server: answers every request with `body` and remembers
/// each request's Host header.
pub struct Server {
    pub port: u16,
    pub hosts: Arc<Mutex<Vec<String>>>,
}

/// On `port` of 127.0.0.1 (0: any free port).
pub fn serve(body: Vec<u8>, port: u16) -> Server {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot serve HTTP on 127.0.0.1:{port}: {e}"));
    let port = listener.local_addr().unwrap().port();
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let seen = hosts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            let body = body.clone();
            std::thread::spawn(move || answer(conn, &body, &seen));
        }
    });
    Server { port, hosts }
}

fn answer(mut conn: TcpStream, body: &[u8], seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut host = String::new();
    let mut lines = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        lines += 1;
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("host:") {
            host = v.trim().to_owned();
        }
        if line == "\r\n" {
            break;
        }
    }
    // A connection the VMM opened and reset before a byte passed: the
    // server never got a request from it.
    if lines == 0 {
        return;
    }
    seen.lock().unwrap().push(host);
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// Reads `report.json` from a run directory and checks it against the
/// checked-in report schema.
pub fn report(out: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/report.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "report.json violates the schema: {errors:?}"
    );
    report
}

/// The step instance `name` of a report.
pub fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

/// Every file and link under `dir`, with contents.
pub fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into(),
                );
            }
        }
    }
    out
}

/// The manifests (`.yaml`, `.yml`, `.kdl`) directly in `dir`, a folder of
/// the repository, sorted.
pub fn manifests(dir: &str) -> Vec<PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| sbxrun_runner::manifest::Syntax::from_path(p).is_some());
    out.sort();
    out
}
