//! A step's output log: stdout and stderr interleaved line by line, each
//! line tagged with its stream, secrets masked, bounded by the step's output
//! limit, with the last lines of each stream kept for reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::mask::Masker;

/// Lines of each stream kept for JUnit and the console.
pub const TAIL_LINES: usize = 40;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Out => "out| ",
            Stream::Err => "err| ",
        }
    }
}

/// Receives each finished, masked line.
pub type LineSink = Box<dyn FnMut(Stream, &str) + Send>;

struct StreamState {
    masker: Masker,
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

/// Writes one step's log.
pub struct StepLog {
    file: Option<BufWriter<File>>,
    streams: [StreamState; 2],
    limit: u64,
    seen: u64,
    exceeded: bool,
    on_line: Option<LineSink>,
    /// The last lines of both streams, in arrival order.
    combined: VecDeque<String>,
}

impl StepLog {
    /// A log at `path` (`None`: keep tails only), masking `secrets`,
    /// recording at most `limit` bytes of output.
    pub fn create(path: Option<&Path>, secrets: &[String], limit: u64) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        let state = || StreamState {
            masker: Masker::new(secrets),
            partial: Vec::new(),
            tail: VecDeque::new(),
        };
        Ok(StepLog {
            file,
            streams: [state(), state()],
            limit,
            seen: 0,
            exceeded: false,
            on_line: None,
            combined: VecDeque::new(),
        })
    }

    /// Also passes every finished (masked) line to `f`.
    pub fn on_line(&mut self, f: LineSink) {
        self.on_line = Some(f);
    }

    /// Whether more output arrived than the limit allows.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// Records a chunk; returns false once the limit is exceeded (the
    /// rest is dropped).
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        if self.exceeded {
            return false;
        }
        let room = self.limit.saturating_sub(self.seen);
        let take = (bytes.len() as u64).min(room) as usize;
        self.seen += bytes.len() as u64;
        let masked = self.streams[stream as usize].masker.push(&bytes[..take]);
        self.add(stream, &masked);
        if self.seen > self.limit {
            self.exceeded = true;
            let note = format!("[sbxrun: output limit of {} bytes exceeded]\n", self.limit);
            self.flush_partial(stream);
            self.add(Stream::Err, note.as_bytes());
            return false;
        }
        true
    }

    fn add(&mut self, stream: Stream, bytes: &[u8]) {
        self.streams[stream as usize]
            .partial
            .extend_from_slice(bytes);
        loop {
            let partial = &mut self.streams[stream as usize].partial;
            let Some(pos) = partial.iter().position(|&b| b == b'\n') else {
                break;
            };
            let line: Vec<u8> = partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.emit(stream, text);
        }
    }

    fn flush_partial(&mut self, stream: Stream) {
        let st = &mut self.streams[stream as usize];
        let mut rest = st.masker.finish();
        rest.splice(0..0, std::mem::take(&mut st.partial));
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(&rest).into_owned();
            self.emit(stream, text);
        }
    }

    fn emit(&mut self, stream: Stream, text: String) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{}{}", stream.tag(), text);
        }
        if let Some(cb) = &mut self.on_line {
            cb(stream, &text);
        }
        push_bounded(&mut self.combined, text.clone());
        push_bounded(&mut self.streams[stream as usize].tail, text);
    }

    /// Ends the log: unfinished lines are written.
    pub fn finish(&mut self) {
        self.flush_partial(Stream::Out);
        self.flush_partial(Stream::Err);
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    /// The last lines of a stream, joined.
    pub fn tail(&self, stream: Stream) -> String {
        joined(&self.streams[stream as usize].tail)
    }

    /// The last lines of both streams in the order they arrived, joined.
    pub fn combined_tail(&self) -> String {
        joined(&self.combined)
    }
}

fn push_bounded(tail: &mut VecDeque<String>, line: String) {
    tail.push_back(line);
    if tail.len() > TAIL_LINES {
        tail.pop_front();
    }
}

fn joined(lines: &VecDeque<String>) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tags_lines_masks_secrets_and_keeps_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = StepLog::create(Some(&path), &["s3cret".into()], 1 << 20).unwrap();
        log.write(Stream::Out, b"a1\nkey=s3");
        log.write(Stream::Err, b"e1\n");
        log.write(Stream::Out, b"cret\npartial");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "out| a1\nerr| e1\nout| key=***\nout| partial\n");
        assert_eq!(log.tail(Stream::Out), "a1\nkey=***\npartial\n");
        assert_eq!(log.combined_tail(), "a1\ne1\nkey=***\npartial\n");
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn log_stops_at_the_output_limit() {
        let mut log = StepLog::create(None, &[], 10).unwrap();
        assert!(log.write(Stream::Out, b"12345\n"));
        assert!(!log.write(Stream::Out, b"6789\nabcdef\n"));
        assert!(log.exceeded());
        log.finish();
        let out = log.tail(Stream::Out);
        assert_eq!(out, "12345\n6789\n");
        assert!(log.tail(Stream::Err).contains("output limit of 10 bytes"));
    }
}
