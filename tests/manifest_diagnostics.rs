//! Every invalid fixture must fail with the diagnostic pinned in its
//! snapshot, so a worse message shows up in review.

use std::path::Path;

use sbxrun_runner::manifest::{self, render};
use sbxrun_runner::plan::{Plan, Selection};

/// What `sbxrun validate` prints for a manifest, without colour.
fn diagnose(path: &Path) -> Option<String> {
    match manifest::load(path) {
        Err(e) => Some(render(&e, true)),
        Ok(job) => match Plan::new(&job, &Selection::All) {
            Err(e) => Some(render(&e, true)),
            Ok(_) => None,
        },
    }
}

#[test]
fn invalid_manifests_render_pinned_diagnostics() {
    insta::glob!("../fixtures/manifests/invalid", "*.{yaml,kdl}", |path| {
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path);
        let rendered = std::env::set_current_dir(env!("CARGO_MANIFEST_DIR"))
            .ok()
            .and_then(|()| diagnose(rel));
        let Some(rendered) = rendered else {
            panic!("{} was accepted but is in invalid/", rel.display());
        };
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn there_are_at_least_forty_invalid_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests/invalid");
    let count = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let p = e.path();
                    matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "kdl"))
                })
                .count()
        })
        .unwrap_or(0);
    assert!(count >= 40, "only {count} invalid fixtures");
}

#[test]
fn missing_secrets_are_reported_at_run_time_with_their_place() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests/valid");
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).ok();
    let job = manifest::load(Path::new("fixtures/manifests/valid/full.yaml"));
    let job = match job {
        Ok(j) => j,
        Err(e) => panic!("{}: {}", dir.display(), render(&e, true)),
    };
    assert!(manifest::check_secrets(&job, |_| true).is_ok());
    let err = manifest::check_secrets(&job, |name| name != "API_TOKEN")
        .err()
        .map(|e| render(&e, true))
        .unwrap_or_default();
    insta::assert_snapshot!(err);
}
