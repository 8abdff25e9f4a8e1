//! Streaming secret masking: replaces every occurrence of a secret value in
//! a byte stream, even when it is split across writes. A tail that could be
//! the start of a secret is held back until the next write (or the end).

/// What a masked secret becomes.
pub const MASK: &[u8] = b"***";

/// A masker for one stream.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl Masker {
    /// Masks these values; empty ones are ignored (they would match
    /// everywhere).
    pub fn new(secrets: &[String]) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker {
            secrets,
            pending: Vec::new(),
        }
    }

    /// Feeds `chunk`; returns what is safe to emit now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            for s in &self.secrets {
                if rest.starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'scan;
                }
            }
            if self
                .secrets
                .iter()
                .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                self.pending = rest.to_vec();
                return out;
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// The held-back tail (it is not a whole secret).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Masks secrets in a complete string.
pub fn mask_str(text: &str, secrets: &[String]) -> String {
    let mut m = Masker::new(secrets);
    let mut out = m.push(text.as_bytes());
    out.extend(m.finish());
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&str]) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut m = Masker::new(&secrets);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masker_replaces_whole_secrets_in_one_write() {
        assert_eq!(run(&["hunter2"], &["pw=hunter2 ok"]), "pw=*** ok");
    }

    #[test]
    fn masker_replaces_secrets_split_across_writes() {
        assert_eq!(run(&["hunter2"], &["pw=hun", "te", "r2 ok"]), "pw=*** ok");
        assert_eq!(run(&["abc"], &["a", "b", "c", "a", "bc", "ab"]), "******ab");
    }

    #[test]
    fn masker_releases_a_false_start_and_keeps_order() {
        assert_eq!(run(&["secret"], &["sec", "ond secret"]), "second ***");
        assert_eq!(run(&["aab"], &["aa", "aab"]), "aa***");
    }

    #[test]
    fn masker_prefers_the_longest_secret_and_ignores_empty_ones() {
        assert_eq!(
            run(&["tok", "token123", ""], &["x token123 tok"]),
            "x *** ***"
        );
    }

    #[test]
    fn mask_str_masks_messages() {
        assert_eq!(mask_str("key=s3cr3t", &["s3cr3t".into()]), "key=***");
    }
}
