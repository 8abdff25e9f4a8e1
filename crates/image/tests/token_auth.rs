//! Bearer-token auth: the registry sends clients to a token server (one
//! this test runs on 127.0.0.1) that checks a user's password and signs a
//! JWT with a key the registry trusts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use sbxrun_image::{resolve, Credentials, ErrorKind, NoProgress, Secret};

const USER: &str = "tokenuser";
const PASSWORD: &str = "t0ken-pw";

/// A self-signed RSA key and certificate, made with openssl.
fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let openssl = require("openssl");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let st = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=token-issuer",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req failed");
    (key, cert)
}

fn cert_der(cert: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// An RS256 JWT granting `actions` on `repo`.
fn sign(key: &Path, x5c: &str, repo: &str, actions: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let access: Vec<serde_json::Value> = if repo.is_empty() {
        vec![]
    } else {
        vec![serde_json::json!({"type": "repository", "name": repo, "actions": actions})]
    };
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": USER, "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now - 10, "jti": format!("{now}-{repo}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

/// Serves `GET /token?scope=…` on `listener`: 401 without the right
/// password, else a token for the requested repository and actions.
fn serve_tokens(listener: TcpListener, key: PathBuf, x5c: String) {
    let expected = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    for stream in listener.incoming().take(64) {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        let mut authorized = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") && value.trim() == expected {
                    authorized = true;
                }
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let scope = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("scope="))
            .map(|s| {
                s.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
            })
            .unwrap_or_default();
        let mut parts = scope.splitn(3, ':');
        let (_, repo, actions) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let response = if authorized {
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            let token = sign(&key, &x5c, repo, &actions);
            let body = serde_json::json!({"token": token, "access_token": token}).to_string();
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        } else {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = stream.write_all(response.as_bytes());
    }
}

#[test]
fn token_auth_registry_needs_credentials_for_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = keypair(dir.path());
    let x5c = STANDARD.encode(cert_der(&cert));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || serve_tokens(listener, key, x5c));
    let reg = Registry::start_with_auth(&format!(
        "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        cert.display()
    ));
    let layout = tempfile::tempdir().unwrap();
    add_image(
        layout.path(),
        "v1",
        &[gz_layer(&[E::File("secret", b"s")])],
        "amd64",
    );
    reg.push(
        layout.path(),
        "v1",
        "tok/app",
        Some(&format!("{USER}:{PASSWORD}")),
    );

    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}/tok/app:v1", reg.addr);
    let mut opts = options(cache.path());
    let err = resolve(&name, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::Unauthorized {
                had_credentials: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_tmp_empty(cache.path());

    opts.credentials = vec![(
        reg.addr.clone(),
        Credentials {
            username: USER.into(),
            password: Secret::new(PASSWORD),
        },
    )];
    let image = resolve(&name, &opts, &NoProgress).unwrap();
    assert!(ext4_listing(&image.ext4).contains(&"secret = s".to_owned()));
}
