//! Credentials from an auth file (`REGISTRY_AUTH_FILE`, as `skopeo login`
//! writes it). Its own test binary: it sets process environment variables,
//! which no other test may see change under it.

mod common;

use base64::Engine as _;
use common::*;
use sbxrun_image::{resolve, NoProgress};

#[test]
fn credentials_come_from_registry_auth_file() {
    let reg = Registry::start(Some(&[("tester", "s3cret-pw")]));
    let layout = tempfile::tempdir().unwrap();
    add_image(
        layout.path(),
        "v1",
        &[gz_layer(&[E::File("private", b"p")])],
        "amd64",
    );
    reg.push(layout.path(), "v1", "private/app", Some("tester:s3cret-pw"));
    let cache = tempfile::tempdir().unwrap();
    let auth = cache.path().join("auth.json");
    let token = base64::engine::general_purpose::STANDARD.encode(b"tester:s3cret-pw");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{}":{{"auth":"{token}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    std::env::set_var("REGISTRY_AUTH_FILE", &auth);
    let name = format!("{}/private/app:v1", reg.addr);
    let image = resolve(&name, &options(cache.path()), &NoProgress).unwrap();
    assert!(ext4_listing(&image.ext4).contains(&"private = p".to_owned()));
}
