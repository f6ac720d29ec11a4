//! Stream watches: every entry of a watched stream is a job, run at least once.
//!
//! Progress lives in the stream itself, in a consumer group (default `streamwatch`,
//! created at `0` so the backlog is processed): an entry is read with XREADGROUP (it
//! is then pending, in the group's PEL), run, and acknowledged with XACK when its run
//! exits 0. A failed run is retried after backoff (XCLAIM, which counts the delivery
//! in the PEL); after `MAX-ATTEMPTS` it is added to the dead-letter stream, then
//! acknowledged. So XINFO/XPENDING show the truth, RDB/AOF persist it and replicas
//! follow it, and after a restart, a failover, a pause or an UNWATCH the pending
//! entries are claimed back and run again ("recovering" below).
//!
//! Backpressure: a queue runs at most `CONCURRENCY` entries and holds at most as many
//! more read ahead (delivered to this consumer, not started yet), so a backlog of
//! millions costs nothing here. (A queue whose handler is a pool also holds up to one
//! entry per running entry as its worker's `next`, see `pools.rs`: given to the worker
//! the moment it answers, not running until then.) The entries read ahead are what keeps the slots busy:
//! when a run ends, the next entry starts at once, and its acknowledgement and the
//! next read wait for the turn's one GIL hold instead of the other way round.
//!
//! Every Redis call is made in `flush` (`queue/flush.rs`: one GIL hold per loop turn
//! for all acks, dead-letters, claims and reads of all queues), through `stream.rs`.
//! The entries of a pool handler's queue, and the answers of its workers, are in
//! `queue/pooled.rs`.

use super::entry_text;
use super::pools::{self, Placed};
use super::runs::{run_end, End, Run, RunOf};
use super::stream::{Fields, QueueKey, Sid};
use super::timers::Timer;
use super::Effects;
use crate::outcomes;
use crate::stats;
use crate::watch::Watch;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod entry;
mod figures;
mod finish;
mod flush;
mod hung;
mod pooled;

pub(super) use entry::Entry;
pub(super) use finish::Cancel;
use finish::{outcome_of, DeadLetter, Done};

/// The most of an entry's last output lines its dead-letter entry carries.
const DEAD_OUTPUT: usize = 8 << 10;

pub(super) struct Queue {
    pub watch: Arc<Watch>,
    pub entries: BTreeMap<Sid, Entry>,
    /// Read (pending in the group for this consumer) and not started, oldest first; at
    /// most `CONCURRENCY`. Dropped whenever the queue stops or rescans: the group still
    /// has them pending, so a rescan claims them back.
    ahead: VecDeque<(Sid, Fields)>,
    done: Vec<(Sid, Done)>,
    /// Cancelled before this node read them: acknowledged, not run, when they are.
    cancelled: BTreeSet<Sid>,
    /// Whether the stream's set of entries cancelled before they were read exists, once
    /// asked (see `outcomes::take_cancelled`).
    cancels: Option<bool>,
    /// An outcome could not be kept (logged once).
    warned: bool,
    /// A dead letter could not be written (logged once, until one is again: a client
    /// that made the dead-letter key a string must not make a log line per entry).
    dead_letter_failing: bool,
    /// Outcomes kept since their expiry was last set (`outcomes::tend`), and when; how
    /// many the recent generation holds, once known (`outcomes::keep_all`).
    kept_since: usize,
    tended_at: Option<Instant>,
    kept_len: Option<i64>,
    /// False once the watch no longer applies here (UNWATCH, pause, demotion, key
    /// gone): its runs are stopped, nothing new starts; it goes when they have ended.
    wanted: bool,
    /// Claiming the group's pending entries before reading new ones; `after` is the
    /// last pending id looked at.
    recovering: bool,
    after: Option<Sid>,
    /// The group's figures, read at most every `STATS_EVERY`.
    pending: i64,
    lag: i64,
    stats_at: Option<Instant>,
}

const STATS_EVERY: Duration = Duration::from_millis(200);
/// How often at most a queue sets the expiry of its outcomes.
const TEND_EVERY: Duration = Duration::from_secs(1);

impl Queue {
    fn new(watch: Arc<Watch>) -> Queue {
        Queue {
            watch,
            entries: BTreeMap::new(),
            ahead: VecDeque::new(),
            done: Vec::new(),
            cancelled: BTreeSet::new(),
            cancels: None,
            warned: false,
            dead_letter_failing: false,
            kept_since: 0,
            tended_at: None,
            kept_len: None,
            wanted: true,
            recovering: true,
            after: None,
            pending: 0,
            lag: 0,
            stats_at: None,
        }
    }

    /// How many more entries the queue may take: `CONCURRENCY` in slots (running or
    /// in backoff), and for a pool handler as many more (at most one per worker)
    /// waiting for a worker or given to one as its `next`.
    fn free(&self) -> usize {
        let c = self.watch.spec.stream.concurrency as usize;
        let pool = self.watch.handler.pool as usize;
        (c + c.min(pool)).saturating_sub(self.entries.len())
    }

    /// Whether entry `sid` may take a slot now: fewer than `CONCURRENCY` others hold
    /// one (running, or in backoff).
    fn may_run(&self, sid: Sid) -> bool {
        let others = self.entries.iter().filter(|(s, _)| **s != sid);
        let held = others.filter(|(_, e)| !e.waiting && e.queued_at.is_none());
        held.count() < self.watch.spec.stream.concurrency as usize
    }

    /// How many more entries may be read ahead.
    fn ahead_room(&self) -> usize {
        (self.watch.spec.stream.concurrency as usize).saturating_sub(self.ahead.len())
    }

    /// The entries of `got` this queue holds already (running, waiting to run again,
    /// or read ahead): none, unless the group was made again (XGROUP DESTROY, SETID)
    /// and delivered them anew. O(got) when reads follow one another, as they do.
    fn held_of(&self, got: &[(Sid, Fields)]) -> BTreeSet<Sid> {
        let newest = self.ahead.back().map(|(s, _)| *s);
        let ahead: BTreeSet<Sid> = match got.first() {
            Some((first, _)) if newest.is_some_and(|n| *first <= n) => {
                self.ahead.iter().map(|(s, _)| *s).collect()
            }
            _ => BTreeSet::new(),
        };
        let held = |s: &Sid| self.entries.contains_key(s) || ahead.contains(s);
        got.iter().map(|(s, _)| *s).filter(held).collect()
    }

    /// The oldest entry read ahead, now taking a slot; `None` if there is none or no
    /// free slot.
    fn take_ahead(&mut self) -> Option<Sid> {
        if !self.wanted || self.free() == 0 {
            return None;
        }
        let (sid, fields) = self.ahead.pop_front()?;
        self.entries.insert(sid, Entry::new(fields, 1));
        Some(sid)
    }

    /// Look at the group's pending entries again (from the start) before new ones. The
    /// entries read ahead are among them.
    fn rescan(&mut self) {
        self.recovering = true;
        self.after = None;
        self.ahead.clear();
    }

    fn live_runs(&self) -> impl Iterator<Item = &Run> {
        self.entries.values().filter_map(|e| e.run.as_ref())
    }

    /// The entry (taken out of `entries`, or `None` if it never ran here, with its
    /// `fields` and attempts) is done with: it goes to the dead-letter stream at the
    /// next `flush`, with the last of its output.
    fn dead_letter(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        (e, fields, attempts): (Option<Entry>, Fields, u32),
        error: String,
        fx: &mut Effects,
    ) {
        let mut outcome = outcome_of(self, sid, e.as_ref(), outcomes::DEAD, Some(error));
        outcome.attempts = attempts;
        let dead = DeadLetter {
            fields,
            last_exit: e.as_ref().and_then(|e| e.last_exit),
            output: e.map_or(Vec::new(), |e| e.log.tail(DEAD_OUTPUT)),
        };
        self.finish_dead(qk, sid, outcome, Some(dead), true, fx);
    }

    /// Whether the outcomes' expiry is due: some were kept since it was last set, a
    /// second ago or more.
    fn tend_due(&self) -> bool {
        self.kept_since > 0 && self.tended_at.is_none_or(|t| t.elapsed() >= TEND_EVERY)
    }

    /// Whether the next `flush` has anything to do for this queue.
    fn has_work(&self, now: Instant) -> bool {
        self.tend_due()
            || !self.done.is_empty()
            || self.entries.values().any(|e| e.retry_due)
            || (self.wanted && self.free() > 0)
            || self.stats_at.is_none_or(|t| now - t >= STATS_EVERY)
    }
}

/// Every queue (one per stream watch and stream).
#[derive(Default)]
pub(super) struct Queues {
    pub queues: BTreeMap<QueueKey, Queue>,
    /// Queues with work for the next `flush` (one GIL hold for all).
    dirty: BTreeSet<QueueKey>,
    /// When some queue's group figures are next due (see `publish`).
    pub stats_due: Option<Instant>,
    /// The outcomes kept since the last `take_finished`, for the clients waiting.
    finished: Vec<(i32, Vec<u8>, Sid, outcomes::Outcome)>,
}

impl Queues {
    /// Whether a `flush` is due now.
    pub(super) fn has_work(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The outcomes kept by the last `flush`es: `(db, key, id, outcome)`.
    pub(super) fn take_finished(&mut self) -> Vec<(i32, Vec<u8>, Sid, outcomes::Outcome)> {
        std::mem::take(&mut self.finished)
    }

    /// The handlers of the queues that run.
    pub(super) fn handlers(&self) -> BTreeSet<String> {
        let wanted = self.queues.values().filter(|q| q.wanted);
        wanted.map(|q| q.watch.handler.name.clone()).collect()
    }

    /// Whether watch `watch` has a queue on stream `key`.
    pub(super) fn consumes(&self, db: i32, key: &[u8], watch: u64) -> bool {
        let key = key.to_vec();
        self.queues.contains_key(&QueueKey { db, key, watch })
    }

    pub(super) fn has_queue(&self, db: i32, key: &[u8]) -> bool {
        self.queues.keys().any(|q| q.db == db && q.key == key)
    }

    /// The streams that have queues.
    pub(super) fn keys(&self) -> impl Iterator<Item = (i32, Vec<u8>)> + '_ {
        self.queues.keys().map(|q| (q.db, q.key.clone()))
    }

    pub(super) fn live_runs(&self) -> impl Iterator<Item = &Run> {
        self.queues.values().flat_map(Queue::live_runs)
    }

    /// The in-flight entry `sid` of stream `key`, with its queue.
    pub(super) fn find(
        &self,
        db: i32,
        key: &[u8],
        sid: Sid,
    ) -> Option<(&QueueKey, &Queue, &Entry)> {
        self.queues.iter().find_map(|(qk, q)| {
            let e = q
                .entries
                .get(&sid)
                .filter(|_| qk.db == db && qk.key == key)?;
            Some((qk, q, e))
        })
    }

    /// The outcome of entry `sid` of `key` that the next flush keeps, if any.
    pub(super) fn finishing(&self, db: i32, key: &[u8], sid: Sid) -> Option<outcomes::Outcome> {
        let mut queues = self.queues.iter();
        queues.find_map(|(qk, q)| {
            let done = q.done.iter().filter(|_| qk.db == db && qk.key == key);
            done.filter(|(s, _)| *s == sid)
                .map(|(_, d)| d.outcome.clone())
                .next()
        })
    }

    /// A look at `key`: `covering` are the stream watches that cover it now.
    pub(super) fn reconcile(
        &mut self,
        db: i32,
        key: &[u8],
        covering: &[Arc<Watch>],
        fx: &mut Effects,
    ) {
        let existing: Vec<QueueKey> = self
            .queues
            .keys()
            .filter(|q| q.db == db && q.key == key)
            .cloned()
            .collect();
        for qk in existing {
            if !covering.iter().any(|w| w.id == qk.watch) {
                self.drop_queue(&qk, fx);
            }
        }
        for w in covering {
            let qk = QueueKey {
                db,
                key: key.to_vec(),
                watch: w.id,
            };
            let q = self
                .queues
                .entry(qk.clone())
                .or_insert_with(|| Queue::new(w.clone()));
            if !q.wanted {
                q.wanted = true;
                q.rescan();
            }
            self.dirty.insert(qk);
        }
    }

    /// Stops a queue's runs (their entries stay pending in the group, to be claimed
    /// again); the queue goes when they have ended.
    fn drop_queue(&mut self, qk: &QueueKey, fx: &mut Effects) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        q.wanted = false;
        q.ahead.clear(); // pending in the group: claimed back when the queue runs again
        q.entries.retain(|_, e| match &mut e.run {
            Some(run) => {
                if !run.stopping {
                    Queues::stop_run(run, false, fx);
                }
                true
            }
            None => false,
        });
        self.forget_if_idle(qk);
    }

    fn forget_if_idle(&mut self, qk: &QueueKey) {
        if self
            .queues
            .get(qk)
            .is_some_and(|q| !q.wanted && q.entries.is_empty() && q.done.is_empty())
        {
            self.queues.remove(qk);
            self.dirty.remove(qk);
        }
    }

    /// The queues of the watches for which `stop` is true stop (UNWATCH; every watch:
    /// pause, demotion); returns how many runs stop.
    pub(super) fn stop_watches(&mut self, stop: impl Fn(u64) -> bool, fx: &mut Effects) -> i64 {
        let gone: Vec<QueueKey> = self
            .queues
            .keys()
            .filter(|k| stop(k.watch))
            .cloned()
            .collect();
        let mut running = 0;
        for k in gone {
            running += self.queues[&k].live_runs().count();
            self.drop_queue(&k, fx);
        }
        running as i64
    }

    /// Starts the entry's run (its attempt number is already counted): a process of its
    /// own, or, for a pool handler, the entry given to a free worker (or waiting for
    /// one, see `start_waiting`).
    fn start_entry(&mut self, qk: &QueueKey, sid: Sid, fx: &mut Effects) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let h = q.watch.handler.clone();
        let may_run = q.may_run(sid);
        // With CONCURRENCY 1 entries run in order: none waits in a worker behind
        // another, which would run before the other's retry.
        let may_queue = q.watch.spec.stream.concurrency > 1;
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        e.backoff_until = None;
        e.timed_out = false;
        e.waiting = false;
        e.queued_at = None;
        e.began.get_or_insert_with(Instant::now);
        let run = if h.pool > 0 {
            let line = e
                .line
                .take()
                .unwrap_or_else(|| entry_text::entry_line(qk, sid, e.attempts, &e.fields));
            if line.len() > pools::MAX_ENTRY_LINE {
                let error = format!(
                    "the entry is {} bytes as a JSON line; a pool worker takes at most {}",
                    line.len(),
                    pools::MAX_ENTRY_LINE
                );
                let fields = vec![("error", error.clone().into_bytes())];
                self.settle(qk, sid, Some(error), ("spawn-error", fields), fx);
                return;
            }
            let entry = (qk.clone(), sid);
            match fx
                .pools
                .dispatch(&h, entry, &line, (may_run, may_queue), fx.runs)
            {
                Placed::Running(run) => run,
                Placed::Next(worker) => {
                    e.queued_at = Some(worker);
                    return;
                }
                Placed::Waiting => {
                    e.waiting = true;
                    e.line = Some(line); // encoded once per attempt
                    return;
                }
            }
        } else {
            let db = qk.db.to_string();
            let id = sid.to_string();
            let names: Vec<(String, &[u8])> = e
                .fields
                .iter()
                .filter_map(|(f, v)| {
                    let name = format!("{{field:{}}}", std::str::from_utf8(f).ok()?);
                    Some((name, v.as_slice()))
                })
                .collect();
            let mut vars: Vec<(&str, &[u8])> = vec![
                ("{key}", &qk.key),
                ("{id}", id.as_bytes()),
                ("{db}", db.as_bytes()),
            ];
            vars.extend(names.iter().map(|(n, v)| (n.as_str(), *v)));
            let env = vec![
                (b"STREAMWATCH_KEY".to_vec(), qk.key.clone()),
                (b"STREAMWATCH_DB".to_vec(), db.as_bytes().to_vec()),
                (b"STREAMWATCH_ID".to_vec(), id.as_bytes().to_vec()),
                (
                    b"STREAMWATCH_ATTEMPT".to_vec(),
                    e.attempts.to_string().into_bytes(),
                ),
                (b"STREAMWATCH_WATCH".to_vec(), q.watch.spec.pattern.clone()),
                (b"STREAMWATCH_HANDLER".to_vec(), h.name.clone().into_bytes()),
            ];
            let stdin = entry_text::entry_json(&e.fields);
            let owner = RunOf::Entry(qk.clone(), sid);
            fx.runs.start_entry(owner, &h, &vars, env, stdin)
        };
        if !h.timeout.is_zero() {
            let timer = Timer::Timeout(qk.clone(), sid, run.id);
            fx.timers.push(Instant::now() + h.timeout, timer);
        }
        e.run = Some(run);
    }

    /// Stops the entry's run: its process, or the pool worker it is in (which cannot
    /// be told to drop one entry); `failed`: the worker counts as failing (timed out).
    fn stop_run(run: &mut Run, failed: bool, fx: &mut Effects) {
        // By whose run it is, not by what the handler is now: a RELOAD may have made a
        // per-entry handler a pool, or the reverse, while the run went on.
        match fx.runs.owner(run.id) {
            Some(RunOf::Worker(name)) => {
                let name = name.clone();
                fx.pools.stop_worker(&name, run.id, failed, fx.runs);
                run.stopping = true;
            }
            _ => fx.runs.stop(run),
        }
    }

    /// Run `id` of the entry reached its handler's `timeout-ms`: it is stopped, and its
    /// end counts as a failed attempt.
    pub(super) fn time_out(&mut self, qk: &QueueKey, sid: Sid, id: u64, fx: &mut Effects) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let h = q.watch.handler.clone();
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        // The run of this timer (a pool worker may have been given the entry again).
        let due = |r: &&mut Run| r.id == id && !r.stopping && r.started.elapsed() >= h.timeout;
        if let Some(run) = e.run.as_mut().filter(due) {
            e.timed_out = true;
            Queues::stop_run(run, true, fx);
        }
    }

    /// The helper reported the run's process.
    pub(super) fn started(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        id: u64,
        pid: i32,
        start: Option<u64>,
    ) {
        let run = self
            .queues
            .get_mut(qk)
            .and_then(|q| q.entries.get_mut(&sid))
            .and_then(|e| e.run.as_mut().filter(|r| r.id == id));
        if let Some(r) = run {
            r.spawned(pid, start);
        }
    }

    pub(super) fn output(&mut self, qk: &QueueKey, sid: Sid, data: &[u8]) {
        if let Some(q) = self.queues.get_mut(qk) {
            let cap = q.watch.handler.log_lines();
            if let Some(e) = q.entries.get_mut(&sid) {
                e.log.push(data, cap);
            }
        }
    }

    /// Run `id` of the entry ended; `live`: this node runs jobs now (a primary, not
    /// paused, with a helper); `pooled`: the run was a pool worker's (said by the
    /// run's owner, not by the handler, which a RELOAD may have turned into a pool or
    /// out of one meanwhile). Success is acknowledged; a failure is retried after
    /// backoff or, at its last attempt, dead-lettered.
    pub(super) fn run_ended(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        id: u64,
        end: End,
        (live, pooled): (bool, bool),
        fx: &mut Effects,
    ) {
        let Some((run, wanted, timed_out)) = self.take_run(qk, sid, id) else {
            return;
        };
        let mut r = run_end(&run, end, timed_out);
        if pooled && r.error.is_none() {
            // A pool worker that ends, even with 0, has not answered for its entry.
            r.error = Some("the pool worker exited (code 0) before answering".into());
        }
        if let Some(q) = self.queues.get_mut(qk) {
            let no_retry = hung::no_retry(&q.watch.handler, &run, &mut r, timed_out);
            if let Some(e) = q.entries.get_mut(&sid) {
                e.last_exit = r.exit.or(e.last_exit);
                e.no_retry = no_retry;
            }
        }
        let cancelled = self.entry_mut(qk, sid).is_some_and(|e| e.cancelled);
        if cancelled && live {
            self.cancelled(qk, sid, fx);
            return;
        }
        if r.stopping && timed_out.is_none() && run.hung.is_none() || !wanted || !live {
            self.stopped(qk, sid);
            return;
        }
        let mut fields = r.fields;
        if let Some(error) = &r.error {
            fields.push(("error", error.clone().into_bytes()));
        }
        self.settle(qk, sid, r.error, (r.event, fields), fx);
    }

    /// The entry's run `id`, taken from it (its log finished), and what the end of the
    /// run depends on: whether the queue is still wanted, and the handler's timeout if
    /// the run was stopped for reaching it.
    fn take_run(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        id: u64,
    ) -> Option<(Run, bool, Option<Duration>)> {
        let q = self.queues.get_mut(qk)?;
        let e = q.entries.get_mut(&sid)?;
        let run = e.run.take_if(|r| r.id == id)?;
        e.log.finish(q.watch.handler.log_lines());
        Some((
            run,
            q.wanted,
            e.timed_out.then_some(q.watch.handler.timeout),
        ))
    }

    /// The entry's run was stopped by us (UNWATCH, pause, demotion): no outcome; the
    /// entry stays pending in the group and is claimed again when the queue runs again.
    fn stopped(&mut self, qk: &QueueKey, sid: Sid) {
        if let Some(q) = self.queues.get_mut(qk) {
            q.entries.remove(&sid);
            if q.wanted {
                q.rescan();
                self.dirty.insert(qk.clone());
            }
        }
        self.forget_if_idle(qk);
    }

    /// The one outcome of an attempt, whatever ran it: `error` is `None` if it
    /// succeeded (acknowledged), else the attempt failed (`event`, written with its
    /// fields): retried after backoff, or dead-lettered at the last attempt.
    fn settle(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        error: Option<String>,
        event: (&'static str, Vec<(&'static str, Vec<u8>)>),
        fx: &mut Effects,
    ) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let watch = q.watch.clone();
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        self.dirty.insert(qk.clone());
        let Some(error) = error else {
            if let Some(e) = q.entries.remove(&sid) {
                let outcome = outcome_of(q, sid, Some(&e), outcomes::ACKED, None);
                q.finish(qk, sid, outcome, true, fx);
            }
            self.start_ahead(qk, fx);
            return;
        };
        stats::bump(&stats::FAILURES);
        fx.events.entry(event.0, qk, &watch, sid, event.1);
        if e.attempts >= watch.spec.stream.max_attempts || e.cancelled || e.no_retry {
            if let Some(mut e) = q.entries.remove(&sid) {
                match e.cancelled {
                    true => {
                        let outcome = outcome_of(q, sid, Some(&e), outcomes::CANCELLED, None);
                        q.finish(qk, sid, outcome, true, fx);
                    }
                    false => {
                        let (fields, attempts) = (std::mem::take(&mut e.fields), e.attempts);
                        q.dead_letter(qk, sid, (Some(e), fields, attempts), error, fx);
                    }
                }
            }
            self.start_ahead(qk, fx);
            return;
        }
        watch.queue.retried.fetch_add(1, Ordering::Relaxed);
        let delay = watch.handler.backoff(e.attempts);
        let at = Instant::now() + delay;
        e.backoff_until = Some(at);
        fx.timers.push(at, Timer::Entry(qk.clone(), sid));
        let extra = vec![
            ("attempts", e.attempts.to_string().into_bytes()),
            ("delay_ms", delay.as_millis().to_string().into_bytes()),
        ];
        fx.events.entry("backoff", qk, &watch, sid, extra);
    }

    /// A slot freed: the queue's entries waiting for a pool worker go first, oldest
    /// first; then, if none is left waiting, the next entry read ahead starts now, not
    /// after the next read.
    fn start_ahead(&mut self, qk: &QueueKey, fx: &mut Effects) {
        let waiting: Vec<Sid> = self.queues.get(qk).map_or(Vec::new(), |q| {
            let waiting = q.entries.iter().filter(|(_, e)| e.waiting);
            waiting.map(|(sid, _)| *sid).collect()
        });
        for sid in waiting {
            self.start_entry(qk, sid, fx);
            let entry = self.queues.get(qk).and_then(|q| q.entries.get(&sid));
            if entry.is_some_and(|e| e.waiting) {
                return; // the rest waits behind it
            }
        }
        if let Some(sid) = self.queues.get_mut(qk).and_then(Queue::take_ahead) {
            self.start_entry(qk, sid, fx);
        }
    }

    /// The entry's backoff (set for `at`) is over: it is claimed again at the next
    /// `flush`, if it still waits.
    pub(super) fn backoff_over(&mut self, qk: &QueueKey, sid: Sid, at: Instant) {
        if let Some(e) = self
            .queues
            .get_mut(qk)
            .and_then(|q| q.entries.get_mut(&sid))
            .filter(|e| e.run.is_none() && e.backoff_until == Some(at))
        {
            e.backoff_until = None;
            e.retry_due = true;
            self.dirty.insert(qk.clone());
        }
    }
}
