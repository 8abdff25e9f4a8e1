//! `${{ matrix.KEY }}` expressions in step text (scripts, commands, env
//! values, paths): finding them for validation and substituting them when a
//! matrix is expanded.

use std::ops::Range;

/// One `${{ ... }}` found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr<'a> {
    /// `${{ matrix.KEY }}`.
    Matrix {
        /// The key.
        key: &'a str,
        /// Byte range of the whole expression.
        range: Range<usize>,
    },
    /// Anything else between `${{` and `}}`.
    Unknown {
        /// The expression text, trimmed.
        text: &'a str,
        /// Byte range of the whole expression.
        range: Range<usize>,
    },
    /// `${{` without a closing `}}`.
    Unclosed {
        /// Byte offset of the `${{`.
        at: usize,
    },
}

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

/// Every expression in `text`, in order.
pub fn expressions(text: &str) -> Vec<Expr<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(found) = text[pos..].find(OPEN) {
        let start = pos + found;
        let inner_start = start + OPEN.len();
        let Some(len) = text[inner_start..].find(CLOSE) else {
            out.push(Expr::Unclosed { at: start });
            break;
        };
        let end = inner_start + len + CLOSE.len();
        let inner = text[inner_start..inner_start + len].trim();
        let range = start..end;
        match inner.strip_prefix("matrix.") {
            Some(key) if !key.is_empty() && !key.contains(char::is_whitespace) => {
                out.push(Expr::Matrix { key, range });
            }
            _ => out.push(Expr::Unknown { text: inner, range }),
        }
        pos = end;
    }
    out
}

/// `text` with each `${{ matrix.KEY }}` replaced by `lookup(KEY)`; other
/// text is left as is (validation has already rejected anything else).
pub fn substitute<'v>(text: &str, lookup: impl Fn(&str) -> Option<&'v str>) -> String {
    if !text.contains(OPEN) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for e in expressions(text) {
        if let Expr::Matrix { key, range } = e {
            if let Some(v) = lookup(key) {
                out.push_str(&text[last..range.start]);
                out.push_str(v);
                last = range.end;
            }
        }
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_expressions_are_found_with_their_ranges() {
        let t = "a ${{ matrix.case }} b ${{matrix.os}}";
        let e = expressions(t);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            Expr::Matrix {
                key: "case",
                range: 2..20
            }
        );
        assert!(matches!(e[1], Expr::Matrix { key: "os", .. }));
    }

    #[test]
    fn other_and_unclosed_expressions_are_reported() {
        assert!(matches!(
            expressions("${{ env.X }}")[0],
            Expr::Unknown { text: "env.X", .. }
        ));
        assert_eq!(expressions("x ${{ matrix.a")[0], Expr::Unclosed { at: 2 });
    }

    #[test]
    fn substitution_replaces_known_keys() {
        let s = substitute("t/${{ matrix.case }}.in", |k| (k == "case").then_some("a"));
        assert_eq!(s, "t/a.in");
        assert_eq!(substitute("plain $HOME", |_| None), "plain $HOME");
    }
}
