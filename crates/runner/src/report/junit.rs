//! `junit.xml`: one testsuite per job, one testcase per step instance, plus
//! the testcases of JUnit files the steps produced. Infrastructure faults
//! are errors, every other failure a failure, skips carry their reason.
//!
//! A step's egress section goes into its testcase as `key=value` lines at
//! the top of `system-out` (see [`egress_properties`]): junit-report 0.9
//! has no testcase `<properties>`.

use std::io::Write;
use std::path::Path;

use junit_report::{Report as JUnit, TestCase, TestResult, TestSuite};
use serde::Deserialize;

pub use super::events::Tails;
use super::model::{EgressReport, ImageReport, Report, StepReport, Verdict};

/// Errors of JUnit handling.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("cannot write JUnit XML")]
    Write(#[from] junit_report::Error),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JUnit XML: {reason}")]
    Parse { path: String, reason: String },
}

/// Removes characters XML 1.0 cannot carry (control characters other than
/// tab and newlines, surrogates cannot occur in `str`, U+FFFE/U+FFFF).
pub fn xml_safe(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect()
}

fn seconds(ms: f64) -> time::Duration {
    time::Duration::seconds_f64((ms / 1000.0).max(0.0))
}

fn step_case(manifest: &str, s: &StepReport) -> TestCase {
    let name = xml_safe(&s.name);
    // The step's own time: queueing behind other steps is not its cost;
    // a cached step took none.
    let time = if s.cached {
        time::Duration::ZERO
    } else {
        seconds(s.timings.total_ms - s.timings.queued_ms)
    };
    let message = xml_safe(s.message.as_deref().unwrap_or(""));
    let mut case = match s.verdict {
        Verdict::Passed => TestCase::success(&name, time),
        // The job treats it as passed, so CI tools must not count it as a
        // failure; system-out says what happened (see `build`).
        v if s.allow_failure && v.is_failure() => TestCase::success(&name, time),
        Verdict::Skipped | Verdict::Cancelled => {
            TestCase::skipped_with_cause(&name, s.verdict.label(), &message)
        }
        Verdict::Infra => TestCase::error(&name, time, "INFRA", &message),
        v => TestCase::failure(&name, time, v.label(), &message),
    };
    // The message also as the element's text: GitLab and others show the
    // body of <failure>/<error>, not its attribute.
    if let TestResult::Failure { cause, .. } | TestResult::Error { cause, .. } = &mut case.result {
        if !message.is_empty() {
            *cause = Some(message.clone());
        }
    }
    // Instances of one step (a matrix) group under the step's id, or
    // under what the step chose.
    case.set_classname(&xml_safe(s.junit_classname.as_deref().unwrap_or(&s.step)));
    // `file` names a file: a manifest read from standard input has none.
    if !manifest.is_empty() && manifest != "-" {
        case.set_filepath(&xml_safe(manifest));
    }
    case
}

/// A step's egress section as properties: `egress.policy`,
/// `egress.denied.<kind>` for each kind denied, and
/// `egress.events_not_kept` when the event list was capped. Empty when the
/// step had no network and nothing was denied (or never ran), so most
/// testcases stay as they were.
pub fn egress_properties(e: &EgressReport) -> Vec<(String, String)> {
    let networked = !e.policy.is_empty() && e.policy != "none";
    if !networked && e.total_denied() == 0 {
        return Vec::new();
    }
    let mut props = vec![("egress.policy".to_owned(), e.policy.clone())];
    props.extend(
        e.denied
            .iter()
            .map(|(kind, n)| (format!("egress.denied.{kind}"), n.to_string())),
    );
    if e.events_not_kept > 0 {
        props.push((
            "egress.events_not_kept".to_owned(),
            e.events_not_kept.to_string(),
        ));
    }
    props
}

/// A testcase's `system-out`: the step's properties, one `key=value` per
/// line and a blank line after them, then its stdout tail.
fn system_out(props: &[(String, String)], stdout: &str) -> Option<String> {
    if props.is_empty() {
        return (!stdout.is_empty()).then(|| xml_safe(stdout));
    }
    let mut out: String = props
        .iter()
        .map(|(k, v)| format!("{}={}\n", xml_safe(k), xml_safe(v)))
        .collect();
    if !stdout.is_empty() {
        out.push('\n');
        out.push_str(&xml_safe(stdout));
    }
    Some(out)
}

/// A step's root image as `key=value` lines: the reference the manifest
/// named and the manifest digest it ran, so a CI page shows which image a
/// moving tag meant that day.
fn image_properties(image: Option<&ImageReport>) -> Vec<(String, String)> {
    let Some(image) = image else {
        return Vec::new();
    };
    let mut props = vec![("image".to_owned(), image.reference.clone())];
    if let Some(digest) = &image.digest {
        props.push(("image.digest".to_owned(), digest.clone()));
    }
    props
}

/// A cache hit as `cached=true` with where the result came from, so a CI
/// page shows a step that did not run this time.
fn cache_properties(s: &StepReport) -> Vec<(String, String)> {
    let Some(c) = s.cache.as_ref().filter(|_| s.cached) else {
        return Vec::new();
    };
    let mut props = vec![("cached".to_owned(), "true".to_owned())];
    if let Some(at) = &c.stored_at {
        props.push(("cached.stored_at".to_owned(), at.clone()));
    }
    if let Some(ms) = c.original_ms {
        props.push((
            "cached.original_time".to_owned(),
            format!("{:.3}", ms / 1000.0),
        ));
    }
    if let Some(key) = &c.key {
        props.push(("cache.key".to_owned(), key.clone()));
    }
    props
}

/// Builds the JUnit document. `tails(name)` gives a step's output tails;
/// `extra(name)` the testcases merged from its own JUnit file.
pub fn build(
    report: &Report,
    tails: &dyn Fn(&str) -> Tails,
    extra: &dyn Fn(&str) -> Vec<TestCase>,
) -> JUnit {
    let mut suite = TestSuite::new(&xml_safe(&report.job.name));
    if let Ok(ts) = time::OffsetDateTime::parse(
        &report.started_at,
        &time::format_description::well_known::Rfc3339,
    ) {
        // Whole seconds: the Ant schema's timestamp has no fraction.
        suite.set_timestamp(ts.replace_nanosecond(0).unwrap_or(ts));
    }
    for s in &report.steps {
        let mut case = step_case(&report.job.manifest, s);
        let t = tails(&s.name);
        let mut props = Vec::new();
        if s.allow_failure && s.verdict.is_failure() {
            let what = match s.message.as_deref() {
                Some(m) => format!("{}: {m}", s.verdict.label()),
                None => s.verdict.label().to_owned(),
            };
            props.push(("allowed_failure".to_owned(), xml_safe(&what)));
        }
        props.extend(cache_properties(s));
        props.extend(image_properties(s.image.as_ref()));
        props.extend(egress_properties(&s.egress));
        if let Some(out) = system_out(&props, &t.stdout) {
            case.set_system_out(&out);
        }
        if !t.stderr.is_empty() {
            case.set_system_err(&xml_safe(&t.stderr));
        }
        suite.add_testcase(case);
        suite.add_testcases(extra(&s.name));
    }
    let mut junit = JUnit::new();
    junit.add_testsuite(suite);
    junit
}

/// Gives `<testsuites>` and the job's `<testsuite>` the run's wall time.
/// junit-report writes the sum of the testcases' times instead, which
/// counts parallel steps twice and queueing never; CI pages show the
/// suite's time as the job's duration.
pub fn with_run_time(xml: Vec<u8>, duration_ms: f64) -> Vec<u8> {
    let Ok(mut text) = String::from_utf8(xml) else {
        return Vec::new();
    };
    let secs = format!("{:.3}", (duration_ms / 1000.0).max(0.0));
    if let Some(at) = text.find("<testsuites>") {
        text.replace_range(
            at..at + "<testsuites>".len(),
            &format!("<testsuites time=\"{secs}\">"),
        );
    }
    if let Some(start) = text.find("<testsuite ") {
        let end = text[start..].find('>').map_or(text.len(), |e| start + e);
        if let Some(t) = text[start..end].find(" time=\"") {
            let value = start + t + " time=\"".len();
            if let Some(close) = text[value..end].find('"') {
                text.replace_range(value..value + close, &secs);
            }
        }
    }
    text.into_bytes()
}

/// Serialises the document.
pub fn to_bytes(junit: &JUnit) -> Result<Vec<u8>, JunitError> {
    let mut out = Vec::new();
    junit.write_xml(&mut out)?;
    let _ = out.flush();
    Ok(out)
}

#[derive(Debug, Deserialize, Default)]
struct XmlSuite {
    #[serde(rename = "testsuite", default)]
    suites: Vec<XmlSuite>,
    #[serde(rename = "testcase", default)]
    cases: Vec<XmlCase>,
}

#[derive(Debug, Deserialize)]
struct XmlCase {
    #[serde(rename = "@name", default)]
    name: String,
    #[serde(rename = "@classname", default)]
    classname: Option<String>,
    #[serde(rename = "@time", default)]
    time: Option<String>,
    #[serde(default)]
    failure: Option<XmlProblem>,
    #[serde(default)]
    error: Option<XmlProblem>,
    #[serde(default)]
    skipped: Option<XmlProblem>,
}

#[derive(Debug, Deserialize, Default)]
struct XmlProblem {
    #[serde(rename = "@message", default)]
    message: Option<String>,
    #[serde(rename = "@type", default)]
    kind: Option<String>,
}

fn flatten(suite: XmlSuite, out: &mut Vec<XmlCase>) {
    out.extend(suite.cases);
    for s in suite.suites {
        flatten(s, out);
    }
}

/// The testcases of a step's own JUnit file, named `<step> / <case>` so
/// they stay apart from the job's own testcases.
pub fn merge_file(path: &Path, step: &str) -> Result<Vec<TestCase>, JunitError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| JunitError::Read {
        path: shown.clone(),
        source,
    })?;
    // A step's file is its own business: cap what we parse.
    if text.len() > 16 << 20 {
        return Err(JunitError::Parse {
            path: shown,
            reason: "larger than 16 MiB".into(),
        });
    }
    let text = String::from_utf8_lossy(&text);
    let root: XmlSuite = quick_xml::de::from_str(&text).map_err(|e| JunitError::Parse {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut cases = Vec::new();
    flatten(root, &mut cases);
    Ok(cases
        .into_iter()
        .map(|c| {
            let name = xml_safe(&format!("{step} / {}", c.name));
            let time = c
                .time
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|t| t.is_finite())
                .map(|t| seconds(t * 1000.0))
                .unwrap_or(time::Duration::ZERO);
            let msg = |p: &XmlProblem| xml_safe(p.message.as_deref().unwrap_or(""));
            let kind = |p: &XmlProblem, d: &str| xml_safe(p.kind.as_deref().unwrap_or(d));
            let mut case = if let Some(p) = &c.error {
                TestCase::error(&name, time, &kind(p, "error"), &msg(p))
            } else if let Some(p) = &c.failure {
                TestCase::failure(&name, time, &kind(p, "failure"), &msg(p))
            } else if let Some(p) = &c.skipped {
                TestCase::skipped_with_cause(&name, &kind(p, "skipped"), &msg(p))
            } else {
                TestCase::success(&name, time)
            };
            if let Some(cn) = &c.classname {
                case.set_classname(&xml_safe(cn));
            }
            case
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_safe_strips_control_characters_but_keeps_text() {
        assert_eq!(xml_safe("a\u{1b}[31mb\u{0}\tc\n\u{FFFF}é"), "a[31mb\tc\né");
    }

    #[test]
    fn merge_file_reads_nested_suites_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.xml");
        std::fs::write(
            &p,
            r#"<?xml version="1.0"?>
<testsuites><testsuite name="s">
  <testcase name="ok" classname="m" time="0.5"/>
  <testcase name="bad"><failure message="boom" type="assert">trace</failure></testcase>
  <testsuite name="inner"><testcase name="skip"><skipped/></testcase></testsuite>
</testsuite></testsuites>"#,
        )
        .unwrap();
        let cases = merge_file(&p, "unit").unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].name(), "unit / ok");
        assert!(cases[0].is_success());
        assert!(cases[1].is_failure());
        assert!(cases[2].is_skipped());
    }

    #[test]
    fn testcases_time_the_step_group_by_step_and_carry_the_message_as_text() {
        use crate::report::model::{test_report, test_step};
        let mut queued = test_step("slow", EgressReport::default());
        queued.timings.queued_ms = 500.0;
        queued.timings.total_ms = 1700.0;
        let mut failed = test_step("t[case=a]", EgressReport::default());
        failed.step = "t".into();
        failed.verdict = Verdict::Failed;
        failed.message = Some("exit code 1".into());
        let mut allowed = test_step("flaky", EgressReport::default());
        allowed.verdict = Verdict::Failed;
        allowed.allow_failure = true;
        allowed.message = Some("exit code 3".into());
        let mut report = test_report(vec![queued, failed, allowed]);
        report.started_at = "2026-12-06T21:00:00.123456789Z".into();
        let junit = build(&report, &|_| Tails::default(), &|_| Vec::new());
        let xml = String::from_utf8(to_bytes(&junit).unwrap()).unwrap();
        assert!(
            xml.contains(r#"name="slow" time="1.2" classname="slow""#),
            "{xml}"
        );
        assert!(xml.contains(r#"classname="t""#), "{xml}");
        assert!(xml.contains("<![CDATA[exit code 1]]></failure>"), "{xml}");
        // An allowed failure is no failure to CI, but says what happened.
        assert!(xml.contains(r#"failures="1""#), "{xml}");
        assert!(xml.contains("allowed_failure=failed: exit code 3"), "{xml}");
        assert!(xml.contains(r#"timestamp="2026-12-06T21:00:00Z""#), "{xml}");
    }

    #[test]
    fn a_wrong_answer_is_a_failure_of_type_wrong_with_its_diff_as_text() {
        use crate::report::model::{test_report, test_step};
        let mut wrong = test_step("t[case=b]", EgressReport::default());
        wrong.verdict = Verdict::Wrong;
        wrong.message =
            Some("wrong answer (trim comparison): line 2: expected `4`, got `5`".into());
        let report = test_report(vec![wrong]);
        let xml = String::from_utf8(
            to_bytes(&build(&report, &|_| Tails::default(), &|_| Vec::new())).unwrap(),
        )
        .unwrap();
        assert!(xml.contains(r#"type="wrong""#), "{xml}");
        assert!(xml.contains(r#"failures="1""#), "{xml}");
        assert!(
            xml.contains("<![CDATA[wrong answer (trim comparison): line 2: expected `4`, got `5`]]></failure>"),
            "{xml}"
        );
    }

    #[test]
    fn a_step_may_choose_its_testcases_classname() {
        use crate::report::model::{test_report, test_step};
        let mut chosen = test_step("t[case=a]", EgressReport::default());
        chosen.step = "t".into();
        chosen.junit_classname = Some("grades.alice".into());
        let report = test_report(vec![chosen, test_step("build", EgressReport::default())]);
        let xml = String::from_utf8(
            to_bytes(&build(&report, &|_| Tails::default(), &|_| Vec::new())).unwrap(),
        )
        .unwrap();
        assert!(
            xml.contains(r#"name="t[case=a]" time="1.2" classname="grades.alice""#),
            "{xml}"
        );
        assert!(xml.contains(r#"classname="build""#), "{xml}");
    }

    #[test]
    fn a_manifest_from_standard_input_gives_no_file_attribute() {
        use crate::report::model::{test_report, test_step};
        let mut report = test_report(vec![test_step("a", EgressReport::default())]);
        let xml = |r: &Report| {
            String::from_utf8(to_bytes(&build(r, &|_| Tails::default(), &|_| Vec::new())).unwrap())
                .unwrap()
        };
        assert!(xml(&report).contains(r#"file="job.yaml""#));
        report.job.manifest = "-".into();
        assert!(!xml(&report).contains("file="), "{}", xml(&report));
    }

    #[test]
    fn the_suite_takes_the_runs_wall_time_not_the_sum_of_its_steps() {
        use crate::report::model::{test_report, test_step};
        // Two steps of 1.2 s each ran side by side in a 1.5 s run.
        let report = test_report(vec![
            test_step("a", EgressReport::default()),
            test_step("b", EgressReport::default()),
        ]);
        let junit = build(&report, &|_| Tails::default(), &|_| Vec::new());
        let summed = String::from_utf8(to_bytes(&junit).unwrap()).unwrap();
        assert!(summed.contains(r#"time="2.4""#), "{summed}");
        let xml =
            String::from_utf8(with_run_time(summed.into_bytes(), report.duration_ms)).unwrap();
        assert!(xml.contains(r#"<testsuites time="1.500">"#), "{xml}");
        let suite = &xml[xml.find("<testsuite ").unwrap()..];
        let suite = &suite[..suite.find('>').unwrap()];
        assert!(suite.ends_with(r#"time="1.500""#), "{suite}");
        // Testcases keep their own times.
        assert!(xml.contains(r#"name="a" time="1.2""#), "{xml}");
    }

    fn egress(policy: &str, denied: &[(&str, u64)], not_kept: u64) -> EgressReport {
        EgressReport {
            policy: policy.into(),
            denied: denied.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            events: Vec::new(),
            events_not_kept: not_kept,
        }
    }

    fn pairs(props: &[(String, String)]) -> Vec<(&str, &str)> {
        props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn egress_properties_name_the_policy_each_denied_kind_and_dropped_events() {
        let e = egress("allow", &[("dns-refused", 1), ("connect-denied", 2)], 5);
        assert_eq!(
            pairs(&egress_properties(&e)),
            [
                ("egress.policy", "allow"),
                ("egress.denied.connect-denied", "2"),
                ("egress.denied.dns-refused", "1"),
                ("egress.events_not_kept", "5"),
            ]
        );
        assert_eq!(
            pairs(&egress_properties(&egress("public", &[], 0))),
            [("egress.policy", "public")]
        );
    }

    #[test]
    fn egress_properties_are_left_out_without_network_or_denials() {
        assert!(egress_properties(&egress("none", &[], 0)).is_empty());
        assert!(egress_properties(&EgressReport::default()).is_empty());
        assert_eq!(
            pairs(&egress_properties(&egress(
                "none",
                &[("connect-denied", 1)],
                0
            ))),
            [
                ("egress.policy", "none"),
                ("egress.denied.connect-denied", "1")
            ]
        );
    }

    fn report(egress: EgressReport) -> Report {
        crate::report::model::test_report(vec![crate::report::model::test_step("fetch", egress)])
    }

    fn xml(r: &Report, stdout: &str) -> String {
        let stdout = stdout.to_owned();
        let tails = move |_: &str| Tails {
            stdout: stdout.clone(),
            ..Tails::default()
        };
        let junit = build(r, &tails, &|_| Vec::new());
        String::from_utf8(to_bytes(&junit).unwrap()).unwrap()
    }

    #[test]
    fn egress_properties_lead_the_testcase_system_out() {
        let r = report(egress("allow", &[("connect-denied", 3)], 0));
        let out = xml(&r, "hello\n");
        assert!(
            out.contains(
                "<system-out><![CDATA[egress.policy=allow\negress.denied.connect-denied=3\n\nhello\n]]></system-out>"
            ),
            "{out}"
        );
        let quiet = xml(&report(egress("none", &[], 0)), "");
        assert!(!quiet.contains("system-out"), "{quiet}");
    }

    #[test]
    fn merge_file_rejects_non_xml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.xml");
        std::fs::write(&p, "not <xml").unwrap();
        assert!(matches!(merge_file(&p, "s"), Err(JunitError::Parse { .. })));
    }
}
