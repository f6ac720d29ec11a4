//! How an entry's work ends and what is kept of it: the outcome (`crate::outcomes`)
//! built from the entry (attempts, result, progress, output), what a run says on its
//! fd 3 (a per-entry run's result and progress; a pool worker's come with its answer),
//! and `STREAMWATCH.CANCEL`: a queued entry is acknowledged without running, a running
//! one is stopped first.

use super::{Entry, Queue, Queues};
use crate::outcomes::{self, Outcome, CANCELLED};
use crate::reply::parse_run_line;
use crate::supervisor::stream::{Fields, QueueKey, Sid};
use crate::supervisor::Effects;

/// What becomes of an entry whose work is over, done at the next `flush`: its outcome
/// is kept, and it is acknowledged (unless `ack` is false: cancelled before it was
/// read, so it is acknowledged when it is); a dead-lettered one first goes to the
/// dead-letter stream.
pub(in crate::supervisor) struct Done {
    pub outcome: Outcome,
    /// The outcome as kept (`outcomes::Kept`), made here, off the GIL hold that
    /// writes it; none while no outcome is kept (`outcomes-max 0`).
    pub kept: Option<outcomes::Kept>,
    pub dead: Option<DeadLetter>,
    pub ack: bool,
}

/// A dead-letter entry: the entry's fields, its last exit and output.
pub(in crate::supervisor) struct DeadLetter {
    pub fields: Fields,
    pub last_exit: Option<i64>,
    pub output: Vec<u8>,
}

/// The most of a run's fd 3 line kept while it is not whole.
const MAX_RUN_LINE: usize = 64 << 10;

/// The outcome of entry `sid` of `q`, ending now in `state`.
pub(super) fn outcome_of(
    q: &Queue,
    sid: Sid,
    e: Option<&Entry>,
    state: &str,
    error: Option<String>,
) -> Outcome {
    let json = |t: &Option<String>| t.as_deref().map(outcomes::json_kept);
    Outcome {
        id: sid.to_string(),
        group: String::from_utf8_lossy(&q.watch.spec.stream.group).into_owned(),
        state: state.to_string(),
        watch: String::from_utf8_lossy(&q.watch.spec.pattern).into_owned(),
        attempts: e.map_or(0, |e| e.attempts),
        result: e.and_then(|e| json(&e.result)),
        error: error.map(|e| outcomes::cut(&e)),
        progress: e.and_then(|e| json(&e.progress)),
        output: e.map_or(String::new(), |e| {
            String::from_utf8_lossy(&e.log.tail(outcomes::OUTPUT_BYTES)).into_owned()
        }),
        finished_ms: outcomes::now_ms(),
        duration_ms: e
            .and_then(|e| e.began)
            .map_or(0, |t| t.elapsed().as_millis() as u64),
    }
}

/// What `Queues::cancel` did.
pub(in crate::supervisor) enum Cancel {
    /// Cancelled (a running entry: being stopped).
    Done,
    /// Not an entry this node holds: it may still be in the stream, unread or pending
    /// for another consumer (`cancel_unread`).
    NotHeld,
}

impl Queues {
    /// A per-entry run wrote `data` on its fd 3: lines of `{"result": …}` and
    /// `{"progress": …}` (other lines are ignored; its exit decides success).
    pub(in crate::supervisor) fn run_said(&mut self, qk: &QueueKey, sid: Sid, data: &[u8]) {
        let Some(e) = self.entry_mut(qk, sid) else {
            return;
        };
        e.said.extend_from_slice(data);
        while let Some(end) = e.said.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = e.said.drain(..=end).collect();
            if let Ok(said) = parse_run_line(&line[..end]) {
                e.result = said.result.or(e.result.take());
                e.progress = said.progress.or(e.progress.take());
            }
        }
        if e.said.len() > MAX_RUN_LINE {
            e.said.clear();
        }
    }

    /// A pool worker reported progress on the entry.
    pub(in crate::supervisor) fn progressed(&mut self, qk: &QueueKey, sid: Sid, value: String) {
        if let Some(e) = self.entry_mut(qk, sid) {
            e.progress = Some(value);
        }
    }

    pub(super) fn entry_mut(&mut self, qk: &QueueKey, sid: Sid) -> Option<&mut Entry> {
        self.queues.get_mut(qk)?.entries.get_mut(&sid)
    }

    /// `STREAMWATCH.CANCEL` of entry `sid` of stream `key`, in every queue of it that
    /// holds the entry: one waiting (for a slot, a worker or its retry) or read ahead
    /// is acknowledged without running; a running one (or one given to a pool worker
    /// as its next) is stopped, and acknowledged when it has ended.
    pub(in crate::supervisor) fn cancel(
        &mut self,
        db: i32,
        key: &[u8],
        sid: Sid,
        fx: &mut Effects,
    ) -> Cancel {
        let mut held = false;
        let keys: Vec<QueueKey> = self
            .queues
            .keys()
            .filter(|qk| qk.db == db && qk.key == key)
            .cloned()
            .collect();
        for qk in keys {
            let Some(q) = self.queues.get_mut(&qk) else {
                continue;
            };
            if let Some(at) = q.ahead.iter().position(|(s, _)| *s == sid) {
                q.ahead.remove(at);
                let outcome = outcome_of(q, sid, None, CANCELLED, None);
                q.finish(&qk, sid, outcome, true, fx);
                self.dirty.insert(qk.clone());
                held = true;
                continue;
            }
            let Some(e) = q.entries.get_mut(&sid) else {
                continue;
            };
            held = true;
            e.cancelled = true;
            match e.run.as_mut() {
                Some(run) => {
                    if !run.stopping {
                        Queues::stop_run(run, false, fx);
                    }
                }
                None if e.queued_at.is_some() => {} // stopped when its worker takes it up
                None => self.cancelled(&qk, sid, fx),
            }
        }
        match held {
            true => Cancel::Done,
            false => Cancel::NotHeld,
        }
    }

    /// The entry was cancelled and nothing runs it now: it is done with, `cancelled`.
    pub(super) fn cancelled(&mut self, qk: &QueueKey, sid: Sid, fx: &mut Effects) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let Some(e) = q.entries.remove(&sid) else {
            return;
        };
        let outcome = outcome_of(q, sid, Some(&e), CANCELLED, None);
        q.finish(qk, sid, outcome, true, fx);
        self.dirty.insert(qk.clone());
        self.start_ahead(qk, fx);
    }

    /// `STREAMWATCH.CANCEL` of an entry no queue holds, which `unread` says is in the
    /// stream and not acknowledged by the group of the queue's watch: its outcome is
    /// kept now, and it is acknowledged without running when it is read or claimed.
    /// Returns whether some queue of the stream took it.
    pub(in crate::supervisor) fn cancel_unread(
        &mut self,
        db: i32,
        key: &[u8],
        sid: Sid,
        unread: impl Fn(&[u8]) -> bool,
        fx: &mut Effects,
    ) -> bool {
        let mut taken = false;
        for (qk, q) in self.queues.iter_mut() {
            if qk.db != db || qk.key != key || !unread(&q.watch.spec.stream.group) {
                continue;
            }
            if q.cancelled.len() >= MAX_CANCELLED {
                continue;
            }
            q.cancelled.insert(sid);
            let outcome = outcome_of(q, sid, None, CANCELLED, None);
            q.finish(qk, sid, outcome, false, fx);
            self.dirty.insert(qk.clone());
            taken = true;
        }
        taken
    }
}

/// The most entries a queue remembers as cancelled before they were read.
const MAX_CANCELLED: usize = 100_000;

impl Queue {
    /// The entry's outcome goes with the next `flush` (see `Done`); a cancel is told
    /// in the events stream now.
    pub(super) fn finish(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        outcome: Outcome,
        ack: bool,
        fx: &mut Effects,
    ) {
        self.finish_dead(qk, sid, outcome, None, ack, fx);
    }

    pub(super) fn finish_dead(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        outcome: Outcome,
        dead: Option<DeadLetter>,
        ack: bool,
        fx: &mut Effects,
    ) {
        if outcome.state == CANCELLED {
            let attempts = ("attempts", outcome.attempts.to_string().into_bytes());
            fx.events
                .entry("cancelled", qk, &self.watch, sid, vec![attempts]);
        }
        let kept = (outcomes::max_kept() > 0).then(|| outcomes::Kept::of(&outcome));
        let done = Done {
            outcome,
            kept,
            dead,
            ack,
        };
        self.done.push((sid, done));
    }
}
