//! How a container image's config fills in what a step leaves open, the
//! way Docker runs the image: its `Env` is the base environment, its
//! `WorkingDir` the work directory, its `User` the user, and its
//! `Entrypoint` + `Cmd` the command. The runner and `exec` both start
//! steps through these rules, so one image behaves the same under both.

use guest_init::proto::{Command as GuestCommand, User as GuestUser};
use sbxrun_image::ImageConfig;

/// The image's `Env` as pairs, in its order; entries without `=` (which
/// Docker would read from the host) are left out.
pub fn base_env(config: &ImageConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The environment a step sees: the image's, then the step's own, which
/// wins for a name both set (the guest keeps the last definition).
pub fn layered_env(config: &ImageConfig, step: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = base_env(config);
    env.extend(step);
    env
}

/// The work directory: the image's `WorkingDir` when it names one, else
/// the guest's default (`/work`). Inputs are unpacked there and outputs
/// are collected from there.
pub fn work_dir(config: &ImageConfig) -> String {
    match config.working_dir.as_deref() {
        Some(dir) if dir.starts_with('/') => dir.to_owned(),
        _ => guest_init::proto::DEFAULT_CWD.to_owned(),
    }
}

/// The user of a step that did not choose one: the image's `User`
/// resolved in its own `/etc/passwd`, or root when it names none (as
/// Docker runs such an image).
pub fn user(config: &ImageConfig, image: &str) -> Result<GuestUser, String> {
    match (&config.user, config.user_ids) {
        (None, _) | (_, Some((0, 0))) => Ok(GuestUser::Root),
        (Some(_), Some((uid, gid))) => Ok(GuestUser::Ids { uid, gid }),
        (Some(name), None) => Err(format!(
            "image {image} runs as user `{name}`, which its /etc/passwd does not define; \
             set `user:` on the step"
        )),
    }
}

/// The command of a step with neither `run` nor `command`: the image's
/// `Entrypoint` followed by its `Cmd`.
pub fn default_command(config: &ImageConfig, image: &str) -> Result<GuestCommand, String> {
    let argv: Vec<String> = config
        .entrypoint
        .iter()
        .chain(&config.cmd)
        .cloned()
        .collect();
    if argv.is_empty() {
        return Err(format!(
            "image {image} has no Entrypoint or Cmd; give the step `run` or `command`"
        ));
    }
    Ok(GuestCommand::Argv(argv))
}

/// A shell script needs `/bin/sh`; a distroless image has none.
pub fn check_shell(config: &ImageConfig, image: &str) -> Result<(), String> {
    if config.has_sh {
        return Ok(());
    }
    Err(format!(
        "image {image} has no /bin/sh, so a `run:` script cannot start; use `command: [...]`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            env: vec![
                "PATH=/opt/bin:/usr/bin".into(),
                "LANG=C.UTF-8".into(),
                "BARE".into(),
            ],
            working_dir: Some("/app".into()),
            user: Some("app".into()),
            user_ids: Some((1001, 1002)),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=1".into()],
            platform: "linux/amd64".into(),
            has_sh: false,
        }
    }

    #[test]
    fn the_step_env_wins_over_the_image_env() {
        let env = layered_env(&config(), vec![("LANG".into(), "en".into())]);
        assert_eq!(
            env,
            [
                ("PATH".to_owned(), "/opt/bin:/usr/bin".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("LANG".to_owned(), "en".to_owned()),
            ]
        );
    }

    #[test]
    fn image_defaults_fill_what_the_step_leaves_open() {
        let c = config();
        assert_eq!(work_dir(&c), "/app");
        assert_eq!(work_dir(&ImageConfig::default()), "/work");
        assert_eq!(
            user(&c, "img"),
            Ok(GuestUser::Ids {
                uid: 1001,
                gid: 1002
            })
        );
        assert_eq!(user(&ImageConfig::default(), "img"), Ok(GuestUser::Root));
        let unknown = ImageConfig {
            user_ids: None,
            ..config()
        };
        assert!(user(&unknown, "img").unwrap_err().contains("`app`"));
        assert_eq!(
            default_command(&c, "img"),
            Ok(GuestCommand::Argv(vec![
                "/entry".into(),
                "serve".into(),
                "--port=1".into()
            ]))
        );
        assert!(default_command(&ImageConfig::default(), "img")
            .unwrap_err()
            .contains("img"));
        assert!(check_shell(&c, "gcr.io/distroless/static")
            .unwrap_err()
            .contains("distroless"));
    }
}
