//! Checks that need the whole job: references between steps, paths,
//! matrix expressions, value ranges. Every problem found is reported, not
//! just the first. Cycles are found by the plan, which owns the graph.

use std::fmt::Display;

use globset::GlobBuilder;

use super::cache::CacheSetting;
use super::de::Spanned;
use super::egress::Egress;
use super::error::{did_you_mean, Problem};
use super::interpolate::{expressions, substitute, Expr};
use super::model::{Defaults, Input, Job, Limits, Resources, Step, StepId};
use super::resolve::ImageRef;
use super::source::{SourceFile, Span};
use super::units::{ByteSize, Duration};

mod paths;

const KI: u64 = 1024;
const MI: u64 = KI * KI;
const GI: u64 = MI * KI;

/// Allowed range of `timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::secs(1), Duration::secs(7 * 86_400));
/// Allowed range of `resources.vcpus`.
pub const VCPUS_RANGE: (u32, u32) = (1, 64);
/// Allowed range of `resources.memory`.
pub const MEMORY_RANGE: (ByteSize, ByteSize) = (ByteSize(32 * MI), ByteSize(256 * GI));
/// Allowed range of `resources.disk`.
pub const DISK_RANGE: (ByteSize, ByteSize) = (ByteSize(16 * MI), ByteSize(1024 * GI));
/// Allowed range of `retries`.
pub const RETRIES_RANGE: (u32, u32) = (0, 10);
/// Allowed range of `concurrency`.
pub const CONCURRENCY_RANGE: (u32, u32) = (1, 1024);
/// Allowed range of `limits.pids`.
pub const PIDS_RANGE: (u32, u32) = (16, 1 << 20);
/// Allowed range of `limits.open_files`.
pub const OPEN_FILES_RANGE: (u32, u32) = (16, 1 << 20);
/// Allowed range of `limits.output`.
pub const OUTPUT_RANGE: (ByteSize, ByteSize) = (ByteSize(KI), ByteSize(GI));
/// Allowed range of `limits.file_size`.
pub const FILE_SIZE_RANGE: (ByteSize, ByteSize) = (ByteSize(KI), ByteSize(1024 * GI));
/// Allowed range of `limits.cpu_time`.
pub const CPU_TIME_RANGE: (Duration, Duration) = (Duration::millis(10), Duration::secs(7 * 86_400));
/// Allowed range of `limits.memory` (and it must be below the VM's memory).
pub const MEMORY_LIMIT_RANGE: (ByteSize, ByteSize) = (ByteSize(4 * MI), ByteSize(256 * GI));
/// The VM's memory when no `resources.memory` is given.
const DEFAULT_VM_MEMORY: ByteSize = ByteSize(512 * MI);
/// Most instances one step's matrix may expand to.
pub const MAX_MATRIX_INSTANCES: usize = 1024;

/// Most instances' host paths checked for one host input with matrix
/// values in it.
const MAX_HOST_PATH_CHECKS: usize = MAX_MATRIX_INSTANCES;

/// Runs every check; returns the problems found (empty when valid).
pub fn validate(job: &Job) -> Vec<Problem> {
    let mut v = Validator {
        job,
        src: &job.source,
        problems: Vec::new(),
    };
    v.job();
    v.problems
}

struct Validator<'a> {
    job: &'a Job,
    src: &'a SourceFile,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn job(&mut self) {
        let job = self.job;
        if job.name.trim().is_empty() {
            self.push(
                Problem::new(
                    "manifest::empty",
                    "the job name is empty",
                    job.name.span,
                    "empty",
                )
                .with_field("name"),
            );
        }
        if job.steps.is_empty() {
            self.push(
                Problem::new(
                    "manifest::no_steps",
                    "the job has no steps",
                    job.name.span,
                    "this job",
                )
                .with_field("steps"),
            );
        }
        if let Some(c) = &job.concurrency {
            self.range(c, CONCURRENCY_RANGE, "concurrency", "concurrency".into());
        }
        self.defaults(&job.defaults);
        for (name, value) in &job.env {
            self.expressions(value, &[], "the job-wide `env`", &format!("env.{name}"));
        }
        for (id, step) in &job.steps {
            self.step(id, step);
        }
    }

    fn defaults(&mut self, d: &Defaults) {
        if let Some(i) = &d.image {
            self.image(i, "defaults.image");
        }
        if let Some(t) = &d.timeout {
            self.range(t, TIMEOUT_RANGE, "timeout", "defaults.timeout".into());
        }
        if let Some(r) = &d.resources {
            self.resources(r, "defaults.resources");
        }
        if let Some(l) = &d.limits {
            self.limits(l, "defaults.limits");
        }
        if let Some(r) = &d.retries {
            self.range(r, RETRIES_RANGE, "retries", "defaults.retries".into());
        }
    }

    fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        v: &Spanned<T>,
        (min, max): (T, T),
        what: &str,
        field: String,
    ) {
        if v.value < min || v.value > max {
            self.push(
                Problem::new(
                    "manifest::out_of_range",
                    format!("{what} {} is out of range", v.value),
                    v.span,
                    format!("must be between {min} and {max}"),
                )
                .with_field(field),
            );
        }
    }

    fn resources(&mut self, r: &Resources, at: &str) {
        if let Some(v) = &r.vcpus {
            self.range(v, VCPUS_RANGE, "vcpus", format!("{at}.vcpus"));
        }
        if let Some(v) = &r.memory {
            self.range(v, MEMORY_RANGE, "memory", format!("{at}.memory"));
        }
        if let Some(v) = &r.disk {
            self.range(v, DISK_RANGE, "disk", format!("{at}.disk"));
        }
    }

    fn limits(&mut self, l: &Limits, at: &str) {
        if let Some(v) = &l.pids {
            self.range(v, PIDS_RANGE, "pids", format!("{at}.pids"));
        }
        if let Some(v) = &l.open_files {
            self.range(
                v,
                OPEN_FILES_RANGE,
                "open_files",
                format!("{at}.open_files"),
            );
        }
        if let Some(v) = &l.output {
            self.range(v, OUTPUT_RANGE, "output", format!("{at}.output"));
        }
        if let Some(v) = &l.file_size {
            self.range(v, FILE_SIZE_RANGE, "file_size", format!("{at}.file_size"));
        }
        if let Some(v) = &l.cpu_time {
            self.range(v, CPU_TIME_RANGE, "cpu_time", format!("{at}.cpu_time"));
        }
        if let Some(v) = &l.memory {
            self.range(v, MEMORY_LIMIT_RANGE, "memory", format!("{at}.memory"));
        }
    }

    /// `limits.memory` must leave room in the VM: the limit of the step (its
    /// own or the default) against the VM's memory (its own, the default,
    /// or 512MiB). Reported where the limit is written, once.
    fn memory_limit(&mut self, step: &Step, at: &str) {
        let d = &self.job.defaults;
        let limit = |l: &Option<Limits>| l.as_ref().and_then(|l| l.memory.clone());
        let (limit, field) = match (limit(&step.limits), limit(&d.limits)) {
            (Some(l), _) => (l, format!("{at}.limits.memory")),
            (None, Some(l)) => (l, "defaults.limits.memory".to_owned()),
            (None, None) => return,
        };
        let vm =
            |r: &Option<Resources>| r.as_ref().and_then(|r| r.memory.as_ref().map(|m| m.value));
        let vm = vm(&step.resources)
            .or_else(|| vm(&d.resources))
            .unwrap_or(DEFAULT_VM_MEMORY);
        if limit.value < vm {
            return;
        }
        let p = Problem::new(
            "manifest::memory_limit",
            format!(
                "memory limit {} is not below the VM's memory ({vm})",
                limit.value
            ),
            limit.span,
            "must be below `resources.memory`",
        )
        .with_field(field)
        .with_help(
            "lower `limits.memory` or raise `resources.memory`; the guest kernel needs \
             some of the VM's memory too",
        );
        let seen = self
            .problems
            .iter()
            .any(|q| q.code == p.code && q.span == p.span);
        if !seen {
            self.push(p);
        }
    }

    /// `stdin` is a path in the work dir; `expect.stdout` a host file.
    fn grading(&mut self, id: &StepId, step: &Step, keys: &[&str], at: &str) {
        let what = format!("step `{id}`");
        if let Some(stdin) = &step.stdin {
            let field = format!("{at}.stdin");
            self.expressions(stdin, keys, &what, &field);
            self.rel_path(stdin, "stdin", &field, false);
        }
        if let Some(expect) = &step.expect {
            let field = format!("{at}.expect.stdout");
            let file = &expect.stdout;
            self.expressions(file, keys, &what, &field);
            self.host_paths(step, file, "expected output", &field);
        }
    }

    fn step(&mut self, id: &Spanned<StepId>, step: &Step) {
        let at = format!("steps.{id}");
        let keys: Vec<&str> = step.matrix.keys().map(|k| k.as_str()).collect();
        let image = step.image.as_ref().or(self.job.defaults.image.as_ref());
        let container_image = image.is_some_and(|i| {
            matches!(
                ImageRef::classify(i.as_str(), &self.src.dir),
                ImageRef::Container(_)
            )
        });
        match (&step.run, &step.command) {
            // A container image's Entrypoint and Cmd are the command.
            (None, None) if container_image => {}
            (None, None) => self.push(
                Problem::new(
                    "manifest::no_command",
                    format!("step `{id}` has neither `run` nor `command`"),
                    id.span,
                    "this step",
                )
                .with_field(at.clone())
                .with_help("add `run: <shell script>` or `command: [program, args...]`"),
            ),
            (Some(run), Some(_)) => self.push(
                Problem::new(
                    "manifest::run_and_command",
                    format!("step `{id}` has both `run` and `command`"),
                    run.span,
                    "`run` given here",
                )
                .with_field(at.clone())
                .with_help("keep one: `run` is a shell script, `command` a program and arguments"),
            ),
            (None, Some(cmd)) if cmd.is_empty() => self.push(
                Problem::new(
                    "manifest::empty_command",
                    format!("step `{id}` has an empty `command`"),
                    id.span,
                    "this step",
                )
                .with_field(format!("{at}.command")),
            ),
            _ => {}
        }
        self.cache(step, &at);
        if let Some(run) = &step.run {
            self.expressions(run, &keys, &format!("step `{id}`"), &format!("{at}.run"));
        }
        for (i, arg) in step.command.iter().flatten().enumerate() {
            self.expressions(
                arg,
                &keys,
                &format!("step `{id}`"),
                &format!("{at}.command[{i}]"),
            );
        }
        for (name, value) in &step.env {
            self.expressions(
                value,
                &keys,
                &format!("step `{id}`"),
                &format!("{at}.env.{name}"),
            );
        }
        for (i, need) in step.needs.iter().enumerate() {
            self.step_ref(need, &format!("{at}.needs[{i}]"));
        }
        for (i, input) in step.inputs.iter().enumerate() {
            self.input(id, step, input, &keys, &format!("{at}.inputs[{i}]"));
        }
        for (i, out) in step.outputs.iter().enumerate() {
            let field = format!("{at}.outputs[{i}]");
            self.expressions(out, &keys, &format!("step `{id}`"), &field);
            self.rel_path(out, "output", &field, true);
        }
        if let Some(c) = &step.junit_classname {
            let field = format!("{at}.junit_classname");
            self.expressions(c, &keys, &format!("step `{id}`"), &field);
        }
        if let Some(j) = &step.junit {
            let field = format!("{at}.junit");
            self.expressions(j, &keys, &format!("step `{id}`"), &field);
            self.rel_path(j, "junit", &field, false);
        }
        self.matrix(id, step, &at);
        self.secrets(step, &at);
        if let Some(i) = &step.image {
            self.image(i, &format!("{at}.image"));
        }
        if let Some(t) = &step.timeout {
            self.range(t, TIMEOUT_RANGE, "timeout", format!("{at}.timeout"));
        }
        if let Some(r) = &step.retries {
            self.range(r, RETRIES_RANGE, "retries", format!("{at}.retries"));
        }
        if let Some(r) = &step.resources {
            self.resources(r, &format!("{at}.resources"));
        }
        if let Some(l) = &step.limits {
            self.limits(l, &format!("{at}.limits"));
        }
        self.memory_limit(step, &at);
        self.grading(id, step, &keys, &at);
    }

    /// A step's own `cache: true` cannot hold if it may reach the internet
    /// (a job-wide `defaults.cache` simply does not apply to such a step).
    fn cache(&mut self, step: &Step, at: &str) {
        let Some(cache) = &step.cache else {
            return;
        };
        let egress = step
            .egress
            .as_ref()
            .and_then(|e| e.policy.as_ref())
            .or_else(|| {
                self.job
                    .defaults
                    .egress
                    .as_ref()
                    .and_then(|e| e.policy.as_ref())
            });
        if matches!(cache.value, CacheSetting::On { .. }) && matches!(egress, Some(Egress::Public))
        {
            self.push(
                Problem::new(
                    "manifest::cache_public",
                    "a step with `egress: public` cannot be cached: its result depends on the internet",
                    cache.span,
                    "asks for caching",
                )
                .with_field(format!("{at}.cache"))
                .with_help("allow only the hosts it needs (`egress: { allow: [...] }`), or drop `cache`"),
            );
        }
    }

    fn step_ref(&mut self, target: &Spanned<StepId>, field: &str) -> bool {
        if self.job.steps.contains_key(target.as_str()) {
            return true;
        }
        let help = did_you_mean(target.as_str(), self.job.steps.keys().map(|k| k.as_str()))
            .map(|m| format!("did you mean `{m}`?"));
        self.push(
            Problem::new(
                "manifest::unknown_step",
                format!("unknown step `{target}`"),
                target.span,
                "no step has this id",
            )
            .with_field(field)
            .with_opt_help(help),
        );
        false
    }

    fn input(&mut self, id: &StepId, step: &Step, input: &Spanned<Input>, keys: &[&str], at: &str) {
        let what = format!("step `{id}`");
        match (&input.host, &input.step) {
            (Some(_), Some(_)) | (None, None) => self.push(
                Problem::new(
                    "manifest::input_source",
                    "an input takes exactly one of `host` and `step`",
                    input.span,
                    "this input",
                )
                .with_field(at)
                .with_help("`{ host: ./dir }` copies from the host, `{ step: build }` takes a step's outputs"),
            ),
            (Some(host), None) => {
                if let Some(p) = &input.path {
                    self.push(
                        Problem::new(
                            "manifest::input_path",
                            "`path` picks an output of a step; it does not go with `host`",
                            p.span,
                            "only with `step`",
                        )
                        .with_field(format!("{at}.path")),
                    );
                }
                self.expressions(host, keys, &what, &format!("{at}.host"));
                self.host_paths(step, host, "host input", &format!("{at}.host"));
            }
            (None, Some(producer)) => {
                if self.step_ref(producer, &format!("{at}.step")) {
                    self.input_from_step(producer, input.path.as_ref(), keys, &what, at);
                }
            }
        }
        if let Some(to) = &input.to {
            self.expressions(to, keys, &what, &format!("{at}.to"));
            if to.as_str() != "." {
                self.rel_path(to, "destination", &format!("{at}.to"), false);
            }
        }
    }

    fn input_from_step(
        &mut self,
        producer: &Spanned<StepId>,
        path: Option<&Spanned<String>>,
        keys: &[&str],
        what: &str,
        at: &str,
    ) {
        let Some(p) = self.job.steps.get(producer.as_str()) else {
            return;
        };
        if p.outputs.is_empty() {
            self.push(
                Problem::new(
                    "manifest::no_outputs",
                    format!("step `{producer}` declares no outputs"),
                    producer.span,
                    "nothing to take from this step",
                )
                .with_field(format!("{at}.step"))
                .with_help(format!(
                    "add `outputs: [...]` to step `{producer}`, or use `needs` to only wait for it"
                )),
            );
            return;
        }
        let Some(path) = path else {
            return;
        };
        self.expressions(path, keys, what, &format!("{at}.path"));
        let declared: Vec<&str> = p.outputs.iter().map(|o| o.as_str()).collect();
        if !declared.iter().any(|o| output_covers(o, path)) {
            let help = match did_you_mean(path, declared.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!(
                    "it declares: {}",
                    declared
                        .iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.push(
                Problem::new(
                    "manifest::undeclared_output",
                    format!(
                        "step `{producer}` does not declare output `{}`",
                        path.as_str()
                    ),
                    path.span,
                    "not among its outputs",
                )
                .with_field(format!("{at}.path"))
                .with_help(help),
            );
        }
    }

    fn matrix(&mut self, id: &StepId, step: &Step, at: &str) {
        let mut total: usize = 1;
        for (key, values) in &step.matrix {
            let field = format!("{at}.matrix.{key}");
            if values.is_empty() {
                self.push(
                    Problem::new(
                        "manifest::matrix_empty",
                        format!("matrix key `{key}` has no values"),
                        key.span,
                        "no values",
                    )
                    .with_field(field.clone()),
                );
            }
            for (i, v) in values.iter().enumerate() {
                if let Some(first) = values[..i].iter().find(|f| f.value == v.value) {
                    self.push(
                        Problem::new(
                            "manifest::matrix_duplicate",
                            format!("matrix value `{}` is listed twice", v.as_str()),
                            v.span,
                            "listed again",
                        )
                        .with_field(format!("{field}[{i}]"))
                        .with_note(first.span, "first listed here"),
                    );
                }
                if v.is_empty() || v.contains(['[', ']', ',', '=', '\n']) {
                    self.push(
                        Problem::new(
                            "manifest::matrix_value",
                            format!(
                                "matrix value `{}` cannot be used in an instance id",
                                v.as_str()
                            ),
                            v.span,
                            "empty, or holds `[`, `]`, `,`, `=` or a newline",
                        )
                        .with_field(format!("{field}[{i}]")),
                    );
                }
            }
            total = total.saturating_mul(values.len().max(1));
        }
        if total > MAX_MATRIX_INSTANCES {
            let span = step
                .matrix
                .keys()
                .next()
                .map_or(Span::default(), |k| k.span);
            self.push(
                Problem::new(
                    "manifest::matrix_too_large",
                    format!("the matrix of step `{id}` expands to {total} instances"),
                    span,
                    format!("at most {MAX_MATRIX_INSTANCES} per step"),
                )
                .with_field(format!("{at}.matrix")),
            );
        }
    }

    fn secrets(&mut self, step: &Step, at: &str) {
        for (i, s) in step.secrets.iter().enumerate() {
            let field = format!("{at}.secrets[{i}]");
            if let Some(first) = step.secrets[..i].iter().find(|f| f.value == s.value) {
                self.push(
                    Problem::new(
                        "manifest::secret_duplicate",
                        format!("secret `{s}` is listed twice"),
                        s.span,
                        "listed again",
                    )
                    .with_field(field.clone())
                    .with_note(first.span, "first listed here"),
                );
            }
            let env_key = step
                .env
                .keys()
                .chain(self.job.env.keys())
                .find(|k| k.as_str() == s.as_str());
            if env_key.is_some() {
                self.push(
                    Problem::new(
                        "manifest::secret_in_env",
                        format!("`{s}` is both a secret and an `env` variable"),
                        s.span,
                        "also set in `env`",
                    )
                    .with_field(field)
                    .with_help("a secret's value comes from the runner's environment; remove it from `env`"),
                );
            }
        }
    }

    /// Checks the `${{ ... }}` expressions in a value against the matrix
    /// keys in scope.
    fn expressions(&mut self, value: &Spanned<String>, keys: &[&str], scope: &str, field: &str) {
        for e in expressions(value) {
            match e {
                Expr::Matrix { key, range } => {
                    if keys.contains(&key) {
                        continue;
                    }
                    let span = self.sub_span(value, &value[range]);
                    let (msg, help) = if keys.is_empty() {
                        (
                            format!("`matrix.{key}` is used but {scope} has no matrix"),
                            Some("declare it: `matrix: { KEY: [values...] }`".to_owned()),
                        )
                    } else {
                        (
                            format!("unknown matrix key `{key}`"),
                            Some(match did_you_mean(key, keys.iter().copied()) {
                                Some(m) => format!("did you mean `matrix.{m}`?"),
                                None => format!(
                                    "{scope} has: {}",
                                    keys.iter()
                                        .map(|k| format!("`{k}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            }),
                        )
                    };
                    self.push(
                        Problem::new("manifest::matrix_key", msg, span, "unknown key")
                            .with_field(field)
                            .with_opt_help(help),
                    );
                }
                Expr::Unknown { text, range } => {
                    let span = self.sub_span(value, &value[range]);
                    self.push(
                        Problem::new(
                            "manifest::expression",
                            format!("unsupported expression `{text}`"),
                            span,
                            "not `matrix.KEY`",
                        )
                        .with_field(field)
                        .with_help("only `${{ matrix.KEY }}` is expanded; for shell variables write `$NAME`"),
                    );
                }
                Expr::Unclosed { at } => {
                    let tail = value.get(at..).unwrap_or("");
                    let span = self.sub_span(value, tail.lines().next().unwrap_or(tail));
                    self.push(
                        Problem::new(
                            "manifest::expression",
                            "`${{` without a closing `}}`",
                            span,
                            "unclosed",
                        )
                        .with_field(field),
                    );
                }
            }
        }
    }

    /// The span of `needle` inside the value's source text, or the whole
    /// value when escapes make it impossible to find.
    fn sub_span(&self, value: &Spanned<String>, needle: &str) -> Span {
        let text = self.src.slice(value.span);
        match text.find(needle) {
            Some(i) if !needle.is_empty() => Span::new(value.span.offset + i, needle.len()),
            _ => value.span,
        }
    }
}

/// `text` with `${{ ... }}` replaced by `x`, so it can be checked as a glob.
fn blank_expressions(text: &str) -> String {
    super::interpolate::substitute(text, |_| Some("x"))
}

/// Whether a declared output `declared` provides `wanted`: the same path, a
/// path inside a declared directory, or a path the declared glob matches.
/// Matrix expressions in the declaration match anything.
pub fn output_covers(declared: &str, wanted: &str) -> bool {
    let declared_trim = declared.trim_end_matches('/');
    if declared == wanted || declared_trim == wanted.trim_end_matches('/') {
        return true;
    }
    if wanted.starts_with(&format!("{declared_trim}/")) {
        return true;
    }
    let pattern = super::interpolate::substitute(declared, |_| Some("*"));
    GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(wanted))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_cover_exact_paths_dirs_and_glob_matches() {
        assert!(output_covers("out/prog", "out/prog"));
        assert!(output_covers("out", "out/prog"));
        assert!(output_covers("out/", "out/prog"));
        assert!(output_covers("out/*.txt", "out/a.txt"));
        assert!(output_covers("res/${{ matrix.case }}.txt", "res/a.txt"));
        assert!(!output_covers("out/*.txt", "out/sub/a.txt"));
        assert!(!output_covers("out/prog", "out/prog2"));
        assert!(!output_covers("outx", "out/prog"));
    }

    #[test]
    fn globs_are_checked_after_blanking_expressions() {
        assert!(
            GlobBuilder::new(&blank_expressions("a/${{ matrix.x }}/*.o"))
                .build()
                .is_ok()
        );
        assert!(GlobBuilder::new("a/[b").build().is_err());
    }
}
