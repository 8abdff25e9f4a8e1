//! Test helpers: images made from files the tests write (an OCI layout by
//! hand: tar + JSON), a real registry (Debian's `docker-registry`, the CNCF
//! distribution registry) on a free 127.0.0.1 port, and skopeo to push.
//! A missing tool fails the test with the command that installs it.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Fails the test unless `tool` is installed.
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is not installed; the image tests need it. Run `make test-deps` (scripts/test-deps.sh) to install docker-registry, skopeo, umoci and apache2-utils");
}

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
}

/// A tar of `entries`; names written raw so `../x` survives.
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                (n, d)
            }
            E::Link(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.as_mut_bytes()[157..157 + t.len()].copy_from_slice(t.as_bytes());
                (n, b"")
            }
        };
        h.as_mut_bytes()[..100].fill(0);
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// A compressed layer blob with its media type.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
}

pub fn gz_layer(entries: &[E<'_>]) -> Layer {
    Layer {
        blob: gzip(&tar_of(entries)),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    }
}

pub fn zstd_layer(entries: &[E<'_>]) -> Layer {
    Layer {
        blob: zstd(&tar_of(entries)),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = sha(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
    d
}

fn descriptor(media: &str, bytes: &[u8], digest: &str) -> serde_json::Value {
    serde_json::json!({"mediaType": media, "digest": digest, "size": bytes.len()})
}

/// Writes an image (config + layers) into the OCI layout `dir` under
/// `tag`, returning its manifest digest. `arch` is the config's.
pub fn add_image(dir: &Path, tag: &str, layers: &[Layer], arch: &str) -> String {
    let manifest = image_manifest(dir, layers, arch);
    let d = put_blob(dir, &manifest);
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest, &d);
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    add_index_entry(dir, entry);
    d
}

fn image_manifest(dir: &Path, layers: &[Layer], arch: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(&l.blob)).collect();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "GREETING=hi"], "WorkingDir": "/work",
                   "User": "1000:1000", "Entrypoint": ["/bin/entry"], "Cmd": ["--flag"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = put_blob(dir, &config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let d = put_blob(dir, &l.blob);
            descriptor(l.media_type, &l.blob, &d)
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, &cd),
        "layers": layer_descs,
    });
    serde_json::to_vec(&manifest).unwrap()
}

/// Writes an index holding one `arch` image under `tag` (an index in the
/// layout's index.json, as a multi-arch image has).
pub fn add_index_image(dir: &Path, tag: &str, layers: &[Layer], arch: &str) -> String {
    let manifest = image_manifest(dir, layers, arch);
    let md = put_blob(dir, &manifest);
    let mut m = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest, &md);
    m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [m]
    }))
    .unwrap();
    let d = put_blob(dir, &index);
    let mut entry = descriptor("application/vnd.oci.image.index.v1+json", &index, &d);
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    add_index_entry(dir, entry);
    d
}

fn add_index_entry(dir: &Path, entry: serde_json::Value) {
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    index["manifests"].as_array_mut().unwrap().push(entry);
    fs::write(path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: tempfile::TempDir,
    _config: tempfile::TempDir,
}

impl Registry {
    /// Starts one; with `htpasswd`, it requires basic auth for those users.
    pub fn start(htpasswd: Option<&[(&str, &str)]>) -> Registry {
        Registry::start_with(htpasswd, None)
    }

    /// Starts one with `auth_yaml` as its `auth:` section (token auth).
    pub fn start_with_auth(auth_yaml: &str) -> Registry {
        Registry::start_with(None, Some(auth_yaml))
    }

    fn start_with(htpasswd: Option<&[(&str, &str)]>, auth_yaml: Option<&str>) -> Registry {
        let bin = require("docker-registry");
        let storage = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.path().display()
        );
        if let Some(users) = htpasswd {
            let htpasswd_bin = require("htpasswd");
            let file = config.path().join("htpasswd");
            for (i, (u, p)) in users.iter().enumerate() {
                let mut cmd = Command::new(&htpasswd_bin);
                cmd.arg("-bB");
                if i == 0 {
                    cmd.arg("-c");
                }
                let st = cmd
                    .arg(&file)
                    .arg(u)
                    .arg(p)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success(), "htpasswd failed");
            }
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ));
        }
        if let Some(auth) = auth_yaml {
            yaml.push_str(auth);
        }
        let cfg = config.path().join("config.yml");
        fs::write(&cfg, yaml).unwrap();
        let log = fs::File::create(config.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            // The registry reads REGISTRY_* variables as configuration
            // (REGISTRY_AUTH_FILE would become `auth: file:`).
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            addr,
            storage,
            _config: config,
        };
        reg.wait_ready();
        reg
    }

    /// Polls `/v2/` until the registry answers (200, or 401 with auth).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                if s.write_all(req.as_bytes()).is_ok() {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"HTTP/1.") {
                            return;
                        }
                    }
                }
            }
            // Waiting for the port to open is polling an event (the listen);
            // this only paces the polls.
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = fs::read_to_string(self._config.path().join("registry.log")).unwrap_or_default();
        panic!(
            "docker-registry did not answer on {} within 20s; its log:\n{log}",
            self.addr
        );
    }

    /// Pushes `oci:layout:tag` as `repo:tag` with skopeo (`--all` keeps an
    /// index as an index).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, creds: Option<&str>) {
        let skopeo = require("skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some(c) = creds {
            cmd.arg("--dest-creds").arg(c);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The file holding blob `digest` in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.storage
            .path()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every path in an ext4 image with type and content, via debugfs rdump.
pub fn ext4_listing(image: &Path) -> Vec<String> {
    let out = tempfile::tempdir().unwrap();
    let st = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", out.path().display()))
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let mut list = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for c in fs::read_dir(out.path().join(&rel)).unwrap() {
            let c = c.unwrap();
            let r = rel.join(c.file_name());
            if r == Path::new("lost+found") {
                continue;
            }
            let t = c.file_type().unwrap();
            let tag = if t.is_dir() {
                stack.push(r.clone());
                "/".to_owned()
            } else if t.is_symlink() {
                format!(" -> {}", fs::read_link(c.path()).unwrap().display())
            } else {
                format!(
                    " = {}",
                    String::from_utf8_lossy(&fs::read(c.path()).unwrap())
                )
            };
            list.push(format!("{}{tag}", r.display()));
        }
    }
    list.sort();
    list
}

/// Asserts the cache's temporary area is empty.
pub fn assert_tmp_empty(cache: &Path) {
    let tmp = cache.join("tmp");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}

/// Options for tests: the cache in `dir`, short timeouts.
pub fn options(dir: &Path) -> sbxrun_image::Options {
    let mut o = sbxrun_image::Options::new(dir);
    o.timeout = Duration::from_secs(10);
    o
}
