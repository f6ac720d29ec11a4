//! The queue's side of worker pools (`pools.rs` is the workers' side): entries that
//! wait for a free worker, an entry held for a worker that takes it up when it answers
//! the one before, an entry a worker ended without running, and a worker's answer.

use super::{Queues, Run};
use crate::supervisor::log::Log;
use crate::supervisor::stream::{QueueKey, Sid};
use crate::supervisor::timers::Timer;
use crate::supervisor::Effects;
use std::time::Instant;

impl Queues {
    /// Workers of handler `name`'s pool are free: the entries waiting for one start.
    pub(in crate::supervisor) fn start_waiting(&mut self, name: &str, fx: &mut Effects) {
        let waiting: Vec<(QueueKey, Sid)> = self
            .queues
            .iter()
            .filter(|(_, q)| q.wanted && q.watch.handler.name == name)
            .flat_map(|(qk, q)| {
                let waiting = q.entries.iter().filter(|(_, e)| e.waiting);
                waiting.map(move |(sid, _)| (qk.clone(), *sid))
            })
            .collect();
        for (qk, sid) in waiting {
            if !fx.pools.can_take(name) {
                break; // the rest waits for the next free worker
            }
            self.start_entry(&qk, sid, fx);
        }
    }

    /// The pool worker that held the entry as its `next` answered the one before: the
    /// entry runs now, on `run` (the worker's).
    pub(in crate::supervisor) fn promoted(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        run: Run,
        fx: &mut Effects,
    ) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let h = q.watch.handler.clone();
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        if e.queued_at != Some(run.id) || e.run.is_some() {
            return;
        }
        e.queued_at = None;
        if !h.timeout.is_zero() {
            let timer = Timer::Timeout(qk.clone(), sid, run.id);
            fx.timers.push(Instant::now() + h.timeout, timer);
        }
        let run = e.run.insert(run);
        if e.cancelled {
            Queues::stop_run(run, false, fx); // cancelled while it was held
        }
    }

    /// Pool worker `worker` ended without running the entry (held as its `next`, or
    /// left unread in its stdin): the entry waits for another worker, same attempt.
    pub(in crate::supervisor) fn requeue(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        worker: u64,
        fx: &mut Effects,
    ) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        let held = e.queued_at == Some(worker) && e.run.is_none();
        if !held && e.run.take_if(|r| r.id == worker).is_none() {
            return;
        }
        e.queued_at = None;
        e.log = Log::default();
        match (e.cancelled, q.wanted) {
            (true, _) => self.cancelled(qk, sid, fx),
            (false, true) => e.waiting = true,
            (false, false) => self.stopped(qk, sid), // its queue stopped meanwhile
        }
    }

    /// A pool worker answered for the entry (see `pools.rs`): `error` is `None` if it
    /// succeeded. `live`: this node runs jobs now.
    pub(in crate::supervisor) fn answered(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        worker: u64,
        (error, result): (Option<String>, Option<String>),
        live: bool,
        fx: &mut Effects,
    ) {
        let Some((run, wanted, _)) = self.take_run(qk, sid, worker) else {
            return;
        };
        if let Some(e) = self.entry_mut(qk, sid) {
            e.result = result.or(e.result.take());
        }
        if !wanted || !live {
            self.stopped(qk, sid);
            return;
        }
        let mut fields = vec![("pid", run.pid.unwrap_or(0).to_string().into_bytes())];
        if let Some(error) = &error {
            fields.push(("error", error.clone().into_bytes()));
        }
        self.settle(qk, sid, error, ("error", fields), fx);
    }
}
