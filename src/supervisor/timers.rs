//! Every deadline the supervisor keeps, in one set: the loop sleeps until the soonest
//! (`next`), then asks which are due. Two kinds:
//! - per job or entry (`Timer`), as many as there are: a backoff over, a run reaching
//!   its handler's `timeout-ms` or (one timer per run, set again when it fires early)
//!   its `heartbeat-ms` of silence. A timer that has become moot (the job went, the run
//!   ended) is not taken out; whoever it is for checks it still applies when it fires.
//! - one of each (`Deadline`), set and cleared in place: restarting the helper, polling
//!   the cluster's slot ownership, the queues' group figures, keys waiting for their
//!   pace, publishing the counts, writing the record of live runs, sending the requests
//!   the helper has not taken yet, checking the gate.

use super::jobs::JobKey;
use super::stream::{QueueKey, Sid};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A deadline of one job, entry or run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A hash job's backoff is over.
    Job(JobKey),
    /// A stream entry's backoff is over.
    Entry(QueueKey, Sid),
    /// A stream entry's run (the id) reached the handler's `timeout-ms`.
    Timeout(QueueKey, Sid, u64),
    /// Run `id` may have been silent for its handler's `heartbeat-ms`.
    Heartbeat(u64),
    /// A pool's backoff is over (the handler's name).
    Pool(String),
    /// A recycled pool worker (handler, run id) had its grace to finish.
    Recycle(String, u64),
}

/// A deadline of the supervisor itself: at most one of each is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// Start a helper again (see `Runs::helper_failed`).
    Helper = 0,
    /// Cluster mode: read which slots this node owns.
    SlotPoll,
    /// Some queue's group figures are due (see `Queues::publish`).
    QueueStats,
    /// The first hinted key waiting for its pace (see `Pacer`).
    Paced,
    /// The counts for STATUS/INFO were skipped and are due.
    Publish,
    /// The record of live runs has a write pending.
    Record,
    /// Requests wait for the helper to read them.
    Outbox,
    /// Writes were paused (CLIENT PAUSE WRITE, FAILOVER): try again then.
    Writes,
    /// A client in `STREAMWATCH.WAIT` reaches its timeout, or the entries waited for
    /// are due a look (see `Waiters`).
    Waits,
    /// Check the gate again (see `gate.rs`).
    Gate,
}

const DEADLINES: usize = 10;

#[derive(Default)]
pub(super) struct Timers {
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    deadlines: [Option<Instant>; DEADLINES],
}

impl Timers {
    pub(super) fn push(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    /// Sets (or with `None` clears) a deadline.
    pub(super) fn set(&mut self, d: Deadline, at: Option<Instant>) {
        self.deadlines[d as usize] = at;
    }

    /// The soonest deadline of all, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        let first = self.timers.peek().map(|Reverse((at, _))| *at);
        self.deadlines.iter().flatten().copied().chain(first).min()
    }

    /// Whether the deadline `d` is set (due or not).
    pub(super) fn is_set(&self, d: Deadline) -> bool {
        self.deadlines[d as usize].is_some()
    }

    /// Whether the deadline `d` is set and has come; if so it is cleared.
    pub(super) fn due(&mut self, d: Deadline, now: Instant) -> bool {
        let slot = &mut self.deadlines[d as usize];
        if slot.is_some_and(|at| at <= now) {
            *slot = None;
            return true;
        }
        false
    }

    /// Takes the next timer whose time has come (with the time it was set for).
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.timers.peek() {
            Some(Reverse((at, _))) if *at <= now => self.timers.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_soonest_deadline_of_either_kind_comes_first() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.push(ms(30), Timer::Pool("1".into()));
        t.push(ms(10), Timer::Pool("2".into()));
        t.set(Deadline::Record, Some(ms(20)));
        t.set(Deadline::Helper, Some(ms(5)));
        assert_eq!(t.next(), Some(ms(5)));
        t.set(Deadline::Helper, None);
        assert_eq!(t.next(), Some(ms(10)));
        // (now, what is due then, in order)
        let table: [(u64, &[Timer], bool); 3] = [
            (9, &[], false),
            (20, &[Timer::Pool("2".into())], true),
            (40, &[Timer::Pool("1".into())], false),
        ];
        for (now, want, record) in table {
            let mut got = Vec::new();
            while let Some((_, timer)) = t.pop_due(ms(now)) {
                got.push(timer);
            }
            assert_eq!(got, want, "timers due at {now} ms");
            assert_eq!(
                t.due(Deadline::Record, ms(now)),
                record,
                "record at {now} ms"
            );
        }
        assert_eq!(t.next(), None, "a due deadline is cleared");
    }
}
