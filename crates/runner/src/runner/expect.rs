//! `expect: { stdout: FILE, compare: ... }`: the step's stdout, captured
//! raw on the host as it streams in, against a host file. Pure, so every
//! comparison rule is unit-tested.
//!
//! The capture keeps at most the expected length plus [`SLACK`] bytes;
//! past that only whether more non-whitespace arrived is remembered. Output
//! that long can only match under `trim` or `tokens` if the rest is
//! whitespace, which that one bit decides.

use crate::manifest::Compare;
use crate::report::Mismatch;

/// Output kept beyond the expected length.
const SLACK: usize = 64 * 1024;
/// Characters of a line or token shown in a mismatch.
const SHOWN_CHARS: usize = 60;

/// The step's stdout as far as the comparison needs it.
#[derive(Debug, Default)]
pub struct Capture {
    kept: Vec<u8>,
    cap: usize,
    /// Bytes arrived past `cap`.
    overflow: bool,
    /// Some of them were not whitespace.
    overflow_text: bool,
}

impl Capture {
    /// A capture for comparing with `expected_len` bytes.
    pub fn new(expected_len: usize) -> Capture {
        Capture {
            cap: expected_len.saturating_add(SLACK),
            ..Capture::default()
        }
    }

    /// Adds a chunk of stdout.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        let (keep, rest) = bytes.split_at(room.min(bytes.len()));
        self.kept.extend_from_slice(keep);
        if !rest.is_empty() {
            self.overflow = true;
            self.overflow_text |= rest.iter().any(|b| !b.is_ascii_whitespace());
        }
    }
}

/// The first difference between the captured output and `expected`, or
/// `None` when they match under `mode`.
pub fn compare(expected: &[u8], got: &Capture, mode: Compare) -> Option<Mismatch> {
    let found = match mode {
        Compare::Exact => first_diff(&lines(expected), &lines(&got.kept), mode),
        Compare::Trim => first_diff(&trimmed(expected), &trimmed(&got.kept), mode),
        Compare::Tokens => first_diff(&tokens(expected), &tokens(&got.kept), mode),
    };
    if found.is_some() {
        return found;
    }
    // Everything kept matched; what was not kept must add nothing.
    let extra = match mode {
        Compare::Exact => got.overflow,
        Compare::Trim | Compare::Tokens => got.overflow_text,
    };
    extra.then(|| Mismatch {
        compare: mode.as_str().to_owned(),
        line: line_of(&got.kept, got.kept.len()),
        token: None,
        expected: None,
        actual: Some(format!("… (more than {} bytes)", got.kept.len())),
    })
}

/// A piece of output (line or token) and the 1-based line it starts on.
struct Piece<'a> {
    text: &'a [u8],
    line: u64,
}

/// Lines split at `\n`: a final newline leaves an empty last line, so
/// "a\n" and "a" differ.
fn lines(text: &[u8]) -> Vec<Piece<'_>> {
    text.split(|&b| b == b'\n')
        .zip(1..)
        .map(|(text, line)| Piece { text, line })
        .collect()
}

/// Lines without trailing whitespace, trailing blank lines dropped.
fn trimmed(text: &[u8]) -> Vec<Piece<'_>> {
    let mut v: Vec<Piece<'_>> = lines(text)
        .into_iter()
        .map(|p| Piece {
            text: p.text.trim_ascii_end(),
            line: p.line,
        })
        .collect();
    while v.last().is_some_and(|p| p.text.is_empty()) {
        v.pop();
    }
    v
}

/// Whitespace-separated tokens with their lines.
fn tokens(text: &[u8]) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut start: Option<usize> = None;
    for (i, &b) in text.iter().enumerate() {
        if b.is_ascii_whitespace() {
            if let Some(s) = start.take() {
                out.push(Piece {
                    text: &text[s..i],
                    line,
                });
            }
            if b == b'\n' {
                line += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(Piece {
            text: &text[s..],
            line,
        });
    }
    out
}

fn first_diff(expected: &[Piece<'_>], got: &[Piece<'_>], mode: Compare) -> Option<Mismatch> {
    let n = expected.len().max(got.len());
    let i = (0..n).find(|&i| expected.get(i).map(|p| p.text) != got.get(i).map(|p| p.text))?;
    // Where in the output: the printed piece, or (when the output ended
    // early) the line after its last piece.
    let line = match (got.get(i), got.last()) {
        (Some(p), _) => p.line,
        (None, Some(last)) if mode == Compare::Tokens => last.line,
        (None, Some(last)) => last.line + 1,
        (None, None) => 1,
    };
    Some(Mismatch {
        compare: mode.as_str().to_owned(),
        line,
        token: (mode == Compare::Tokens).then_some(i as u64 + 1),
        expected: expected.get(i).map(|p| shown(p.text)),
        actual: got.get(i).map(|p| shown(p.text)),
    })
}

fn line_of(text: &[u8], at: usize) -> u64 {
    1 + text[..at].iter().filter(|&&b| b == b'\n').count() as u64
}

/// A piece as text for the report: lossy UTF-8, control characters
/// escaped, cut to [`SHOWN_CHARS`].
fn shown(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The attempt's message for a mismatch.
pub fn describe(m: &Mismatch) -> String {
    let side = |s: &Option<String>| match s {
        Some(t) => format!("`{t}`"),
        None => "the end of the output".to_owned(),
    };
    let at = match m.token {
        Some(t) => format!("token {t} (line {})", m.line),
        None => format!("line {}", m.line),
    };
    format!(
        "wrong answer ({} comparison): {at}: expected {}, got {}",
        m.compare,
        side(&m.expected),
        side(&m.actual)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expected: &str, got: &str, mode: Compare) -> Option<Mismatch> {
        let mut c = Capture::new(expected.len());
        // Chunk boundaries must not matter.
        for chunk in got.as_bytes().chunks(3) {
            c.push(chunk);
        }
        compare(expected.as_bytes(), &c, mode)
    }

    #[test]
    fn exact_compares_every_byte_and_the_final_newline() {
        assert_eq!(check("1\n2\n", "1\n2\n", Compare::Exact), None);
        let m = check("1\n2\n", "1\n3\n", Compare::Exact).unwrap();
        assert_eq!(
            (m.line, m.expected.as_deref(), m.actual.as_deref()),
            (2, Some("2"), Some("3"))
        );
        let m = check("1\n2\n", "1\n2", Compare::Exact).unwrap();
        assert_eq!(
            (m.line, m.expected.as_deref(), m.actual),
            (3, Some(""), None)
        );
        let m = check("1\n", "1 \n", Compare::Exact).unwrap();
        assert_eq!(m.actual.as_deref(), Some("1 "));
        assert!(check("1\n", "1\r\n", Compare::Exact).is_some());
    }

    #[test]
    fn trim_ignores_trailing_whitespace_and_blank_lines_at_the_end_only() {
        assert_eq!(check("1\n2\n", "1  \r\n2\t\n\n\n", Compare::Trim), None);
        assert_eq!(check("1\n2", "1\n2\n", Compare::Trim), None);
        // Leading whitespace and inner blank lines count.
        assert!(check("1\n2\n", " 1\n2\n", Compare::Trim).is_some());
        let m = check("1\n2\n", "1\n\n2\n", Compare::Trim).unwrap();
        assert_eq!(
            (m.line, m.expected.as_deref(), m.actual.as_deref()),
            (2, Some("2"), Some(""))
        );
        let m = check("1\n2\n", "1\n", Compare::Trim).unwrap();
        assert_eq!((m.line, m.actual), (2, None));
        let m = check("1\n", "1\n2\n", Compare::Trim).unwrap();
        assert_eq!(
            (m.line, m.expected, m.actual.as_deref()),
            (2, None, Some("2"))
        );
    }

    #[test]
    fn tokens_ignore_how_the_output_is_spaced() {
        assert_eq!(check("1 2\n3\n", "1\n2    3", Compare::Tokens), None);
        let m = check("1 2 3\n", "1\n2\n4\n", Compare::Tokens).unwrap();
        assert_eq!(
            (m.token, m.line, m.expected.as_deref(), m.actual.as_deref()),
            (Some(3), 3, Some("3"), Some("4"))
        );
        let m = check("1 2", "1", Compare::Tokens).unwrap();
        assert_eq!((m.token, m.actual), (Some(2), None));
        assert!(check("", "", Compare::Tokens).is_none());
        assert!(check("", "x", Compare::Tokens).is_some());
    }

    #[test]
    fn output_past_the_capture_counts_unless_it_is_ignorable_whitespace() {
        let long_ws = format!("42{}", " ".repeat(SLACK * 2));
        assert_eq!(check("42", &long_ws, Compare::Trim), None);
        assert_eq!(check("42", &long_ws, Compare::Tokens), None);
        assert!(check("42", &long_ws, Compare::Exact).is_some());
        let long_text = format!("42{}x", " ".repeat(SLACK * 2));
        let m = check("42", &long_text, Compare::Tokens).unwrap();
        assert_eq!(m.expected, None);
        assert!(check("42", &long_text, Compare::Trim).is_some());
    }

    #[test]
    fn shown_text_is_cut_and_escaped_and_the_message_names_both_sides() {
        let long = "x".repeat(200);
        let m = check("a\n", &format!("{long}\u{1b}\n"), Compare::Exact).unwrap();
        let actual = m.actual.clone().unwrap();
        assert_eq!(actual.chars().count(), SHOWN_CHARS + 1);
        assert!(actual.ends_with('…'));
        let esc = check("a\n", "\u{1b}[1m\n", Compare::Exact).unwrap();
        assert_eq!(esc.actual.as_deref(), Some("\\u{1b}[1m"));
        assert_eq!(
            describe(&check("1\n", "2\n", Compare::Trim).unwrap()),
            "wrong answer (trim comparison): line 1: expected `1`, got `2`"
        );
        assert_eq!(
            describe(&check("1 2", "1", Compare::Tokens).unwrap()),
            "wrong answer (tokens comparison): token 2 (line 1): expected `2`, got the end of the output"
        );
    }
}
