//! A run's log: the last lines it wrote (stdout and stderr merged), kept per job and
//! per in-flight stream entry for `STREAMWATCH.JOB`. Bounded per log (`log-lines`) and
//! for all logs together (`MAX_KEPT_OUTPUT`), whatever the workers write.

use crate::ffi::Reply;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub(super) struct Log {
    lines: VecDeque<Vec<u8>>,
    partial: Vec<u8>,
    /// Bytes in `lines` (counted in `KEPT_OUTPUT`).
    bytes: usize,
}

/// Bytes of output kept in all logs together, and the most there may be: past it, a
/// log that gets a line gives up its own oldest lines (keeping at least the newest),
/// so however many jobs write however much, what the module keeps stays bounded.
static KEPT_OUTPUT: AtomicUsize = AtomicUsize::new(0);
const MAX_KEPT_OUTPUT: usize = 32 << 20;

impl Drop for Log {
    fn drop(&mut self) {
        KEPT_OUTPUT.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Log {
    /// Longer lines are cut into pieces of this many bytes.
    const MAX_LINE: usize = 4096;

    pub(super) fn push(&mut self, mut data: &[u8], cap: usize) {
        while let Some(&first) = data.first() {
            if self.partial.len() >= Log::MAX_LINE {
                // A full line: a newline here ends it, anything else starts the next.
                if first == b'\n' {
                    data = &data[1..];
                }
                self.end_line(cap);
                continue;
            }
            let window = &data[..data.len().min(Log::MAX_LINE - self.partial.len())];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    data = &data[i + 1..];
                    self.end_line(cap);
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                }
            }
        }
    }

    fn end_line(&mut self, cap: usize) {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.bytes += line.len();
        KEPT_OUTPUT.fetch_add(line.len(), Ordering::Relaxed);
        self.lines.push_back(line);
        self.trim(cap);
        while self.lines.len() > 1 && KEPT_OUTPUT.load(Ordering::Relaxed) > MAX_KEPT_OUTPUT {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.lines.pop_front() {
            self.bytes -= old.len();
            KEPT_OUTPUT.fetch_sub(old.len(), Ordering::Relaxed);
        }
    }

    /// The run has ended: an unterminated last line counts.
    pub(super) fn finish(&mut self, cap: usize) {
        if !self.partial.is_empty() {
            self.end_line(cap);
        }
    }

    fn trim(&mut self, cap: usize) {
        while self.lines.len() > cap {
            self.pop_oldest();
        }
    }

    /// The last lines, newline-separated, in at most `max` bytes (older lines left
    /// out; one line longer than `max` keeps its end).
    pub(super) fn tail(&self, max: usize) -> Vec<u8> {
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut size = 0;
        for line in self.lines.iter().rev() {
            let room = max.saturating_sub(size + usize::from(!kept.is_empty()));
            if line.len() > room {
                if kept.is_empty() {
                    kept.push(&line[line.len() - room..]);
                }
                break;
            }
            size += line.len() + usize::from(!kept.is_empty());
            kept.push(line);
        }
        kept.reverse();
        kept.join(&b'\n')
    }

    pub(super) fn reply(&self) -> Reply {
        Reply::Array(self.lines.iter().map(Reply::str).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_and_only_the_last_are_kept() {
        let lines = |chunks: &[&[u8]], cap: usize| {
            let mut log = Log::default();
            chunks.iter().for_each(|c| log.push(c, cap));
            log.finish(cap);
            log.lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&[b"a\nb\r\nc"], 10), ["a", "b", "c"]);
        assert_eq!(lines(&[b"a", b"b\n", b"\n", b"c\n"], 10), ["ab", "", "c"]);
        assert_eq!(lines(&[b"1\n2\n3\n4\n"], 2), ["3", "4"]);
        assert_eq!(lines(&[b"x\n"], 0), Vec::<String>::new());
        let mut log = Log::default();
        log.push(b"first\nsecond\nthird\n", 10);
        let tails: [(usize, &[u8]); 5] = [
            (100, b"first\nsecond\nthird"),
            (12, b"second\nthird"),
            (11, b"third"),
            (3, b"ird"),
            (0, b""),
        ];
        for (max, want) in tails {
            assert_eq!(log.tail(max), want, "{max}");
        }
        let long = vec![b'x'; Log::MAX_LINE];
        let got = lines(&[&long, b"\n", &long, b"yz\n"], 10);
        let sizes: Vec<usize> = got.iter().map(String::len).collect();
        assert_eq!(
            sizes,
            [Log::MAX_LINE, Log::MAX_LINE, 2],
            "a full line ends at its newline"
        );
    }
}
