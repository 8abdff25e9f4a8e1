//! Following a step's output log as a node writes it into the shared run
//! directory: complete lines only, tagged with their stream, from where
//! the last read stopped.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::report::Stream;

/// At most this much of a log is read per look.
const CHUNK: u64 = 1 << 20;

/// The complete lines written to the log at `path` since `offset`, which
/// moves past them. A log shorter than `offset` was started afresh by a
/// new attempt and is read from its beginning.
pub fn new_lines(path: &Path, offset: &mut u64) -> Vec<(Stream, String)> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
    }
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(CHUNK).read_to_end(&mut buf);
    let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    *offset += last_newline as u64 + 1;
    String::from_utf8_lossy(&buf[..last_newline])
        .lines()
        .map(|line| match line.split_at_checked(5) {
            Some(("err| ", rest)) => (Stream::Err, rest.to_owned()),
            Some(("out| ", rest)) => (Stream::Out, rest.to_owned()),
            _ => (Stream::Out, line.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_read_once_and_a_fresh_log_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let mut offset = 0;
        assert!(new_lines(&log, &mut offset).is_empty());
        std::fs::write(&log, "out| one\nerr| two\nout| par").unwrap();
        assert_eq!(
            new_lines(&log, &mut offset),
            vec![(Stream::Out, "one".into()), (Stream::Err, "two".into())]
        );
        assert!(
            new_lines(&log, &mut offset).is_empty(),
            "a partial line waits"
        );
        std::fs::write(&log, "out| one\nerr| two\nout| partial\n").unwrap();
        assert_eq!(
            new_lines(&log, &mut offset),
            vec![(Stream::Out, "partial".into())]
        );
        std::fs::write(&log, "out| again\n").unwrap();
        assert_eq!(
            new_lines(&log, &mut offset),
            vec![(Stream::Out, "again".into())]
        );
    }
}
