//! Worker pools: a handler with `pool = N` runs stream entries on up to N long-lived
//! workers instead of a process per entry. A worker is a run started from the
//! handler's command with its stdin kept open and a pipe as its fd 3: each entry is
//! one JSON line on its stdin, and the worker answers on fd 3 with one JSON line per
//! entry (`{"id": ..., "ok": true}` or `{"id": ..., "ok": false, "error": ...}`), so
//! what it prints on stdout or stderr (its log) never mixes with the protocol.
//!
//! One pool per handler, shared by every stream and watch that uses it. A worker gets
//! one entry at a time. So that it does not wait for its answer to go through the
//! module and Redis before it has the next one, a busy worker may also be given its
//! `next` entry (of the same queue, so the queue's running entries never exceed its
//! `CONCURRENCY`): the helper holds that entry and writes it to the worker's stdin the
//! moment the worker answers (helper/src/answers.rs), and here it becomes the worker's
//! entry when that answer is read (`Answer::promoted`). Entries that find neither an
//! idle worker nor a free `next` wait in their queue and are handed out when a worker
//! is free (`take_idle`). Workers start on demand, up to N; one that exits unasked, is
//! killed, times out on an entry or breaks the protocol fails its entry's attempt and
//! is replaced after a backoff that grows with the failures in a row (the handler's
//! `backoff-*`); `max-requests` recycles a worker (its stdin closed: it finishes and
//! exits) after that many entries.
//!
//! The entry's side (ack, retry, dead letter) is the queue's: this part says which
//! entry a worker answered or left (`Answer`), and the supervisor hands it on.

use super::log::Log;
use super::runs::{Run, RunOf, Runs};
use super::stream::{QueueKey, Sid};
use super::timers::{Timer, Timers};
use crate::config::Handler;
use crate::ffi::Reply;
use crate::reply::{parse_reply, Said};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// The longest reply line a worker may write (a longer one breaks the protocol).
const MAX_REPLY_LINE: usize = 1 << 20;
/// The longest entry line given to a worker (a longer entry fails its attempt): well
/// under what one request to the helper may carry.
pub(super) const MAX_ENTRY_LINE: usize = 32 << 20;

struct Worker {
    run: Run,
    /// The entry it works on.
    busy: Option<(QueueKey, Sid)>,
    /// The entry it is given when it answers `busy` (held by the helper until then),
    /// of the same queue as `busy`.
    next: Option<(QueueKey, Sid)>,
    /// Entries it answered.
    served: u64,
    /// It is on its way out and takes no more entries, and why.
    leaving: Option<Leaving>,
    /// Started from a definition RELOAD changed: replaced when it has no entry.
    outdated: bool,
    /// Reply bytes after the last newline.
    partial: Vec<u8>,
    /// What it wrote while no entry was in it.
    log: Log,
    /// The helper found its last entry unread in its stdin when it exited.
    unread: bool,
    /// Entries sent to it (`Feed`), and how many of them the helper took, as it said
    /// at the worker's end (one sent after the worker had gone never reached it).
    fed: u64,
    taken: Option<u64>,
}

impl Worker {
    fn idle(&self) -> bool {
        self.busy.is_none() && self.leaving.is_none() && self.run.pid.is_some()
    }

    /// Whether it may be given a `next` entry (of `queue`, if given): it is busy with
    /// an entry of that queue, has no next yet, and is not at its last entry before
    /// `max_requests` recycles it.
    fn takes_next(&self, queue: Option<&QueueKey>, max_requests: u64) -> bool {
        let same = |(q, _): &(QueueKey, Sid)| queue.is_none_or(|want| q == want);
        self.next.is_none()
            && self.leaving.is_none()
            && !self.outdated
            && self.busy.as_ref().is_some_and(same)
            && (max_requests == 0 || self.served + 2 <= max_requests)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// Served `max-requests` entries: replaced (a restart, no failure).
    Recycled,
    /// Stopped by us (pause, demotion, UNWATCH, no watch uses the pool): no restart.
    Stopped,
    /// Timed out or broke the protocol: replaced after a backoff.
    Failing,
}

struct Pool {
    handler: Arc<Handler>,
    workers: BTreeMap<u64, Worker>,
    /// Workers replaced after failing, and after `max-requests`.
    restarts: u64,
    recycled: u64,
    /// Entries answered ok / failed (answered so, or left by their worker).
    done: u64,
    failed: u64,
    /// Workers in a row that failed (exited unasked, timed out, broke the protocol).
    failures: u32,
    /// No new worker before this.
    backoff_until: Option<Instant>,
}

impl Pool {
    fn new(handler: Arc<Handler>) -> Pool {
        Pool {
            handler,
            workers: BTreeMap::new(),
            restarts: 0,
            recycled: 0,
            done: 0,
            failed: 0,
            failures: 0,
            backoff_until: None,
        }
    }

    /// Whether a new worker may start: not backing off, and fewer than N workers (those
    /// on their way out count until they are gone, so there are never more than N).
    fn may_start(&self) -> bool {
        let backoff = self.backoff_until.is_some_and(|at| at > Instant::now());
        !backoff && self.workers.len() < self.handler.pool as usize
    }
}

/// What became of an entry given to a worker.
pub(super) struct Answer {
    pub queue: QueueKey,
    pub sid: Sid,
    /// The worker's run id (the entry's run).
    pub worker: u64,
    /// `None`: done (ok); else why the attempt failed.
    pub error: Option<String>,
    /// The worker's `"result"` for it (JSON text).
    pub result: Option<String>,
    /// The worker's `next` entry, which it now works on, with its run.
    pub promoted: Option<(QueueKey, Sid, Run)>,
}

/// Where `dispatch` put an entry.
pub(super) enum Placed {
    /// On an idle worker, which works on it now: the entry's run.
    Running(Run),
    /// As the `next` entry of this worker, busy with another of its queue.
    Next(u64),
    /// Nowhere yet: it waits for a worker.
    Waiting,
}

/// The entries a worker held when it ended: the one it worked on (its attempt fails
/// with the worker's end), and those it never had, which go to another worker as the
/// same attempt: its `next`, and an entry it was given but left unread in its stdin or
/// that reached the helper after the worker had gone (once it has answered an entry:
/// a worker that dies before it answers any fails its entries, so that a worker broken
/// at start-up does not keep them forever).
#[derive(Default)]
pub(super) struct Left {
    pub failed: Option<(QueueKey, Sid)>,
    pub unrun: Vec<(QueueKey, Sid)>,
}

/// Every pool, by handler name.
#[derive(Default)]
pub(super) struct Pools {
    pools: BTreeMap<String, Pool>,
    /// Handlers with a worker that became free (or may be started), for the waiting
    /// entries.
    idle: BTreeSet<String>,
    /// Entries answered by their worker since the last `take_answers`.
    answers: Vec<Answer>,
    /// Progress the workers reported on their entries (JSON texts), for the queues.
    progress: Vec<(QueueKey, Sid, String)>,
}

impl Pools {
    /// Gives the entry (its JSON line `line`) to a worker of `h`'s pool: an idle one
    /// if `may_run` (its queue has a slot under `CONCURRENCY`), where it runs now; else,
    /// if `may_queue`, as the `next` entry of a worker busy with its queue; else it
    /// waits (a worker is started if `may_run` and the pool has room).
    pub(super) fn dispatch(
        &mut self,
        h: &Arc<Handler>,
        entry: (QueueKey, Sid),
        line: &[u8],
        (may_run, may_queue): (bool, bool),
        runs: &mut Runs,
    ) -> Placed {
        let pool = self
            .pools
            .entry(h.name.clone())
            .or_insert_with(|| Pool::new(h.clone()));
        pool.handler = h.clone();
        if may_run {
            if let Some((&id, w)) = pool.workers.iter_mut().find(|(_, w)| w.idle()) {
                w.busy = Some(entry);
                w.fed += 1;
                runs.feed(id, line.to_vec());
                runs.heartbeats.heard(id, Instant::now); // its silence counts from now
                return Placed::Running(Run::of_worker(&w.run));
            }
            // In backoff, the timer set when the last worker failed brings them back.
            if pool.may_start() {
                start_worker(pool, runs);
            }
        }
        if !may_queue {
            return Placed::Waiting;
        }
        let m = pool.handler.max_requests;
        let mut behind = pool.workers.iter_mut();
        if let Some((&id, w)) = behind.find(|(_, w)| w.takes_next(Some(&entry.0), m)) {
            w.next = Some(entry);
            w.fed += 1;
            runs.feed(id, line.to_vec());
            return Placed::Next(id);
        }
        Placed::Waiting
    }

    /// Whether an entry given to `name`'s pool now may find a worker, or start one.
    pub(super) fn can_take(&self, name: &str) -> bool {
        self.pools.get(name).is_none_or(|p| {
            let m = p.handler.max_requests;
            p.may_start()
                || p.workers
                    .values()
                    .any(|w| w.idle() || w.takes_next(None, m))
        })
    }

    /// The handlers whose waiting entries may now find a worker.
    pub(super) fn take_idle(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.idle)
    }

    pub(super) fn take_answers(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }

    pub(super) fn take_progress(&mut self) -> Vec<(QueueKey, Sid, String)> {
        std::mem::take(&mut self.progress)
    }

    /// The helper reported worker `id`'s process: it is free.
    pub(super) fn started(&mut self, name: &str, id: u64, pid: i32, start: Option<u64>) {
        if let Some(w) = self.worker(name, id) {
            w.run.spawned(pid, start);
            self.idle.insert(name.to_string());
        }
    }

    /// Worker `id`'s pid, once started.
    pub(super) fn pid(&self, name: &str, id: u64) -> Option<i32> {
        self.pools.get(name)?.workers.get(&id)?.run.pid
    }

    /// The entry worker `id` works on, if any (its output goes to that entry's log).
    pub(super) fn busy_with(&self, name: &str, id: u64) -> Option<&(QueueKey, Sid)> {
        self.pools.get(name)?.workers.get(&id)?.busy.as_ref()
    }

    pub(super) fn output(&mut self, name: &str, id: u64, data: &[u8]) {
        if let Some(pool) = self.pools.get_mut(name) {
            let cap = pool.handler.log_lines();
            if let Some(w) = pool.workers.get_mut(&id) {
                w.log.push(data, cap);
            }
        }
    }

    /// Bytes worker `id` wrote on its fd 3: each whole line answers its entry.
    pub(super) fn replies(
        &mut self,
        name: &str,
        id: u64,
        data: &[u8],
        runs: &mut Runs,
        timers: &mut Timers,
    ) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let Some(w) = pool.workers.get_mut(&id) else {
            return;
        };
        w.partial.extend_from_slice(data);
        while let Some(end) = w.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = w.partial.drain(..=end).collect();
            let reply = parse_reply(&line[..end]);
            let busy_id = w.busy.as_ref().map(|(_, sid)| sid.to_string());
            let error = match reply {
                Ok(Said::Progress { id: got, value }) => {
                    if let Some((qk, sid)) =
                        w.busy.as_ref().filter(|_| Some(&got) == busy_id.as_ref())
                    {
                        self.progress.push((qk.clone(), *sid, value));
                    }
                    continue;
                }
                Ok(Said::Done {
                    id: got,
                    error,
                    result,
                }) if Some(&got) == busy_id.as_ref() => Ok((error, result)),
                Ok(Said::Done { id: got, .. }) => Err(match busy_id {
                    Some(want) => format!("the worker answered for entry {got}, not {want}"),
                    None => format!("the worker answered for entry {got}, which it did not have"),
                }),
                Err(e) => Err(e),
            };
            match error {
                Ok((error, result)) => {
                    let Some((queue, sid)) = w.busy.take() else {
                        continue; // an answer matches only the entry it has (above)
                    };
                    // The helper has written its next entry to it, if it had one;
                    // a worker on its way out keeps it (given to another when it
                    // has ended: the helper holds nothing for a stopped worker).
                    if w.leaving.is_none() {
                        w.busy = w.next.take();
                    }
                    let promoted = w.busy.clone();
                    let promoted = promoted.map(|(q, s)| (q, s, Run::of_worker(&w.run)));
                    w.served += 1;
                    match error.is_some() {
                        true => pool.failed += 1,
                        false => pool.done += 1,
                    }
                    pool.failures = 0;
                    let recycle = pool.handler.max_requests;
                    let spent = recycle > 0 && w.served >= recycle;
                    if (spent || (w.outdated && w.busy.is_none())) && w.leaving.is_none() {
                        // Its stdin closed, it should finish; if it has not after the
                        // grace, it is stopped.
                        w.leaving = Some(Leaving::Recycled);
                        runs.close_input(id);
                        let at = Instant::now() + pool.handler.stop_grace;
                        timers.push(at, Timer::Recycle(name.to_string(), id));
                    }
                    self.answers.push(Answer {
                        queue,
                        sid,
                        worker: id,
                        error,
                        result,
                        promoted,
                    });
                    self.idle.insert(name.to_string());
                }
                Err(problem) => {
                    // Broke the protocol: its entry fails now, the worker is replaced.
                    let problem = format!("malformed reply from the pool worker: {problem}");
                    if let Some((queue, sid)) = w.busy.take() {
                        pool.failed += 1;
                        self.answers.push(Answer {
                            queue,
                            sid,
                            worker: id,
                            error: Some(problem),
                            result: None,
                            promoted: None,
                        });
                    }
                    w.leaving = Some(Leaving::Failing);
                    w.partial.clear();
                    runs.stop(&mut w.run);
                    return;
                }
            }
        }
        if w.partial.len() > MAX_REPLY_LINE {
            w.partial.clear();
            w.leaving = Some(Leaving::Failing);
            runs.stop(&mut w.run);
        }
    }

    /// Worker `id` ended: the entries it held (see `Left`), and the worker is
    /// replaced. `live`: this node runs jobs now
    /// (a worker ended by a pause, a demotion or the helper's death is no failure).
    pub(super) fn worker_ended(
        &mut self,
        name: &str,
        id: u64,
        live: bool,
        timers: &mut Timers,
    ) -> Left {
        let Some(pool) = self.pools.get_mut(name) else {
            return Left::default();
        };
        let Some(w) = pool.workers.remove(&id) else {
            return Left::default();
        };
        // Exited unasked (no `leaving`), timed out or broke the protocol: failing. A
        // pause, a demotion or the helper's death (not `live`) is no failure.
        let leaving = w.leaving.unwrap_or(Leaving::Failing);
        if leaving == Leaving::Failing && live {
            pool.failures += 1;
            let at = Instant::now() + pool.handler.backoff(pool.failures);
            pool.backoff_until = Some(at);
            timers.push(at, Timer::Pool(name.to_string()));
        }
        pool.restarts += u64::from(live && leaving == Leaving::Failing);
        pool.recycled += u64::from(leaving == Leaving::Recycled);
        // The entries sent last that the helper did not take: `next` (sent after
        // `busy`) first.
        let untaken = w.taken.map_or(0, |n| w.fed.saturating_sub(n));
        let busy_untaken = untaken > u64::from(w.next.is_some());
        let (mut failed, mut unrun) = (w.busy, Vec::from_iter(w.next));
        if (w.unread || busy_untaken) && w.served > 0 {
            unrun.extend(failed.take());
        }
        if failed.is_some() {
            pool.failed += 1;
        }
        self.idle.insert(name.to_string());
        Left { failed, unrun }
    }

    /// The helper took `count` entries for worker `id` in all (said at its end).
    pub(super) fn fed(&mut self, name: &str, id: u64, count: u64) {
        if let Some(w) = self.worker(name, id) {
            w.taken = Some(count);
        }
    }

    /// The helper found worker `id`'s last entry unread in its stdin at its exit.
    pub(super) fn unread(&mut self, name: &str, id: u64) {
        if let Some(w) = self.worker(name, id) {
            w.unread = true;
        }
    }

    /// A pool's backoff (set for `at`) may be over: its waiting entries try again.
    pub(super) fn backoff_over(&mut self, name: &str) {
        if let Some(pool) = self.pools.get_mut(name) {
            if pool.backoff_until.is_some_and(|at| at <= Instant::now()) {
                pool.backoff_until = None;
                self.idle.insert(name.to_string());
            }
        }
    }

    /// The entry left its worker (stopped with its queue; `failed`: timed out): the
    /// worker is stopped too, since it cannot be told to drop one entry.
    pub(super) fn stop_worker(&mut self, name: &str, id: u64, failed: bool, runs: &mut Runs) {
        if let Some(w) = self.worker(name, id) {
            let failing = failed || w.leaving == Some(Leaving::Failing);
            w.leaving = Some(if failing {
                Leaving::Failing
            } else {
                Leaving::Stopped
            });
            runs.stop(&mut w.run);
        }
    }

    /// A recycled worker's grace is over: stopped if it has not finished.
    pub(super) fn recycle_over(&mut self, name: &str, id: u64, runs: &mut Runs) {
        if let Some(w) = self.worker(name, id) {
            runs.stop(&mut w.run);
        }
    }

    /// The idle workers of pools no queue uses any more (`in_use`: the handlers of
    /// the queues) finish: their stdin is closed.
    pub(super) fn retire_unused(
        &mut self,
        in_use: &BTreeSet<String>,
        runs: &mut Runs,
        timers: &mut Timers,
    ) {
        for (name, pool) in self.pools.iter_mut().filter(|(n, _)| !in_use.contains(*n)) {
            let grace = pool.handler.stop_grace;
            for (&id, w) in pool.workers.iter_mut().filter(|(_, w)| w.idle()) {
                w.leaving = Some(Leaving::Stopped);
                runs.close_input(id);
                timers.push(Instant::now() + grace, Timer::Recycle(name.clone(), id));
            }
        }
    }

    /// RELOAD changed `name`'s definition to `h`: each worker is replaced once it has
    /// no entry (an idle one now); the new ones start from `h`.
    pub(super) fn turn_over(
        &mut self,
        name: &str,
        h: &Arc<Handler>,
        runs: &mut Runs,
        timers: &mut Timers,
    ) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        pool.handler = h.clone();
        for (&id, w) in pool.workers.iter_mut().filter(|(_, w)| w.leaving.is_none()) {
            w.outdated = true;
            if w.busy.is_none() {
                w.leaving = Some(Leaving::Recycled);
                runs.close_input(id);
                let at = Instant::now() + h.stop_grace;
                timers.push(at, Timer::Recycle(name.to_string(), id));
            }
        }
        self.idle.insert(name.to_string());
    }

    /// Every worker stops (pause, demotion).
    pub(super) fn stop_all(&mut self, runs: &mut Runs) {
        for pool in self.pools.values_mut() {
            for w in pool.workers.values_mut() {
                w.leaving.get_or_insert(Leaving::Stopped);
                runs.stop(&mut w.run);
            }
        }
    }

    pub(super) fn live_runs(&self) -> impl Iterator<Item = &Run> {
        self.pools
            .values()
            .flat_map(|p| p.workers.values().map(|w| &w.run))
    }

    fn worker(&mut self, name: &str, id: u64) -> Option<&mut Worker> {
        self.pools.get_mut(name)?.workers.get_mut(&id)
    }

    /// `STREAMWATCH.POOLS`: per pool handler, its workers and what they did.
    pub(super) fn reply(&self, handlers: &BTreeMap<String, Arc<Handler>>) -> Reply {
        let mut list = Vec::new();
        for (name, h) in handlers.iter().filter(|(_, h)| h.pool > 0) {
            let pool = self.pools.get(name);
            let workers: Vec<&Worker> = pool
                .map(|p| p.workers.values().collect())
                .unwrap_or_default();
            let count =
                |f: &dyn Fn(&Worker) -> bool| workers.iter().filter(|w| f(w)).count() as i64;
            let pids: Vec<Reply> = workers
                .iter()
                .filter_map(|w| w.run.pid.map(|p| Reply::Int(p.into())))
                .collect();
            let n = |f: fn(&Pool) -> u64| Reply::Int(pool.map_or(0, f) as i64);
            list.push(Reply::Map(vec![
                ("handler".into(), Reply::str(name)),
                ("size".into(), Reply::Int(h.pool.into())),
                ("workers".into(), Reply::Int(workers.len() as i64)),
                ("busy".into(), Reply::Int(count(&|w| w.busy.is_some()))),
                ("idle".into(), Reply::Int(count(&|w| w.idle()))),
                (
                    "starting".into(),
                    Reply::Int(count(&|w| w.run.pid.is_none())),
                ),
                ("restarts".into(), n(|p| p.restarts)),
                ("recycled".into(), n(|p| p.recycled)),
                ("done".into(), n(|p| p.done)),
                ("failed".into(), n(|p| p.failed)),
                ("max_requests".into(), Reply::Int(h.max_requests as i64)),
                ("pids".into(), Reply::Array(pids)),
            ]));
        }
        Reply::Array(list)
    }
}

fn start_worker(pool: &mut Pool, runs: &mut Runs) {
    let h = pool.handler.clone();
    let env = vec![(b"STREAMWATCH_HANDLER".to_vec(), h.name.as_bytes().to_vec())];
    let owner = RunOf::Worker(h.name.clone());
    let run = runs.start_worker(owner, &h, env);
    let worker = Worker {
        run,
        busy: None,
        next: None,
        served: 0,
        leaving: None,
        outdated: false,
        partial: Vec::new(),
        log: Log::default(),
        unread: false,
        fed: 0,
        taken: None,
    };
    pool.workers.insert(worker.run.id, worker);
}
