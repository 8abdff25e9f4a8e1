//! The checks of paths: root images, host files (inputs and expected
//! outputs, per matrix instance) and paths under a step's work dir.

use std::path::Path;

use globset::GlobBuilder;
use sbxrun_image::ImageSource;

use super::*;

impl Validator<'_> {
    /// An image is `default`, a path that exists (a directory or an ext4
    /// file), an `oci:`/`oci-archive:`/`docker-archive:` source that
    /// exists, or a registry reference that parses. Registries are not
    /// asked here: validation never touches the network.
    pub(super) fn image(&mut self, image: &Spanned<String>, field: &str) {
        let s = image.as_str();
        let problem = match ImageRef::classify(s, &self.src.dir) {
            ImageRef::Name(_) => None,
            ImageRef::Path(path) => image_path_problem(s, &path),
            ImageRef::Container(source) => match sbxrun_image::parse_source(&source, |_| false) {
                Err(e) => Some((
                    "manifest::image_reference",
                    e.to_string(),
                    "not an image reference or path",
                    "write a registry reference (`python:3.12`, `registry.example:5000/team/img:tag`), \
                     `oci:DIR[:tag]`, `oci-archive:FILE[:tag]`, `docker-archive:FILE`, or a path \
                     starting with `./`",
                )),
                Ok(ImageSource::OciLayout { path, .. })
                | Ok(ImageSource::OciArchive { path, .. })
                | Ok(ImageSource::DockerArchive { path, .. })
                    if !path.exists() =>
                {
                    Some((
                        "manifest::image_missing",
                        format!("image `{s}` does not exist"),
                        "no such file or directory",
                        "image paths are relative to the manifest's directory",
                    ))
                }
                Ok(_) => None,
            },
        };
        if let Some((code, message, label, help)) = problem {
            self.push(
                Problem::new(code, message, image.span, label)
                    .with_field(field)
                    .with_help(help),
            );
        }
    }

    /// A host input with `${{ matrix.KEY }}` names one path per instance
    /// (`subs/${{ matrix.sub }}.py`): each must pass [`Self::host_path`].
    /// Only the keys the path uses are expanded, and at most
    /// [`MAX_HOST_PATH_CHECKS`] paths are checked.
    pub(super) fn host_paths(
        &mut self,
        step: &Step,
        host: &Spanned<String>,
        what: &str,
        field: &str,
    ) {
        let used: Vec<(&str, &Vec<Spanned<String>>)> = step
            .matrix
            .iter()
            .filter(|(k, _)| host.contains(&format!("matrix.{}", k.as_str())))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        if used.is_empty() {
            self.host_path(host, host.as_str(), None, what, field);
            return;
        }
        let mut combos: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
        for (key, values) in &used {
            combos = combos
                .iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((*key, v.as_str()));
                        c
                    })
                })
                .take(MAX_HOST_PATH_CHECKS)
                .collect();
        }
        for combo in combos {
            let path = substitute(host, |k| {
                combo.iter().find(|(ck, _)| *ck == k).map(|(_, v)| *v)
            });
            let values: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let before = self.problems.len();
            self.host_path(host, &path, Some(&values.join(",")), what, field);
            if self.problems.len() > before {
                // One missing instance says enough; the rest are alike.
                return;
            }
        }
    }

    /// A host file (`what`: a host input, an expected output) must exist
    /// and stay inside the manifest's directory (after following
    /// symlinks). `path` is `host` with the matrix values of the instance
    /// `instance` substituted.
    pub(super) fn host_path(
        &mut self,
        host: &Spanned<String>,
        path: &str,
        instance: Option<&str>,
        what: &str,
        field: &str,
    ) {
        let base = &self.src.dir;
        let problem = |msg: String, label: &str| {
            Problem::new("manifest::host_path", msg, host.span, label).with_field(field)
        };
        let shown = match instance {
            Some(values) => format!("`{path}` (for {values})"),
            None => format!("`{path}`"),
        };
        let joined = base.join(path);
        let escapes_lexically = Path::new(path).is_absolute() || path.split('/').any(|c| c == "..");
        let escapes = match (joined.canonicalize(), base.canonicalize()) {
            (Ok(resolved), Ok(root)) => Some(!resolved.starts_with(&root)),
            (Err(_), _) if escapes_lexically => Some(true),
            _ => None,
        };
        match escapes {
            Some(false) => {}
            Some(true) => {
                let p = problem(
                    format!("{what} {shown} is outside the manifest's directory"),
                    "escapes the manifest's directory",
                )
                .with_help(format!(
                    "{what}s are relative to the manifest and stay below it"
                ));
                self.push(p);
            }
            None => {
                let p = problem(
                    format!("{what} {shown} does not exist"),
                    "no such file or directory",
                )
                .with_help(format!(
                    "paths are relative to the manifest's directory ({})",
                    base.display()
                ));
                self.push(p);
            }
        }
    }

    /// A path under the work dir: relative, without `..`; `glob` allows
    /// glob syntax.
    pub(super) fn rel_path(&mut self, p: &Spanned<String>, what: &str, field: &str, glob: bool) {
        let text = p.as_str();
        let problem = |msg: String, label: &str| {
            Problem::new("manifest::path", msg, p.span, label).with_field(field)
        };
        if text.is_empty() {
            self.push(problem(format!("empty {what} path"), "empty"));
            return;
        }
        if text.starts_with('/') {
            self.push(
                problem(format!("{what} path `{text}` is absolute"), "absolute path")
                    .with_help("paths are relative to the step's work dir"),
            );
            return;
        }
        if text.split('/').any(|c| c == "..") {
            self.push(
                problem(
                    format!("{what} path `{text}` leaves the work dir"),
                    "`..` not allowed",
                )
                .with_help("paths stay inside the step's work dir"),
            );
            return;
        }
        if glob {
            let probe = blank_expressions(text);
            if let Err(e) = GlobBuilder::new(&probe).literal_separator(true).build() {
                self.push(problem(
                    format!("invalid glob `{text}`: {}", glob_reason(&e)),
                    "invalid glob",
                ));
            }
        }
    }
}

/// globset's reason, without its restating of the glob.
fn glob_reason(e: &globset::Error) -> String {
    e.kind().to_string()
}

/// What is wrong with an image path, if anything: it must be a directory or
/// an ext4 file. The message names the path as the manifest wrote it.
fn image_path_problem(
    written: &str,
    path: &Path,
) -> Option<(&'static str, String, &'static str, &'static str)> {
    let missing = || {
        Some((
            "manifest::image_missing",
            format!("image `{written}` does not exist"),
            "no such file or directory",
            "image paths are relative to the manifest's directory",
        ))
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return missing();
    };
    if meta.is_dir() {
        return None;
    }
    match sbxrun_image::ext4::is_ext4(path) {
        Ok(true) => None,
        Ok(false) => Some((
            "manifest::image_not_ext4",
            format!("image `{written}` is not an ext4 file (no ext4 superblock)"),
            "not a directory or an ext4 file",
            "give a directory (built into an ext4 image on first use), an ext4 file, \
             or a container image reference",
        )),
        Err(_) => missing(),
    }
}
