//! Which steps are cacheable by default, and what the settings change.

use super::*;
use crate::manifest::{load_source, SourceFile, Syntax};
use crate::plan::{InstanceId, Plan, Selection};

fn instance(step: &str) -> Instance {
    let yaml = format!("name: e\nsteps:\n  s:\n    run: make\n{step}");
    let src = SourceFile::new("t.yaml", yaml, ".".into(), Syntax::Yaml);
    let job = load_source(src).unwrap_or_else(|e| panic!("{}", crate::manifest::render(&e, true)));
    let plan = Plan::new(&job, &Selection::All).unwrap();
    plan.instance(InstanceId(0)).clone()
}

#[test]
fn hermetic_steps_are_cached_by_default_and_the_rest_on_request() {
    assert_eq!(eligible(&instance("")), Ok(false));
    assert_eq!(
        eligible(&instance("    cache: { failures: true }\n")),
        Ok(true)
    );
    let why = eligible(&instance("    cache: false\n")).unwrap_err();
    assert!(why.contains("cache: false"), "{why}");

    let net = "    egress: { allow: [example.org] }\n";
    let why = eligible(&instance(net)).unwrap_err();
    assert!(
        why.contains("network") && why.contains("cache: true"),
        "{why}"
    );
    assert_eq!(
        eligible(&instance(&format!("{net}    cache: true\n"))),
        Ok(false)
    );

    // The whole internet: never. A step's own `cache: true` is a manifest
    // error; a job-wide one does not apply.
    let why = eligible(&instance("    egress: public\n")).unwrap_err();
    assert!(why.contains("internet"), "{why}");
    let yaml = "name: e\ndefaults: { cache: true }\nsteps:\n  s: { run: x, egress: public }\n";
    let src = SourceFile::new("t.yaml", yaml.into(), ".".into(), Syntax::Yaml);
    let job = load_source(src).unwrap();
    let plan = Plan::new(&job, &Selection::All).unwrap();
    assert!(eligible(plan.instance(InstanceId(0))).is_err());

    for cond in ["always()", "failure()"] {
        let step = format!("    if: {cond}\n");
        assert!(eligible(&instance(&step)).is_err(), "{cond}");
        assert!(eligible(&instance(&format!("{step}    cache: true\n"))).is_ok());
    }
}

#[test]
fn defaults_cache_applies_unless_the_step_says_otherwise() {
    let yaml = "name: e\ndefaults: { cache: false }\nsteps:\n  a: { run: x }\n  b: { run: x, cache: true }\n";
    let src = SourceFile::new("t.yaml", yaml.into(), ".".into(), Syntax::Yaml);
    let job = load_source(src).unwrap();
    let plan = Plan::new(&job, &Selection::All).unwrap();
    assert!(eligible(plan.instance(InstanceId(0))).is_err());
    assert_eq!(eligible(plan.instance(InstanceId(1))), Ok(false));
}
