//! A pool worker's next entry, held here until the worker has answered the one it
//! has. The module may send a worker its next entry while the worker still works on
//! the current one; the helper writes it to the worker's stdin the moment the worker's
//! answer line comes in on its descriptor 3, without waiting for the answer to go to
//! the module and the next entry to come back. So the worker is given one entry at a
//! time, and does not wait on the round trip through the module between two.
//!
//! An answer is a reply line with an `"id"` and `"ok"` true or false, read by the
//! module's own reader (`src/reply.rs`, shared); a progress line, or anything else, is
//! not. (The module also checks that the id is the entry's; if not, it stops the
//! worker anyway, and gives its entries to others.)

use crate::reply::{parse_reply, Said};
use std::collections::VecDeque;

/// The longest reply line looked at: a longer one is no answer (the module stops a
/// worker that writes one).
const MAX_LINE: usize = 1 << 20;

#[derive(Default)]
pub struct Answers {
    /// An entry was written and its answer has not come yet.
    owed: bool,
    /// The length of the last entry written.
    last_len: usize,
    /// Entries fed while one is owed, oldest first.
    held: VecDeque<Vec<u8>>,
    /// Reply bytes after the last newline.
    partial: Vec<u8>,
    /// The current line grew past `MAX_LINE`: not an answer, skipped to its newline.
    overlong: bool,
}

impl Answers {
    /// An entry line fed to the worker: `Some` to write now, `None` held until the
    /// worker answers.
    pub fn feed(&mut self, line: Vec<u8>) -> Option<Vec<u8>> {
        if self.owed {
            self.held.push_back(line);
            return None;
        }
        self.owed = true;
        self.last_len = line.len();
        Some(line)
    }

    /// The length of the entry written last, if it is not answered yet.
    pub fn unanswered(&self) -> Option<usize> {
        self.owed.then_some(self.last_len)
    }

    /// The worker's stdin closes: the entries held are not written (the module gives
    /// them to other workers when this one has exited).
    pub fn drop_held(&mut self) {
        self.held.clear();
    }

    /// Bytes the worker wrote on its descriptor 3: the held entries to write now.
    pub fn replies(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut release = Vec::new();
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let answered = if self.overlong {
                false
            } else if self.partial.is_empty() {
                is_answer(&rest[..end])
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                is_answer(&line)
            };
            self.overlong = false;
            rest = &rest[end + 1..];
            if answered {
                self.owed = false;
                if let Some(next) = self.held.pop_front() {
                    self.owed = true;
                    self.last_len = next.len();
                    release.push(next);
                }
            }
        }
        if !self.overlong {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.partial = Vec::new();
                self.overlong = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        release
    }
}

/// Whether a reply line answers an entry, as the module reads it.
fn is_answer(line: &[u8]) -> bool {
    matches!(parse_reply(line), Ok(Said::Done { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_lines() {
        let table: [(&str, bool); 13] = [
            (r#"{"id":"1-0","ok":true}"#, true),
            (r#"{"id":"1-0","ok":false,"error":"x"}"#, true),
            (r#" {"id":"1" , "ok" : true} "#, true),
            (r#"{"ok":true}"#, false),
            (r#"{"id":1,"ok":true}"#, false),
            (r#"{"id":"1","ok":true,"ok":true}"#, false),
            (r#"{"id":"1-0","progress":50}"#, false),
            (r#"{"id":"1-0","ok":null}"#, false),
            (r#"{"id":"1-0","ok":"true"}"#, false),
            (r#"{"id":"1-0","result":{"ok":true}}"#, false),
            (r#"[{"ok":true}]"#, false),
            (r#"{"ok":true"#, false),
            ("", false),
        ];
        for (line, want) in table {
            assert_eq!(is_answer(line.as_bytes()), want, "{line}");
        }
    }

    #[test]
    fn the_next_entry_waits_for_the_answer() {
        let mut a = Answers::default();
        assert_eq!(a.feed(b"e1\n".to_vec()), Some(b"e1\n".to_vec()));
        assert_eq!(a.feed(b"e2\n".to_vec()), None);
        assert_eq!(a.feed(b"e3\n".to_vec()), None);
        // Progress and a cut answer release nothing; its end does, one entry only.
        assert!(a
            .replies(b"{\"id\":\"1\",\"progress\":1}\n{\"id\":\"1\",")
            .is_empty());
        assert_eq!(a.replies(b"\"ok\":true}\n"), vec![b"e2\n".to_vec()]);
        assert_eq!(
            a.replies(b"{\"id\":\"1\",\"ok\":false}\n"),
            vec![b"e3\n".to_vec()]
        );
        assert!(a.replies(b"{\"id\":\"1\",\"ok\":true}\n").is_empty());
        // Nothing owed now: the next feed goes at once.
        assert_eq!(a.feed(b"e4\n".to_vec()), Some(b"e4\n".to_vec()));
    }

    #[test]
    fn an_answer_already_in_when_the_entry_is_fed_releases_it_at_once() {
        // The module sent e2 before it read e1's answer, which the helper had seen.
        let mut a = Answers::default();
        assert!(a.feed(b"e1\n".to_vec()).is_some());
        assert!(a.replies(b"{\"id\":\"1\",\"ok\":true}\n").is_empty());
        assert_eq!(a.feed(b"e2\n".to_vec()), Some(b"e2\n".to_vec()));
    }

    #[test]
    fn an_overlong_line_is_no_answer_and_what_follows_is_read() {
        let mut a = Answers::default();
        assert!(a.feed(b"e1\n".to_vec()).is_some());
        assert!(a.feed(b"e2\n".to_vec()).is_none());
        let chunk = vec![b' '; MAX_LINE / 2 + 1];
        assert!(a.replies(b"{\"id\":\"1\",\"ok\":").is_empty());
        assert!(a.replies(&chunk).is_empty());
        assert!(a.replies(&chunk).is_empty());
        assert!(a.partial.is_empty() && a.overlong);
        assert!(a.replies(b"true}\n").is_empty());
        assert_eq!(
            a.replies(b"{\"id\":\"1\",\"ok\":true}\n"),
            vec![b"e2\n".to_vec()]
        );
    }
}
