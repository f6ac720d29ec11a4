//! An entry a queue of this node is working on: its fields, attempts, run, backoff,
//! what its runs said (result, progress) and its output, from the read until its
//! outcome.

use crate::supervisor::log::Log;
use crate::supervisor::runs::Run;
use crate::supervisor::stream::Fields;
use std::time::Instant;

/// An entry this node is working on (it is pending in the group until acked).
pub(in crate::supervisor) struct Entry {
    pub(in crate::supervisor) fields: Fields,
    /// This entry's attempt number (its delivery count in the group).
    pub attempts: u32,
    pub run: Option<Run>,
    pub(in crate::supervisor::queue) backoff_until: Option<Instant>,
    /// Backoff is over: claim it again and run it (next `flush`).
    pub(in crate::supervisor::queue) retry_due: bool,
    pub(in crate::supervisor::queue) timed_out: bool,
    /// Its run exited with a code of `no-restart-exit-codes`: not retried.
    pub(in crate::supervisor::queue) no_retry: bool,
    /// Waits for a free worker of its handler's pool, with its line (see `pools.rs`).
    pub(in crate::supervisor::queue) waiting: bool,
    pub(in crate::supervisor::queue) line: Option<Vec<u8>>,
    /// Given to this pool worker as its `next` entry: it runs when the worker answers.
    pub(in crate::supervisor::queue) queued_at: Option<u64>,
    pub last_exit: Option<i64>,
    pub log: Log,
    /// What the runs said on fd 3 (JSON texts), and a line not whole yet.
    pub result: Option<String>,
    pub progress: Option<String>,
    pub(in crate::supervisor::queue) said: Vec<u8>,
    /// When its first attempt started.
    pub(in crate::supervisor::queue) began: Option<Instant>,
    /// `STREAMWATCH.CANCEL`: it ends `cancelled` once nothing runs it.
    pub(in crate::supervisor::queue) cancelled: bool,
}

impl Entry {
    pub(in crate::supervisor::queue) fn new(fields: Fields, attempts: u32) -> Entry {
        Entry {
            fields,
            attempts,
            run: None,
            backoff_until: None,
            retry_due: false,
            timed_out: false,
            no_retry: false,
            waiting: false,
            line: None,
            queued_at: None,
            last_exit: None,
            log: Log::default(),
            result: None,
            progress: None,
            said: Vec::new(),
            began: None,
            cancelled: false,
        }
    }

    pub(in crate::supervisor) fn state(&self) -> &'static str {
        match &self.run {
            Some(r) => r.state(),
            None if self.backoff_until.is_some() || self.retry_due => "backoff",
            None => "starting",
        }
    }

    /// Its state in `STREAMWATCH.JOB`'s words: `queued`, `running` or `backoff`.
    pub(in crate::supervisor) fn status(&self) -> &'static str {
        match &self.run {
            Some(_) => "running",
            None if self.backoff_until.is_some() || self.retry_due => "backoff",
            None => "queued",
        }
    }
}
