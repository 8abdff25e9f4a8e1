//! Artifacts: tar streams on the block images behind a step's input and
//! output disks. The host packs a step's inputs (host paths and producer
//! steps' outputs) onto the input disk, and unpacks the guest's output disk
//! into the run directory after validating every entry: the output disk is
//! written by untrusted code.

mod error;
mod pack;
mod unpack;

pub use error::ArtifactError;
pub(crate) use pack::walk;
pub use pack::{pack_inputs, InputItem, PackStats};
pub use unpack::{unpack_outputs, unpack_stream, FileDigest, OutputLimits, Unpacked};

/// Joins relative path parts with `/`, dropping `.` and empty parts.
pub fn join_rel(parts: &[&str]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for p in parts {
        out.extend(p.split('/').filter(|s| !s.is_empty() && *s != "."));
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_rel_drops_dots_and_empty_parts() {
        assert_eq!(join_rel(&[".", "a/b"]), "a/b");
        assert_eq!(join_rel(&["data/", "./x", ""]), "data/x");
        assert_eq!(join_rel(&["."]), "");
    }
}
