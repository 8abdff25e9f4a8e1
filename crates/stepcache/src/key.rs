//! Keys: a digest over named parts, each part's own digest kept so a miss
//! can be explained ("`inputs` changed since the last run").

use std::collections::BTreeMap;

use serde::Serialize;

use crate::digest::sha256_hex;

/// Bumped whenever what goes into a key changes meaning: every entry made
/// before is then simply never found again.
pub const KEY_FORMAT: &str = "sbxrun-step-cache/1";

/// Collects a key's parts.
#[derive(Debug, Default)]
pub struct KeyBuilder {
    parts: BTreeMap<String, String>,
}

/// A computed key and the digests of the parts it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Lowercase hex SHA-256.
    pub key: String,
    /// Part name → lowercase hex SHA-256 of the part.
    pub parts: BTreeMap<String, String>,
}

impl KeyBuilder {
    /// No parts yet.
    pub fn new() -> Self {
        KeyBuilder::default()
    }

    /// A part given by value: its digest is that of its JSON encoding
    /// (field order as declared, so the encoding is stable).
    pub fn part(&mut self, name: &str, value: &impl Serialize) -> &mut Self {
        // Serialising plain data to a String cannot fail; an error would
        // still change the digest rather than be ignored silently.
        let json = serde_json::to_string(value).unwrap_or_else(|e| format!("!{e}"));
        self.parts
            .insert(name.to_owned(), sha256_hex(json.as_bytes()));
        self
    }

    /// A part whose digest is already known (a file's content, an image's
    /// manifest digest).
    pub fn part_digest(&mut self, name: &str, digest: &str) -> &mut Self {
        self.parts.insert(name.to_owned(), digest.to_owned());
        self
    }

    /// The key over every part.
    pub fn finish(self) -> CacheKey {
        let mut text = String::from(KEY_FORMAT);
        text.push('\n');
        for (name, digest) in &self.parts {
            text.push_str(name);
            text.push('=');
            text.push_str(digest);
            text.push('\n');
        }
        CacheKey {
            key: sha256_hex(text.as_bytes()),
            parts: self.parts,
        }
    }
}

/// The parts that differ between two keys' parts (added, removed or with
/// another digest), sorted.
pub fn changed_parts(
    before: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(before.keys().filter(|k| !now.contains_key(*k)).cloned());
    changed.sort();
    changed.dedup();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(env: &str, cmd: &str) -> CacheKey {
        let mut b = KeyBuilder::new();
        b.part("env", &[("A", env)]).part("command", &cmd);
        b.finish()
    }

    #[test]
    fn one_changed_part_changes_the_key_and_is_named() {
        let a = key("1", "make");
        assert_eq!(a, key("1", "make"));
        let b = key("2", "make");
        assert_ne!(a.key, b.key);
        assert_eq!(changed_parts(&a.parts, &b.parts), vec!["env"]);
        assert!(changed_parts(&a.parts, &a.parts).is_empty());
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        // "ab" + "c" must not equal "a" + "bc".
        let mut x = KeyBuilder::new();
        x.part("a", &"ab").part("b", &"c");
        let mut y = KeyBuilder::new();
        y.part("a", &"a").part("b", &"bc");
        assert_ne!(x.finish().key, y.finish().key);
    }

    #[test]
    fn added_and_removed_parts_count_as_changed() {
        let mut x = KeyBuilder::new();
        x.part("a", &1);
        let mut y = KeyBuilder::new();
        y.part("b", &1);
        let (x, y) = (x.finish(), y.finish());
        assert_eq!(changed_parts(&x.parts, &y.parts), vec!["a", "b"]);
    }
}
