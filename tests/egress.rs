//! Per-step network egress end to end, on real VMs: the guest's traffic
//! leaves only through the VMM's userspace stack and the runner's broker.
//! No internet: the only server is one this test starts on 127.0.0.1, and
//! its name reaches the steps through `--resolve`. Several checks share one
//! job to keep the number of VMs small.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{report, require_kvm, sbxrun_exe, serve, step, text};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Same VM size as the other job tests, so they share one snapshot.
const SHAPE: &str = "defaults:\n  resources: { memory: 256MiB }\n  timeout: 3m\n";

/// 192 KiB that no two runs share, so a cached or wrong answer shows.
fn payload() -> Vec<u8> {
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = seed | 1;
    (0..192 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn run_job(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    require_kvm();
    Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .arg("run")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("cannot run sbxrun")
}

fn log(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

/// The step's egress events as `kind name ip port` lines.
fn events(report: &Value, name: &str) -> Vec<String> {
    step(report, name)["egress"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["kind"].as_str().unwrap_or("-"),
                e["name"].as_str().unwrap_or("-"),
                e["ip"].as_str().unwrap_or("-"),
                e["port"].as_u64().map_or("-".into(), |p| p.to_string()),
            )
        })
        .collect()
}

fn denied(report: &Value, name: &str, kind: &str) -> u64 {
    step(report, name)["egress"]["denied"][kind]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn egress_policies_are_enforced_by_the_vmm_and_the_broker() {
    let body = payload();
    let server = serve(body.clone(), 0);
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        r#"name: egress
{SHAPE}steps:
  allowed:
    egress: {{ allow: [svc.test] }}
    run: |
      mkdir -p out
      wget -q -O out/page http://svc.test:{port}/page
    outputs: [out/page]
  refused-name:
    egress: {{ allow: [svc.test] }}
    run: nslookup evil.test 2>&1 || echo "lookup failed"
  host-mismatch:
    egress: {{ allow: [svc.test] }}
    run: |
      wget -q -O - --header 'Host: other.test' http://svc.test:{port}/page \
        || echo "mismatch refused"
  other-ways-out:
    egress: {{ allow: [svc.test] }}
    user: root
    run: |
      wget -q -O - http://169.254.169.254/latest/meta-data/ || echo "metadata refused"
      nslookup svc.test 8.8.8.8 || echo "foreign resolver unreachable"
      traceroute -n -m 1 -q 1 -w 1 -p 9999 203.0.113.9 || true
  no-network:
    run: |
      cat /sys/class/net/eth0/operstate
      wget -q -O - http://svc.test:{port}/page || echo "no network"
  public-private:
    egress: public
    run: wget -q -O - http://10.1.2.3:8080/ || echo "private refused"
  flood:
    egress: {{ allow: [svc.test], on_violation: fail }}
    user: root
    run: ping -q -c 300 -i 0.01 -s 60000 -W 1 203.0.113.9 || true
"#
    );
    let manifest = write(dir.path(), "egress.yaml", &job);
    let out = dir.path().join("out");
    let o = run_job(&manifest, &out, &["--resolve", "svc.test=127.0.0.1"]);
    let report = report(&out);
    let stderr = text(&o.stderr);

    // An allowed name: the page arrives byte-exact, nothing is denied, and
    // the server saw the name the guest asked for.
    assert_eq!(
        step(&report, "allowed")["verdict"],
        "passed",
        "{}\n{stderr}",
        log(&out, "allowed")
    );
    let page = std::fs::read(out.join("artifacts/allowed/out/page")).expect("page fetched");
    assert_eq!(
        hex::encode(Sha256::digest(&page)),
        hex::encode(Sha256::digest(&body)),
        "the page must arrive byte-exact"
    );
    assert!(events(&report, "allowed").is_empty());
    assert_eq!(step(&report, "allowed")["egress"]["policy"], "allow");

    // A name the policy does not allow: REFUSED, nothing asked upstream.
    let l = log(&out, "refused-name");
    assert!(l.contains("REFUSED"), "{l}");
    assert!(events(&report, "refused-name")
        .iter()
        .all(|e| e.starts_with("dns-refused evil.test")));
    assert!(denied(&report, "refused-name", "dns-refused") >= 1);

    // The allowed address with another site's Host: reset before a byte
    // reaches the server.
    let l = log(&out, "host-mismatch");
    assert!(l.contains("mismatch refused"), "{l}");
    assert_eq!(
        events(&report, "host-mismatch"),
        [format!("server-name-mismatch other.test 127.0.0.1 {port}")]
    );
    let hosts = server.hosts.lock().unwrap().clone();
    assert!(
        hosts.iter().all(|h| h.starts_with("svc.test")),
        "only svc.test may reach the server: {hosts:?}"
    );
    assert!(!hosts.is_empty());

    // The metadata endpoint, a foreign resolver and plain UDP go nowhere.
    let ev = events(&report, "other-ways-out");
    assert!(
        ev.contains(&"connect-denied - 169.254.169.254 80".to_owned()),
        "{ev:?}"
    );
    assert!(
        ev.contains(&"protocol-dropped - 8.8.8.8 53".to_owned()),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with("protocol-dropped - 203.0.113.9 ")),
        "{ev:?}"
    );
    assert!(log(&out, "other-ways-out").contains("metadata refused"));

    // No policy: the interface stays down and the VMM sees nothing.
    let l = log(&out, "no-network");
    assert!(l.contains("out| down"), "{l}");
    assert!(l.contains("no network"), "{l}");
    assert_eq!(step(&report, "no-network")["egress"]["policy"], "none");
    assert!(events(&report, "no-network").is_empty());

    // `public` still keeps private ranges out.
    assert!(log(&out, "public-private").contains("private refused"));
    assert_eq!(
        events(&report, "public-private"),
        ["connect-denied - 10.1.2.3 8080"]
    );

    // Ten thousand denials: all counted, only the first few kept, and
    // `on_violation: fail` fails the step.
    let flood = step(&report, "flood");
    let dropped = denied(&report, "flood", "protocol-dropped");
    assert!(dropped >= 10_000, "{dropped} denials counted: {flood:#}");
    let kept = flood["egress"]["events"].as_array().unwrap().len() as u64;
    assert!(kept <= 256, "{kept} events kept");
    assert_eq!(
        kept + flood["egress"]["events_not_kept"].as_u64().unwrap(),
        dropped
    );
    assert_eq!(flood["verdict"], "failed");
    assert!(flood["message"]
        .as_str()
        .unwrap_or("")
        .contains("egress policy violated"));

    // The run as a whole: one failed step (the flood), exit code 1.
    assert_eq!(o.status.code(), Some(1), "{stderr}");
}

#[test]
fn a_resolve_override_must_name_a_host_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "job.yaml",
        "name: j\nsteps:\n  a:\n    run: \"true\"\n",
    );
    let o = Command::new(sbxrun_exe())
        // Every run here runs its steps; tests/step_cache.rs covers the cache.
        .env("SBXRUN_NO_CACHE", "1")
        .args(["run", "--resolve", "svc.test=not-an-ip"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("not an IP address"),
        "{}",
        text(&o.stderr)
    );
}
