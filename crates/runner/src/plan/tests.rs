//! Plan behaviour on small jobs written inline.

use std::collections::HashMap;

use super::*;
use crate::manifest::{load_source, Job, SourceFile, Syntax};

fn job(yaml: &str) -> Job {
    let src = SourceFile::new("t.yaml", yaml.to_owned(), ".".into(), Syntax::Yaml);
    match load_source(src) {
        Ok(j) => j,
        Err(e) => panic!("{}", crate::manifest::render(&e, true)),
    }
}

fn plan(yaml: &str) -> Plan {
    Plan::new(&job(yaml), &Selection::All).unwrap_or_else(|e| panic!("{e}"))
}

fn names(p: &Plan, ids: &[InstanceId]) -> Vec<String> {
    ids.iter().map(|i| p.instance(*i).name.clone()).collect()
}

const DIAMOND: &str = "
name: d
steps:
  build: { run: make, outputs: [out] }
  test:
    inputs: [{ step: build }]
    matrix: { case: [a, b], opt: [0, 2] }
    run: ./t ${{ matrix.case }} -O${{ matrix.opt }}
    env: { CASE: '${{ matrix.case }}' }
    outputs: ['res/${{ matrix.case }}-${{ matrix.opt }}']
  report: { needs: [test], run: echo }
  notify: { needs: [report], if: failure(), run: echo }
  cleanup: { needs: [test], if: always(), run: echo }
";

#[test]
fn matrix_expands_to_stable_ids_with_values_substituted() {
    let p = plan(DIAMOND);
    let all: Vec<&str> = p.instances().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        all,
        [
            "build",
            "test[case=a,opt=0]",
            "test[case=a,opt=2]",
            "test[case=b,opt=0]",
            "test[case=b,opt=2]",
            "report",
            "notify",
            "cleanup"
        ]
    );
    let t = p.instance(p.find("test[case=b,opt=2]").unwrap_or(InstanceId(0)));
    assert_eq!(t.command, Command::Shell("./t b -O2".into()));
    assert_eq!(t.env.get("CASE").map(String::as_str), Some("b"));
    assert_eq!(t.outputs, ["res/b-2"]);
    assert!(matches!(&t.inputs[0], PlannedInput::Step { from, .. } if from == &[InstanceId(0)]));
}

#[test]
fn fan_in_waits_for_every_instance_and_order_is_topological() {
    let p = plan(DIAMOND);
    let report = p.find("report").unwrap_or(InstanceId(0));
    assert_eq!(p.instance(report).deps.len(), 4);
    let pos: HashMap<InstanceId, usize> = p
        .topological_order()
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    for (i, inst) in p.instances().iter().enumerate() {
        for d in &inst.deps {
            assert!(
                pos[d] < pos[&InstanceId(i)],
                "{} before its dependency",
                inst.name
            );
        }
    }
    assert_eq!(p.width(), 4);
}

#[test]
fn cycles_are_rejected_naming_the_whole_cycle() {
    let j = job("name: c\nsteps:\n  a: { needs: [b], run: x }\n  b: { needs: [c], run: x }\n  c: { needs: [a], run: x }\n  d: { run: x }\n");
    let err = Plan::new(&j, &Selection::All).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("steps.a: dependency cycle: a → b → c → a")
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    let j = job("name: c\nsteps:\n  a: { needs: [a], run: x }\n");
    let err = Plan::new(&j, &Selection::All).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("steps.a: dependency cycle: a → a"));
}

#[test]
fn only_pulls_in_dependencies_and_nothing_else() {
    let j = job(DIAMOND);
    let p =
        Plan::new(&j, &Selection::Only(vec!["report".into()])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.len(), 6);
    assert!(p.find("notify").is_none() && p.find("cleanup").is_none());
    let p = Plan::new(&j, &Selection::Only(vec!["test[case=a,opt=0]".into()]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names(&p, p.topological_order()),
        ["build", "test[case=a,opt=0]"]
    );
    assert_eq!(p.instance(InstanceId(1)).deps, [InstanceId(0)]);
}

#[test]
fn only_with_an_unknown_step_suggests_one() {
    let j = job(DIAMOND);
    match Plan::new(&j, &Selection::Only(vec!["reprot".into()])) {
        Err(PlanError::UnknownSelection { suggestion, .. }) => {
            assert_eq!(suggestion.as_deref(), Some("report"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn ready_starts_roots_then_dependents_as_they_finish() {
    let p = plan(DIAMOND);
    let mut done = HashMap::new();
    assert_eq!(names(&p, &p.ready(&done).run), ["build"]);
    done.insert(InstanceId(0), Outcome::Succeeded);
    assert_eq!(p.ready(&done).run.len(), 4);
    for i in 1..5 {
        done.insert(InstanceId(i), Outcome::Succeeded);
    }
    let r = p.ready(&done);
    assert_eq!(names(&p, &r.run), ["report", "cleanup"]);
    done.insert(
        p.find("report").unwrap_or(InstanceId(0)),
        Outcome::Succeeded,
    );
    // Nothing failed, so the failure() step is skipped.
    assert_eq!(names(&p, &p.ready(&done).skip), ["notify"]);
}

#[test]
fn ready_skips_success_dependents_and_runs_failure_and_always_after_a_failure() {
    let p = plan(DIAMOND);
    let mut done = HashMap::new();
    done.insert(InstanceId(0), Outcome::Succeeded);
    done.insert(InstanceId(1), Outcome::Failed);
    for i in 2..5 {
        done.insert(InstanceId(i), Outcome::Succeeded);
    }
    let r = p.ready(&done);
    assert_eq!(names(&p, &r.skip), ["report"]);
    assert_eq!(names(&p, &r.run), ["cleanup"]);
    done.insert(p.find("report").unwrap_or(InstanceId(0)), Outcome::Skipped);
    assert_eq!(names(&p, &p.ready(&done).run), ["notify", "cleanup"]);
}

#[test]
fn allowed_failures_count_as_success_for_dependents() {
    let p = plan("name: a\nsteps:\n  flaky: { run: x, allow_failure: true }\n  next: { needs: [flaky], run: x }\n");
    let done = HashMap::from([(InstanceId(0), Outcome::Failed)]);
    assert_eq!(names(&p, &p.ready(&done).run), ["next"]);
}

#[test]
fn progress_propagates_skips_down_a_long_chain_without_recursion() {
    let mut yaml = String::from("name: chain\nsteps:\n  s0: { run: x }\n");
    for i in 1..20_000 {
        yaml.push_str(&format!("  s{i}: {{ needs: [s{}], run: x }}\n", i - 1));
    }
    yaml.push_str("  last: { needs: [s19999], if: failure(), run: x }\n");
    let p = plan(&yaml);
    let mut progress = Progress::new(&p);
    assert_eq!(names(&p, &progress.start().run), ["s0"]);
    let r = progress.finish(InstanceId(0), Outcome::Failed);
    assert_eq!(r.skip.len(), 19_999);
    assert_eq!(names(&p, &r.run), ["last"]);
    assert!(!progress.is_done());
    progress.finish(p.find("last").unwrap_or(InstanceId(0)), Outcome::Succeeded);
    assert!(progress.is_done());
}

#[test]
fn progress_and_ready_agree() {
    let p = plan(DIAMOND);
    let mut progress = Progress::new(&p);
    let mut done = HashMap::new();
    let mut queue = progress.start().run;
    while let Some(id) = queue.pop() {
        assert!(p.ready(&done).run.contains(&id));
        let outcome = if p.instance(id).name == "test[case=a,opt=2]" {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        done.insert(id, outcome);
        let r = progress.finish(id, outcome);
        for s in &r.skip {
            done.insert(*s, Outcome::Skipped);
        }
        queue.extend(r.run);
    }
    assert!(progress.is_done());
    assert_eq!(done.len(), p.len());
    assert_eq!(
        progress.outcome(p.find("report").unwrap_or(InstanceId(0))),
        Some(Outcome::Skipped)
    );
    // A test instance failed upstream of notify, so its failure() holds.
    assert_eq!(
        progress.outcome(p.find("notify").unwrap_or(InstanceId(0))),
        Some(Outcome::Succeeded)
    );
    assert_eq!(
        progress.outcome(p.find("cleanup").unwrap_or(InstanceId(0))),
        Some(Outcome::Succeeded)
    );
}

#[test]
fn graph_renders_in_each_format() {
    let p = plan(DIAMOND);
    let text = p.render(Format::Text);
    assert!(text.starts_with("job d: 8 instances, 4 levels\n"), "{text}");
    assert!(text.contains("  report  <- test[case=a,opt=0], test[case=a,opt=2]"));
    let dot = p.render(Format::Dot);
    assert!(dot.contains("\"build\" -> \"test[case=a,opt=0]\";"));
    let mermaid = p.render(Format::Mermaid);
    assert!(mermaid.contains("n0 --> n1"));
}

#[test]
fn host_inputs_take_each_instances_matrix_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("subs")).unwrap();
    for who in ["alice", "bob"] {
        std::fs::write(dir.path().join(format!("subs/{who}.py")), "print(1)").unwrap();
    }
    let yaml = "
name: grade
steps:
  grade:
    matrix: { sub: [alice, bob] }
    inputs: [{ host: 'subs/${{ matrix.sub }}.py', to: sub.py }]
    run: python3 sub.py
";
    let src = SourceFile::new(
        "g.yaml",
        yaml.to_owned(),
        dir.path().to_owned(),
        Syntax::Yaml,
    );
    let job = load_source(src).unwrap_or_else(|e| panic!("{}", crate::manifest::render(&e, true)));
    let p = Plan::new(&job, &Selection::All).unwrap();
    let hosts: Vec<std::path::PathBuf> = p
        .instances()
        .iter()
        .flat_map(|i| &i.inputs)
        .filter_map(|i| match i {
            PlannedInput::Host { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        hosts,
        vec![
            dir.path().join("subs/alice.py"),
            dir.path().join("subs/bob.py")
        ]
    );
}
