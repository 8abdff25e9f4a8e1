use super::*;

fn reg(s: &str) -> RegistryRef {
    parse_registry_ref(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn never(_: &Path) -> bool {
    false
}

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn docker_hub_short_names_are_normalised() {
    for (input, canonical) in [
        ("python:3.12", "docker.io/library/python:3.12"),
        ("python", "docker.io/library/python:latest"),
        ("library/python", "docker.io/library/python:latest"),
        ("docker.io/python:3", "docker.io/library/python:3"),
        (
            "index.docker.io/library/debian:12",
            "docker.io/library/debian:12",
        ),
        ("user/app:v1", "docker.io/user/app:v1"),
        ("user/team/app", "docker.io/user/team/app:latest"),
    ] {
        assert_eq!(reg(input).canonical(), canonical, "{input}");
    }
}

#[test]
fn registry_hosts_and_ports_are_recognised() {
    let r = reg("127.0.0.1:5000/repo:tag");
    assert_eq!(r.registry, "127.0.0.1:5000");
    assert_eq!(r.repository, "repo");
    assert_eq!(r.tag.as_deref(), Some("tag"));
    let r = reg("localhost/app");
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str()),
        ("localhost", "app")
    );
    let r = reg("localhost:5000/a/b");
    assert_eq!(r.canonical(), "localhost:5000/a/b:latest");
    let r = reg("ghcr.io/owner/tool:1.2.3");
    assert_eq!(r.canonical(), "ghcr.io/owner/tool:1.2.3");
    // A host is lowercased; a first component without `.`/`:` is a namespace.
    assert_eq!(reg("Quay.IO/x/y").registry, "quay.io");
    assert_eq!(reg("myhost/app").registry, "docker.io");
}

#[test]
fn digests_pin_the_manifest() {
    let r = reg(&format!("python@{D}"));
    assert_eq!(r.tag, None);
    assert_eq!(r.digest.as_deref(), Some(D));
    assert_eq!(r.canonical(), format!("docker.io/library/python@{D}"));
    let r = reg(&format!("host:5000/a:1@{D}"));
    assert_eq!(r.canonical(), format!("host:5000/a:1@{D}"));
}

#[test]
fn bad_references_say_what_is_wrong() {
    for (input, needle) in [
        ("Python:3", "must be lowercase"),
        ("python:", "tag \"\""),
        ("python:-x", "tag"),
        ("python@sha256:abc", "64"),
        ("python@md5:0123", "sha256"),
        ("host:99999/a", "port"),
        ("a//b", "empty path component"),
        ("-a", "start and end"),
        ("a..b", "separator"),
        (":tag", "no repository"),
    ] {
        let err = parse_registry_ref(input).unwrap_err().to_string();
        assert!(err.contains(needle), "{input}: {err}");
        assert!(
            err.contains(input),
            "{input}: error does not quote the input: {err}"
        );
    }
    assert_eq!(parse_source("  ", never), Err(ReferenceError::Empty));
}

#[test]
fn transports_are_parsed() {
    assert_eq!(
        parse_source("oci:/tmp/layout:v1", never).unwrap(),
        ImageSource::OciLayout {
            path: "/tmp/layout".into(),
            tag: Some("v1".into())
        }
    );
    assert_eq!(
        parse_source("oci:layout", never).unwrap(),
        ImageSource::OciLayout {
            path: "layout".into(),
            tag: None
        }
    );
    assert_eq!(
        parse_source("oci-archive:img.tar:latest", never).unwrap(),
        ImageSource::OciArchive {
            path: "img.tar".into(),
            tag: Some("latest".into())
        }
    );
    assert_eq!(
        parse_source("docker-archive:save.tar", never).unwrap(),
        ImageSource::DockerArchive {
            path: "save.tar".into(),
            reference: None
        }
    );
    let ImageSource::DockerArchive { reference, .. } =
        parse_source("docker-archive:save.tar:busybox:1", never).unwrap()
    else {
        panic!("not a docker archive");
    };
    assert_eq!(
        reference.unwrap().canonical(),
        "docker.io/library/busybox:1"
    );
    assert_eq!(
        parse_source("docker://alpine", never).unwrap(),
        ImageSource::Registry(reg("alpine"))
    );
    let err = parse_source("oci:", never).unwrap_err();
    assert!(
        err.to_string().contains("names no path after oci:"),
        "{err}"
    );
    let err = parse_source("oci:dir:bad tag", never).unwrap_err();
    assert!(err.to_string().contains("tag"), "{err}");
}

#[test]
fn paths_stay_paths() {
    for input in ["/srv/rootfs.ext4", "./rootfs", "../images/x", "~/r", "."] {
        assert_eq!(
            parse_source(input, never).unwrap(),
            ImageSource::Path(input.into()),
            "{input}"
        );
    }
    // A bare name that exists on disk is the file, not docker.io/library/rootfs.
    assert_eq!(
        parse_source("rootfs", |p: &Path| p == Path::new("rootfs")).unwrap(),
        ImageSource::Path("rootfs".into())
    );
    assert!(matches!(
        parse_source("rootfs", never).unwrap(),
        ImageSource::Registry(_)
    ));
}

#[test]
fn canonical_names_of_sources() {
    assert_eq!(
        parse_source("oci:/l:v1", never).unwrap().canonical(),
        "oci:/l:v1"
    );
    assert_eq!(
        parse_source("python:3.12", never).unwrap().canonical(),
        "docker.io/library/python:3.12"
    );
}
