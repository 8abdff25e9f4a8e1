//! What moves a key and what does not: each part on its own, content not
//! paths or times.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use super::*;
use crate::manifest::{load_source, SourceFile, Syntax};
use crate::plan::{InstanceId, Selection};

struct Fixture {
    dir: tempfile::TempDir,
    store: LocalStore,
    memo: DigestMemo,
    produced: Mutex<HashMap<PathBuf, String>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("vmlinux", "k"), ("initramfs", "i"), ("root.ext4", "r")] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let store = LocalStore::open(&dir.path().join("steps")).unwrap();
        Fixture {
            dir,
            store,
            memo: DigestMemo::in_memory(),
            produced: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// The key of the first instance of `yaml`, a manifest in `manifest_dir`.
    fn key_in(&self, yaml: &str, manifest_dir: &Path) -> CacheKey {
        self.key_of(yaml, manifest_dir, 0)
    }

    /// The key of instance `index` of `yaml`, a manifest in `manifest_dir`.
    fn key_of(&self, yaml: &str, manifest_dir: &Path, index: usize) -> CacheKey {
        let src = SourceFile::new(
            "t.yaml",
            yaml.to_owned(),
            manifest_dir.to_owned(),
            Syntax::Yaml,
        );
        let job =
            load_source(src).unwrap_or_else(|e| panic!("{}", crate::manifest::render(&e, true)));
        let plan = Plan::new(&job, &Selection::All).unwrap();
        let ctx = KeyContext {
            plan: &plan,
            run_dir: &self.path("run"),
            kernel: &self.path("vmlinux"),
            initramfs: &self.path("initramfs"),
            store: &self.store,
            files: FileDigests {
                memo: &self.memo,
                produced: &self.produced,
            },
        };
        let image = StepImage {
            ext4: self.path("root.ext4"),
            reference: "default".into(),
            digest: None,
            config: None,
            pulled: false,
        };
        compute(&ctx, plan.instance(InstanceId(index)), &image).unwrap()
    }

    fn key(&self, yaml: &str) -> CacheKey {
        self.key_in(yaml, &self.path("src"))
    }
}

const BASE: &str = "
name: k
steps:
  s:
    inputs: [{ host: data, to: in }]
    env: { A: '1' }
    run: make
    outputs: [out/]
";

fn changed(a: &CacheKey, b: &CacheKey) -> Vec<String> {
    sbxrun_stepcache::changed_parts(&a.parts, &b.parts)
}

#[test]
fn each_setting_moves_exactly_its_own_part() {
    let f = Fixture::new();
    f.write("src/data/x.txt", "x");
    let base = f.key(BASE);
    assert_eq!(base, f.key(BASE), "a key is a function of its inputs");
    let cases = [
        ("env: { A: '1' }", "env: { A: '2' }", "env"),
        ("run: make", "run: make all", "command"),
        ("outputs: [out/]", "outputs: [out/, log]", "outputs"),
        ("run: make", "run: make\n    timeout: 5m", "timeout"),
        (
            "run: make",
            "run: make\n    resources: { memory: 1GiB }",
            "shape",
        ),
        ("run: make", "run: make\n    user: root", "user"),
        (
            "run: make",
            "run: make\n    limits: { open_files: 64 }",
            "limits",
        ),
        (
            "run: make",
            "run: make\n    egress: { allow: [example.org] }",
            "egress",
        ),
        (
            "run: make",
            "run: make\n    secrets: [SBX_KEY_TEST_UNSET]",
            "secrets",
        ),
        ("to: in", "to: other", "inputs"),
        (
            "run: make",
            "run: make\n    limits: { cpu_time: 2s }",
            "grading limits",
        ),
        (
            "run: make",
            "run: make\n    limits: { memory: 64MiB }",
            "grading limits",
        ),
        ("run: make", "run: make\n    stdin: in/x.txt", "stdin"),
    ];
    for (from, to, part) in cases {
        let other = f.key(&BASE.replace(from, to));
        assert_ne!(other.key, base.key, "{to}");
        assert_eq!(changed(&base, &other), vec![part], "{to}");
    }
}

#[test]
fn the_expected_output_counts_by_content_and_comparison() {
    let f = Fixture::new();
    f.write("src/data/x.txt", "x");
    f.write("src/want.txt", "42\n");
    let with = |compare: &str| {
        BASE.replace(
            "run: make",
            &format!("run: make\n    expect: {{ stdout: want.txt{compare} }}"),
        )
    };
    let base = f.key(BASE);
    let trim = f.key(&with(""));
    assert_eq!(changed(&base, &trim), vec!["expect"]);
    assert_eq!(f.key(&with(", compare: trim")).key, trim.key);
    let tokens = f.key(&with(", compare: tokens"));
    assert_eq!(changed(&trim, &tokens), vec!["expect"]);
    f.write("src/want.txt", "43\n");
    assert_eq!(changed(&trim, &f.key(&with(""))), vec!["expect"]);
}

#[test]
fn inputs_count_by_content_and_mode_not_by_path_or_time() {
    let f = Fixture::new();
    f.write("src/data/x.txt", "x");
    f.write("src/data/sub/y.txt", "y");
    let base = f.key(BASE);

    // The same tree elsewhere (another checkout) and a touched file.
    f.write("elsewhere/data/x.txt", "x");
    f.write("elsewhere/data/sub/y.txt", "y");
    assert_eq!(f.key_in(BASE, &f.path("elsewhere")).key, base.key);
    let file = std::fs::File::options()
        .write(true)
        .open(f.path("src/data/x.txt"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    assert_eq!(f.key(BASE).key, base.key);

    // One byte, one mode bit, one new file, one symlink: each changes it.
    f.write("src/data/sub/y.txt", "Y");
    let content = f.key(BASE);
    assert_eq!(changed(&base, &content), vec!["inputs"]);
    let y = f.path("src/data/sub/y.txt");
    std::fs::set_permissions(&y, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = f.key(BASE);
    assert_ne!(mode.key, content.key);
    f.write("src/data/new", "");
    let added = f.key(BASE);
    assert_ne!(added.key, mode.key);
    std::os::unix::fs::symlink("x.txt", f.path("src/data/link")).unwrap();
    assert_ne!(f.key(BASE).key, added.key);
}

#[test]
fn the_guest_and_secret_values_are_part_of_the_key() {
    let f = Fixture::new();
    f.write("src/data/x.txt", "x");
    let yaml = BASE.replace(
        "run: make",
        "run: make\n    secrets: [SBX_CACHE_KEY_TEST_SECRET]",
    );
    std::env::set_var("SBX_CACHE_KEY_TEST_SECRET", "one");
    let base = f.key(&yaml);
    std::env::set_var("SBX_CACHE_KEY_TEST_SECRET", "two");
    let other = f.key(&yaml);
    std::env::remove_var("SBX_CACHE_KEY_TEST_SECRET");
    assert_eq!(changed(&base, &other), vec!["secrets"]);
    // The report carries part digests only: no value shows through.
    assert!(!other.parts.values().any(|d| d.contains("two")));
    assert_ne!(
        other.parts["secrets"],
        sbxrun_stepcache::sha256_hex(b"two"),
        "salted"
    );

    for (file, part) in [
        ("vmlinux", "kernel"),
        ("initramfs", "initramfs"),
        ("root.ext4", "image"),
    ] {
        let before = f.key(&yaml);
        f.write(file, "changed");
        assert_eq!(changed(&before, &f.key(&yaml)), vec![part]);
    }
}

#[test]
fn a_producer_input_counts_only_the_outputs_it_takes() {
    let f = Fixture::new();
    let yaml = "
name: k
steps:
  build: { run: make, outputs: [bin/, docs/] }
  test:
    inputs: [{ step: build, path: bin/ }]
    run: ./bin/t
";
    f.write("run/artifacts/build/bin/t", "v1");
    f.write("run/artifacts/build/docs/readme", "v1");
    let key = |f: &Fixture| f.key_of(yaml, &f.path("src"), 1).key;
    let base = key(&f);
    f.write("run/artifacts/build/docs/readme", "v2");
    assert_eq!(key(&f), base, "docs/ is not an input of `test`");
    f.write("run/artifacts/build/bin/t", "v2");
    assert_ne!(key(&f), base);
}
