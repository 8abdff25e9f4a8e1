//! The terminal a run's human output goes to (stderr): whether it is live
//! (a terminal, where progress lines are redrawn in place) and whether it
//! takes colour. One per process, shared by the console view and the image
//! and snapshot progress displays, so their redrawn lines never fight.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressDrawTarget};

/// Stderr as the run's displays share it.
pub struct Terminal {
    /// Redrawn progress lines live here; `None` when stderr is not a
    /// terminal (plain lines only, nothing redrawn).
    live: Option<MultiProgress>,
    colour: bool,
}

/// An ANSI style, applied only when the terminal takes colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Green,
    Red,
    Yellow,
    Dim,
    Bold,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Green => "32",
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }
}

/// Whether to colour, by the conventions of no-color.org and CLICOLOR:
/// `NO_COLOR` (non-empty) turns colour off, `CLICOLOR_FORCE` (non-empty,
/// not `0`) turns it on even without a terminal, `TERM=dumb` has none.
pub fn colour_wanted(is_terminal: bool, env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("NO_COLOR") {
        return false;
    }
    if set("CLICOLOR_FORCE") && env("CLICOLOR_FORCE").as_deref() != Some("0") {
        return true;
    }
    is_terminal && env("TERM").as_deref() != Some("dumb")
}

impl Terminal {
    /// The process's stderr.
    pub fn stderr() -> &'static Terminal {
        static TERMINAL: OnceLock<Terminal> = OnceLock::new();
        TERMINAL.get_or_init(|| {
            let is_terminal = std::io::stderr().is_terminal();
            let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
            Terminal {
                live: (is_terminal && !dumb)
                    .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
                colour: colour_wanted(is_terminal, |n| std::env::var(n).ok()),
            }
        })
    }

    /// A terminal that is never live and never coloured (tests, files).
    pub fn plain() -> Terminal {
        Terminal {
            live: None,
            colour: false,
        }
    }

    /// Where redrawn lines go, when stderr is a terminal.
    pub fn live(&self) -> Option<&MultiProgress> {
        self.live.as_ref()
    }

    /// `text` in `paint`, or as it is without colour.
    pub fn paint(&self, paint: Paint, text: &str) -> String {
        if self.colour && !text.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", paint.code())
        } else {
            text.to_owned()
        }
    }

    /// Prints a line above the redrawn ones (or just a line).
    pub fn line(&self, text: &str) {
        match &self.live {
            Some(multi) if !multi.is_hidden() => {
                // indicatif prints nothing for a hidden target; fall back.
                if multi.println(text).is_err() {
                    let _ = writeln!(std::io::stderr().lock(), "{text}");
                }
            }
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn colour_follows_no_color_clicolor_force_and_the_terminal() {
        assert!(colour_wanted(true, env(&[("TERM", "xterm")])));
        assert!(!colour_wanted(false, env(&[("TERM", "xterm")])));
        assert!(!colour_wanted(true, env(&[("NO_COLOR", "1")])));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(colour_wanted(true, env(&[("NO_COLOR", "")])));
        assert!(!colour_wanted(true, env(&[("TERM", "dumb")])));
        assert!(colour_wanted(false, env(&[("CLICOLOR_FORCE", "1")])));
        assert!(!colour_wanted(false, env(&[("CLICOLOR_FORCE", "0")])));
        assert!(!colour_wanted(
            false,
            env(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")])
        ));
    }

    #[test]
    fn a_plain_terminal_paints_nothing() {
        assert_eq!(Terminal::plain().paint(Paint::Red, "failed"), "failed");
        let coloured = Terminal {
            live: None,
            colour: true,
        };
        assert_eq!(
            coloured.paint(Paint::Red, "failed"),
            "\x1b[31mfailed\x1b[0m"
        );
    }
}
