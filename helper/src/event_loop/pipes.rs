//! The runs' pipes, apart from the loop that waits on them (`event_loop`): a run's
//! standard input (`Input`: one-shot, or kept open for a pool worker and fed), written
//! without blocking and pumped as its pipe has room; its output and its descriptor 3
//! replies, read within the run's budget and everyone's, paused when over it; and at
//! the run's exit, what those pipes still hold (`last_words`). Here so that the loop's
//! file is the loop and the dispatch of requests.

use super::{token, Helper, Kind};
use crate::budget::{OUTPUT_PAUSE, READ_PER_TURN, RUN_BURST, RUN_RATE, TOTAL_BURST, TOTAL_RATE};
use crate::protocol::Report;
use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// A run's standard input: a pipe written without blocking, what it does not take
/// now kept here until it does (a worker that does not read blocks no one).
pub(super) struct Input {
    pub(super) pipe: File,
    /// Bytes still to write: those from `written` on.
    data: Vec<u8>,
    written: usize,
    /// The pipe stays open once all is written (`keep_stdin`): until `CloseInput`,
    /// the run's exit, or the helper's shutdown.
    keep_open: bool,
    /// In the epoll set (EPOLLOUT): only while something waits to be written, as a
    /// pipe with room is always writable.
    pub(super) watched: bool,
}

/// Where an `Input` stands after writing what its pipe takes.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// Something is left and the pipe is full: write again when it has room.
    Waiting,
    /// All written; the pipe stays open for more.
    Idle,
    /// Over: all written and not kept open, or the run closed its end (a handler
    /// need not read its input). The pipe is to be closed.
    Done,
}

impl Input {
    pub(super) fn new(pipe: File, data: Vec<u8>, keep_open: bool) -> Input {
        Input {
            pipe,
            data,
            written: 0,
            keep_open,
            watched: false,
        }
    }

    /// Appends `data` after what is still to be written.
    fn feed(&mut self, data: Vec<u8>) {
        if self.written == self.data.len() {
            self.data = data;
            self.written = 0;
            return;
        }
        // What is written goes before the buffer grows, at most once per half of it.
        if self.written >= self.data.len() / 2 {
            self.data.drain(..self.written);
            self.written = 0;
        }
        self.data.extend_from_slice(&data);
    }

    /// Writes what the pipe takes now.
    fn pump(&mut self) -> Pumped {
        while self.written < self.data.len() {
            match self.pipe.write(&self.data[self.written..]) {
                Ok(0) => return Pumped::Done,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::Waiting,
                Err(_) => return Pumped::Done,
            }
        }
        self.data = Vec::new();
        self.written = 0;
        if self.keep_open {
            Pumped::Idle
        } else {
            Pumped::Done
        }
    }
}

/// What one read of a non-blocking pipe gave.
enum Got {
    Data(usize),
    /// Nothing there now.
    Nothing,
    /// End of file (or an error, which ends the pipe too).
    End,
}

/// One read into `buf`, which must not be empty (a read of 0 bytes says end of file).
fn read_some(pipe: &mut File, buf: &mut [u8]) -> Got {
    debug_assert!(!buf.is_empty());
    loop {
        return match pipe.read(buf) {
            Ok(0) => Got::End,
            Ok(n) => Got::Data(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
            Err(_) => Got::End,
        };
    }
}

/// Without `FIONREAD`'s answer, the most a run's replies pipe is drained of at its
/// exit: what a pipe holds at most unless root raised `fs.pipe-max-size`.
const DRAIN_WITHOUT_COUNT: usize = 1 << 20;

impl Helper {
    /// Writes what the run's stdin pipe takes now; watches it for room while
    /// something is left, closes it when it is over.
    pub(super) fn pump_input(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let Some(input) = run.input.as_mut() else {
            return;
        };
        let fd = input.pipe.as_raw_fd();
        match input.pump() {
            Pumped::Waiting => {
                if !input.watched {
                    sys::watch(self.epfd, fd, libc::EPOLLOUT, token(id, Kind::Input));
                    input.watched = true;
                }
            }
            Pumped::Idle => {
                if input.watched {
                    sys::unwatch(self.epfd, fd);
                    input.watched = false;
                }
            }
            Pumped::Done => {
                if input.watched {
                    sys::unwatch(self.epfd, fd);
                }
                // What the run never read, if it closed its end first.
                let in_pipe = sys::readable_bytes(fd).unwrap_or(0);
                run.unread_input = in_pipe + input.data.len() - input.written;
                run.input = None;
            }
        }
    }

    /// `Feed`: an entry for a pool worker, written to its kept-open stdin once it has
    /// answered the entries before (see `Answers`); ignored for an unknown run, or one
    /// whose stdin is closed or closing.
    pub(super) fn feed(&mut self, id: u64, data: Vec<u8>) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        if !run.input.as_ref().is_some_and(|i| i.keep_open) {
            return;
        }
        run.fed = run.fed.map(|n| n + 1);
        if let Some(data) = run.answers.feed(data) {
            self.write_input(id, data);
        }
    }

    /// Appends `data` to what the run's stdin is still to be given.
    fn write_input(&mut self, id: u64, data: Vec<u8>) {
        let Some(input) = self.runs.get_mut(&id).and_then(|r| r.input.as_mut()) else {
            return;
        };
        let full = input.watched;
        input.feed(data);
        if !full {
            self.pump_input(id);
        }
    }

    /// At the run's exit: whether the last entry it was given (a pool worker's) was
    /// still whole in its stdin, unanswered: it never read it.
    pub(super) fn entry_unread(&self, id: u64) -> bool {
        let Some(run) = self.runs.get(&id) else {
            return false;
        };
        let Some(len) = run.answers.unanswered() else {
            return false;
        };
        let unread = match run.input.as_ref() {
            Some(input) => {
                let in_pipe = sys::readable_bytes(input.pipe.as_raw_fd()).unwrap_or(0);
                in_pipe + input.data.len() - input.written
            }
            None => run.unread_input,
        };
        len > 0 && unread >= len
    }

    /// `CloseInput`: the run's stdin is closed once what was fed is written; entries
    /// still held for its answer are dropped.
    pub(super) fn close_input(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        run.answers.drop_held();
        if let Some(input) = run.input.as_mut() {
            input.keep_open = false;
            self.pump_input(id);
        }
    }

    /// Forwards what the run has written to its output or replies pipe, within its
    /// budget and everyone's; a run over budget is paused (both pipes taken out of the
    /// epoll set, so the worker waits on them). Closes the pipe at end of file.
    pub(super) fn pump(&mut self, id: u64, kind: Kind) {
        if kind == Kind::Replies && self.output_waiting(id) {
            // What the run wrote to its output before this reply is reported first (the
            // two pipes are read in whatever order epoll gives): a worker that prints a
            // traceback, then answers `ok: false`, has it in that entry's output.
            self.pump(id, Kind::Output);
        }
        let now = Instant::now();
        let total = self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let own = run.budget.refill(now, RUN_RATE, RUN_BURST);
        let Some(pipe) = run.pipe(kind) else {
            return;
        };
        let allowed = own.min(total).min(READ_PER_TURN);
        let got = if allowed > 0 {
            read_some(pipe, &mut self.scratch[..allowed])
        } else {
            Got::Nothing
        };
        let n = if let Got::Data(n) = got { n } else { 0 };
        run.budget.spend(n);
        self.total_budget.spend(n);
        if let Got::End = got {
            self.close_pipe(id, kind);
        } else if n >= allowed && allowed < READ_PER_TURN {
            // Used up what it may send now: pause it (a full read within budget is
            // simply read again on the next wake-up, after the other runs).
            self.pause(id, now + OUTPUT_PAUSE);
        }
        if n > 0 {
            let data = self.scratch[..n].to_vec();
            let release = match (kind, self.runs.get_mut(&id)) {
                (Kind::Replies, Some(run)) => run.answers.replies(&data),
                _ => Vec::new(),
            };
            self.forward(id, kind, data);
            for entry in release {
                self.write_input(id, entry);
            }
        }
    }

    /// Whether the run's output pipe holds bytes not read yet.
    fn output_waiting(&self, id: u64) -> bool {
        let output = self.runs.get(&id).and_then(|r| r.output.as_ref());
        output.is_some_and(|o| sys::readable_bytes(o.as_raw_fd()).is_some_and(|n| n > 0))
    }

    /// At the run's exit, what its pipes still hold, whatever the budget: its output's
    /// last words (at most one read), and all it wrote to its descriptor 3.
    pub(super) fn last_words(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let mut chunks = Vec::new();
        if let Some(out) = run.output.as_mut() {
            if let Got::Data(n) = read_some(out, &mut self.scratch) {
                chunks.push((Kind::Output, self.scratch[..n].to_vec()));
            }
        }
        if let Some(replies) = run.replies.as_mut() {
            // What the pipe holds now (the leader is reaped: all it wrote is in),
            // and no more: a process it left behind may still hold fd 3 and write.
            let mut left = sys::readable_bytes(replies.as_raw_fd()).unwrap_or(DRAIN_WITHOUT_COUNT);
            while left > 0 {
                let Got::Data(n) = read_some(replies, &mut self.scratch[..left.min(READ_PER_TURN)])
                else {
                    break;
                };
                chunks.push((Kind::Replies, self.scratch[..n].to_vec()));
                left -= n;
            }
        }
        let now = Instant::now();
        self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        run.budget.refill(now, RUN_RATE, RUN_BURST);
        for (kind, data) in chunks {
            if let Some(run) = self.runs.get_mut(&id) {
                run.budget.spend(data.len());
                if kind == Kind::Replies {
                    // Answers read only now still release what was held, into the
                    // input left unwritten (see `entry_unread`).
                    for entry in run.answers.replies(&data) {
                        match run.input.as_mut() {
                            Some(input) => input.feed(entry),
                            None => run.unread_input += entry.len(),
                        }
                    }
                }
            }
            self.total_budget.spend(data.len());
            self.forward(id, kind, data);
        }
    }

    /// Reports what the run wrote. A run is reported started before its first output
    /// or reply: a run that wrote has exec'ed, so its launch is over even if not
    /// collected yet.
    fn forward(&mut self, id: u64, kind: Kind, data: Vec<u8>) {
        if self
            .runs
            .get(&id)
            .is_some_and(|r| self.starting.contains_key(&r.pid))
        {
            self.settle();
        }
        self.send(match kind {
            Kind::Replies => Report::Replies { run: id, data },
            _ => Report::Output { run: id, data },
        });
    }

    /// Closes the run's output or replies pipe (at its end of file).
    fn close_pipe(&mut self, id: u64, kind: Kind) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let pipe = match kind {
            Kind::Output => run.output.take(),
            Kind::Replies => run.replies.take(),
            Kind::Input => None,
        };
        if let Some(pipe) = pipe {
            // A paused run's pipes are out of the set already.
            if run.paused_until.is_none() {
                sys::unwatch(self.epfd, pipe.as_raw_fd());
            }
        }
    }

    /// Takes the run's output and replies pipes out of the epoll set until `at`.
    fn pause(&mut self, id: u64, at: Instant) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        if run.paused_until.is_some() {
            return;
        }
        run.paused_until = Some(at);
        for pipe in [&run.output, &run.replies].into_iter().flatten() {
            sys::unwatch(self.epfd, pipe.as_raw_fd());
        }
        self.paused.insert((at, id));
    }

    /// Puts paused pipes whose pause is over back into the epoll set.
    pub(super) fn resume_output(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.paused.first() {
            if at > now {
                break;
            }
            self.paused.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.paused_until == Some(at) {
                    run.paused_until = None;
                    for (pipe, kind) in [(&run.output, Kind::Output), (&run.replies, Kind::Replies)]
                    {
                        if let Some(pipe) = pipe {
                            sys::watch(self.epfd, pipe.as_raw_fd(), libc::EPOLLIN, token(id, kind));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// An `Input` on a fresh non-blocking pipe, and the pipe's read end.
    fn input(data: &[u8], keep_open: bool) -> (Input, File) {
        let (r, w) = sys::pipe_nonblocking().unwrap();
        // SAFETY: both ends were just created and are owned by nothing else.
        let (r, w) = unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) };
        (Input::new(w, data.to_vec(), keep_open), r)
    }

    fn read_all(r: &mut File) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn a_one_shot_input_is_done_once_written() {
        let (mut i, mut r) = input(b"entry", false);
        assert_eq!(i.pump(), Pumped::Done);
        assert_eq!(read_all(&mut r), b"entry");
        let (mut i, _r) = input(b"", false);
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn a_kept_open_input_takes_feeds_in_order_and_waits_when_full() {
        let (mut i, mut r) = input(b"first\n", true);
        assert_eq!(i.pump(), Pumped::Idle);
        // More than the pipe holds (64 KiB by default): the rest waits here.
        let big: Vec<u8> = (0..300_000u32).map(|n| n as u8).collect();
        i.feed(b"second\n".to_vec());
        i.feed(big.clone());
        assert_eq!(i.pump(), Pumped::Waiting);
        i.feed(b"last\n".to_vec());
        assert_eq!(i.pump(), Pumped::Waiting);
        let mut got = Vec::new();
        loop {
            got.extend(read_all(&mut r));
            match i.pump() {
                Pumped::Waiting => continue,
                p => {
                    assert_eq!(p, Pumped::Idle);
                    break;
                }
            }
        }
        got.extend(read_all(&mut r));
        let want = [&b"first\nsecond\n"[..], &big, b"last\n"].concat();
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        // Idle, nothing kept; closing it now is done at once.
        assert!(i.data.is_empty() && i.written == 0);
        i.keep_open = false;
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn feeding_compacts_what_was_written() {
        let (mut i, _r) = input(b"", true);
        i.data = b"abcdef".to_vec();
        i.written = 4;
        i.feed(b"gh".to_vec());
        assert_eq!((&i.data[i.written..], i.written), (&b"efgh"[..], 0));
        i.written = 1;
        i.feed(b"ij".to_vec());
        assert_eq!(&i.data[i.written..], b"fghij");
        i.written = i.data.len();
        i.feed(b"k".to_vec());
        assert_eq!((&i.data[..], i.written), (&b"k"[..], 0));
    }

    #[test]
    fn an_input_whose_reader_is_gone_is_done() {
        let (mut i, r) = input(b"", true);
        drop(r);
        assert_eq!(i.pump(), Pumped::Idle);
        i.feed(b"line\n".to_vec());
        // EPIPE (the helper ignores SIGPIPE, as the test harness does).
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn reads_tell_data_nothing_and_end() {
        let (r, w) = sys::pipe_nonblocking().unwrap();
        // SAFETY: both ends were just created and are owned by nothing else.
        let (mut r, mut w) = unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) };
        let mut buf = [0u8; 8];
        assert!(matches!(read_some(&mut r, &mut buf), Got::Nothing));
        w.write_all(b"abc").unwrap();
        assert!(matches!(read_some(&mut r, &mut buf), Got::Data(3)));
        drop(w);
        assert!(matches!(read_some(&mut r, &mut buf), Got::End));
    }
}
