//! Every YAML example in `examples/` runs end to end on real VMs and ends
//! the way its comments promise: exit code 0, every required step passed,
//! both reports written. (Their KDL twins are checked to be the same job by
//! `manifest_examples`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{report, require_kvm, sbxrun_exe, serve, step, text};

/// The port examples/egress.yaml fetches from (see its header).
const EGRESS_EXAMPLE_PORT: u16 = 18713;

/// The registry examples/python.yaml pulls from, as `make demo` sets it up:
/// the project's own scripts start it (its storage in a directory of this
/// test's) and push the Debian + python3 image; dropping it stops it.
struct ExampleRegistry {
    cache: tempfile::TempDir,
}

impl ExampleRegistry {
    fn start() -> ExampleRegistry {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let build = Command::new("bash")
            .arg(root.join("guest/image/build-python-oci.sh"))
            .output()
            .expect("cannot build the python image");
        assert!(
            build.status.success(),
            "python image: {}",
            text(&build.stderr)
        );
        let layout = text(&build.stdout).trim().to_owned();
        let reg = ExampleRegistry {
            cache: tempfile::tempdir().unwrap(),
        };
        for args in [vec!["start"], vec!["push", &layout, "library/python:3.11"]] {
            let o = reg.script(&args);
            assert!(
                o.status.success(),
                "local-registry.sh {args:?}: {}",
                text(&o.stderr)
            );
        }
        reg
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-registry.sh"))
            .args(args)
            .env("SBXRUN_CACHE_DIR", self.cache.path())
            .output()
            .expect("cannot run scripts/local-registry.sh")
    }
}

impl Drop for ExampleRegistry {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_runs_green_end_to_end() {
    require_kvm();
    let words =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/words.txt"))
            .expect("examples/data/words.txt");
    let server = serve(words.clone(), EGRESS_EXAMPLE_PORT);
    let _registry = ExampleRegistry::start();
    let examples = examples();
    assert!(examples.len() >= 5, "{examples:?}");
    // The examples' own step cache: a first run stores, nothing carries
    // over from earlier test runs.
    let step_cache = tempfile::tempdir().unwrap();
    let run = |example: &Path, out: &Path| {
        Command::new(sbxrun_exe())
            .arg("run")
            .arg(example)
            .arg("--out")
            .arg(out)
            .args(["--resolve", "files.example.test=127.0.0.1"])
            .env("SBXRUN_STEP_CACHE_DIR", step_cache.path())
            .env_remove("SBXRUN_NO_CACHE")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cannot run sbxrun")
    };
    for example in &examples {
        let out = tempfile::tempdir().unwrap();
        let o = run(example, out.path());
        let name = example.display();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let report = report(out.path());
        for step in report["steps"].as_array().unwrap() {
            // `if: failure()` steps are skipped when nothing failed.
            if step["allow_failure"] == false {
                assert!(
                    step["verdict"] == "passed" || step["verdict"] == "skipped",
                    "{name}: {step:#}"
                );
            }
        }
        assert!(
            out.path().join("junit.xml").is_file(),
            "{name}: no junit.xml"
        );
        if example.ends_with("python.yaml") {
            let version = std::fs::read_to_string(out.path().join("logs/version.log")).unwrap();
            assert!(version.trim().starts_with("out| 3."), "{version}");
            let hello = std::fs::read_to_string(out.path().join("logs/hello.log")).unwrap();
            assert!(hello.contains("hello from python"), "{hello}");
        }
        if example.ends_with("pipeline.yaml") {
            // Run again: every step comes from the cache, no VM starts.
            let again = tempfile::tempdir().unwrap();
            let o = run(example, again.path());
            assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o.stderr));
            let second = common::report(again.path());
            assert_eq!(second["vms_started"], 0, "{second:#}");
            for s in second["steps"].as_array().unwrap() {
                assert_eq!(s["cached"], true, "{name}: {s:#}");
            }
            let merged = std::fs::read_to_string(again.path().join("artifacts/report/report.txt"));
            assert_eq!(
                merged.unwrap(),
                std::fs::read_to_string(out.path().join("artifacts/report/report.txt")).unwrap()
            );
        }
        if example.ends_with("egress.yaml") {
            let fetched = std::fs::read(out.path().join("artifacts/fetch/out/words.txt"))
                .expect("the fetch step's download");
            assert_eq!(fetched, words);
            let strict = step(&report, "strict");
            assert_eq!(strict["verdict"], "failed", "{strict:#}");
        }
    }
    assert!(!server.hosts.lock().unwrap().is_empty());
}
