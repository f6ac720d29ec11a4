//! The supervisor: one module thread that owns every job.
//!
//! Everything arrives on one channel, in order: key hints from the keyspace callback
//! (`inbox.rs`, the main thread's side), commands from clients (answered through
//! blocked clients), role changes, and the helper's reports (started, output, exited).
//! The supervisor is level-triggered: a hint only says "look at this key again"; it
//! then reads the key under the GIL (`look.rs`), compares its fields and values with
//! its jobs (`jobs.rs`), and starts, stops or restarts the difference. A burst of hints
//! for one key is coalesced into one look, and a lost hint is repaired by the next look
//! or by a full reconcile.
//!
//! Only a primary runs jobs: the role is read under the GIL before every look, and a
//! demotion (or PAUSE, or the gate closing) stops everything.
//!
//! This file is the loop and the dispatch of messages; the parts it owns:
//! - `jobs`: hash jobs (plan, apply, the restart policy of `policy`);
//! - `queue`: stream watches, one queue per watched stream (its Redis calls in
//!   `stream`);
//! - `runs`: every run of both kinds, and the helper process that spawns them;
//! - `pools`: the long-lived workers of `pool = N` handlers (stream entries);
//! - `events`: the lifecycle event stream; `views`: the JOBS/JOB replies;
//! - `groups`: one stream watch per consumer group and key;
//! - `timers`: every deadline; `pace`: the pacing of looks at hot keys;
//! - `heartbeat`: runs silent for their `heartbeat-ms` (hung), handed to their owner;
//! - `paused`: watches paused one by one (`STREAMWATCH.PAUSE pattern`).
//! - `gate`: no jobs while the server would refuse writes, or `start-paused` holds.
//!
//! A part changes only its own state; what it may do to the others (start or stop
//! runs, set timers, queue events) it is given as `Effects`.

mod entry_text;
mod events;
mod follow;
mod gate;
mod gil;
mod groups;
mod heartbeat;
mod inbox;
mod jobs;
mod log;
mod look;
mod pace;
mod paused;
mod policy;
mod pools;
mod queue;
mod reload;
mod reports;
mod runs;
mod stream;
mod timers;
mod views;
mod waiters;

pub use follow::NOT_PRIMARY;
pub use gate::{at_load as gate_at_load, current as gate};
pub use inbox::{
    follow_watches, hint, send, FieldList, JobFilter, Msg, Written, Wrote, MAX_LOOK_FIELDS,
};

use crate::ffi::{self, Reply};
use crate::protocol::Report;
use crate::runner;
use crate::spec::Kind;
use crate::stats;
use crate::watch::{self, Snapshot, Watch};
use crate::{cluster, store};
use events::{Flushed, LifecycleEvents};
use groups::Groups;
use inbox::{Look, TX};
use jobs::{HashJobs, Tally};
use look::{Node, Observed, Tsc};
use pace::Pacer;
use pools::Pools;
use queue::Queues;
use redis_module::ThreadSafeContext;
use runs::{End, RunOf, Runs};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::{Deadline, Timer, Timers};

/// How often job counts are published while hints stream in.
const STATS_EVERY: Duration = Duration::from_millis(20);
/// How often requests the helper has not taken yet are sent again.
const OUTBOX_RETRY: Duration = Duration::from_millis(5);
/// How often writes are tried again while they are paused.
const WRITES_RETRY: Duration = Duration::from_millis(50);

/// Starts the supervisor thread (once, at module load).
pub fn start(watches: Snapshot) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    TX.set(tx.clone())
        .map_err(|_| "the supervisor is already running".to_string())?;
    std::thread::Builder::new()
        .name("streamwatch".into())
        .spawn(move || {
            let mut sup = Supervisor::new(watches, tx);
            sup.run(rx);
        })
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    Ok(())
}

/// What a part may do besides changing its own state.
struct Effects<'a> {
    runs: &'a mut Runs,
    timers: &'a mut Timers,
    events: &'a mut LifecycleEvents,
    pools: &'a mut Pools,
}

struct Supervisor {
    tsc: Tsc,
    watches: Snapshot,
    node: Node,
    hash: HashJobs,
    queues: Queues,
    pools: Pools,
    runs: Runs,
    timers: Timers,
    events: LifecycleEvents,
    pacer: Pacer,
    /// How long the current look held the GIL.
    look_hold: Duration,
    /// One stream watch per consumer group and key.
    groups: Groups,
    /// Publishing the counts: asked for now, and when last done.
    stats_now: bool,
    stats_published: Instant,
    /// The clients in `STREAMWATCH.WAIT`.
    waiters: waiters::Waiters,
    /// The hash jobs a RELOAD restarts, a batch at a time.
    rollout: reload::Rollout,
    /// What holds the jobs back besides the role and PAUSE.
    gate: gate::GateState,
}

impl Supervisor {
    fn new(watches: Snapshot, tx: Sender<Msg>) -> Supervisor {
        Supervisor {
            tsc: ThreadSafeContext::new(),
            watches,
            node: Node::default(),
            hash: HashJobs::default(),
            queues: Queues::default(),
            pools: Pools::default(),
            runs: Runs::new(tx),
            timers: Timers::default(),
            events: LifecycleEvents::default(),
            pacer: Pacer::default(),
            look_hold: Duration::ZERO,
            groups: Groups::default(),
            stats_now: true,
            stats_published: Instant::now(),
            waiters: waiters::Waiters::default(),
            rollout: reload::Rollout::default(),
            gate: gate::GateState::default(),
        }
    }

    /// The parts, each with what it may do to the others.
    fn parts(&mut self) -> (&mut HashJobs, &mut Queues, Effects<'_>) {
        let fx = Effects {
            runs: &mut self.runs,
            timers: &mut self.timers,
            events: &mut self.events,
            pools: &mut self.pools,
        };
        (&mut self.hash, &mut self.queues, fx)
    }

    /// This node runs jobs now: a primary, not paused, the gate open.
    fn live(&self) -> bool {
        self.node.primary && !self.node.paused && self.gate.open()
    }

    /// ...and runs can start (a helper is running).
    fn active(&self) -> bool {
        self.live() && self.runs.helper_running()
    }

    /// Writes are paused (CLIENT PAUSE WRITE, FAILOVER): the queues and the events wait,
    /// and are tried again after `WRITES_RETRY`.
    fn writes_paused(&mut self) {
        self.timers
            .set(Deadline::Writes, Some(Instant::now() + WRITES_RETRY));
    }

    /// How long the loop may wait for a message before it has work of its own: none
    /// when queues or lifecycle events wait (unless writes are paused or refused), else
    /// until the first deadline.
    fn next_wakeup(&self, now: Instant) -> Duration {
        let waiting =
            (self.queues.has_work() || !self.events.is_empty()) && !self.gate.writes_refused();
        if waiting && !self.timers.is_set(Deadline::Writes) {
            return Duration::ZERO;
        }
        match self.timers.next() {
            Some(at) => at.saturating_duration_since(now),
            None => Duration::from_secs(3600),
        }
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        let dir = self.node.read_server_facts(&self.tsc);
        self.runs.record = runner::RunRecord::new(dir.as_deref());
        let killed = self.runs.record.kill_leftovers();
        if killed > 0 {
            ffi::log_warning(format!(
                "streamwatch: killed {killed} workers left running by a previous instance"
            ));
        }
        self.start_helper();
        self.guarded("reconcile", |s| {
            if !s.check_gate() {
                s.reconcile_all();
            }
        });
        let mut dirty: BTreeSet<(i32, Vec<u8>)> = BTreeSet::new();
        loop {
            // One clock reading per turn: a turn per job is the common case, and a
            // dozen readings were a seventh of this thread's time on short stream jobs.
            let now = Instant::now();
            let timeout = self.next_wakeup(now);
            let first = match rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Handle everything already queued; coalesce hints, keep order otherwise.
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    Msg::Dirty { db, key } => {
                        inbox::hint_taken();
                        dirty.insert((db, key));
                    }
                    Msg::Report(r) => {
                        self.flush_dirty(&mut dirty, false);
                        self.guarded("message", |s| s.on_report(r));
                    }
                    other => {
                        self.stats_now = true;
                        // What came before this message is seen first, paced keys
                        // included (a client that writes a key and then asks about
                        // jobs sees its write).
                        self.flush_dirty(&mut dirty, true);
                        self.guarded("queues", |s| s.flush_queues());
                        self.guarded("message", |s| s.handle(other));
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush_dirty(&mut dirty, false);
            let paced = self.pacer.due(&mut dirty, Instant::now());
            self.flush_dirty(&mut dirty, false);
            self.timers.set(Deadline::Paced, paced);
            self.guarded("timers", |s| s.fire_timers());
            self.guarded("reload", |s| s.roll());
            // The runs this turn started or fed go now, before the queues' GIL hold.
            self.runs.flush_outbox();
            self.guarded("queues", |s| s.flush_queues());
            // The entries the queues just handed out go before the events' GIL hold.
            self.runs.flush_outbox();
            self.guarded("events", |s| {
                if s.gate.writes_refused() {
                    return; // they wait for the gate to open
                }
                if s.events.flush(&s.tsc, s.node.owned.is_some()) == Flushed::WritesPaused {
                    s.writes_paused();
                }
            });
            self.publish_stats();
            let done = Instant::now();
            let runs = self.hash.live_runs().chain(self.queues.live_runs());
            let runs = runs.chain(self.pools.live_runs());
            self.runs
                .record
                .write_if_due(done, runs.filter_map(|r| Some((r.pid?, r.start_time?))));
            let record = self.runs.record.due_in(done).map(|d| done + d);
            self.timers.set(Deadline::Record, record);
            let outbox = self.runs.flush_outbox().then(|| done + OUTBOX_RETRY);
            self.timers.set(Deadline::Outbox, outbox);
            if let Some(at) = self.waiters.changed() {
                self.timers.set(Deadline::Waits, at);
            }
        }
    }

    /// Runs one step with panics caught, so a bug costs one step, not the supervisor;
    /// then what the step left to do: runs that ended without a report, keys that
    /// wait for room under `max-jobs` when a job went.
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Supervisor)) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(self);
            self.follow_up();
        }));
        if let Err(p) = r {
            ffi::log_warning(format!(
                "streamwatch: internal error in supervisor ({what}): {}",
                ffi::panic_text(&p)
            ));
        }
    }

    fn follow_up(&mut self) {
        loop {
            let unreported = self.runs.take_unreported();
            let mut answers = self.pools.take_answers();
            let idle = self.pools.take_idle();
            let room = self.hash.take_room_freed() && self.active();
            if unreported.is_empty() && answers.is_empty() && idle.is_empty() && !room {
                return;
            }
            for (id, end) in unreported {
                self.run_ended(id, end);
            }
            let active = self.active();
            let (_, queues, mut fx) = self.parts();
            // Entries a worker took up on answering go first, so that no entry
            // started in between finds its queue with a slot that is not free.
            for a in answers.iter_mut() {
                if let Some((qk, sid, run)) = a.promoted.take() {
                    queues.promoted(&qk, sid, run, &mut fx);
                }
            }
            for (qk, sid, value) in fx.pools.take_progress() {
                queues.progressed(&qk, sid, value);
            }
            for a in answers {
                let said = (a.error, a.result);
                queues.answered(&a.queue, a.sid, a.worker, said, active, &mut fx);
            }
            if active {
                for name in idle {
                    queues.start_waiting(&name, &mut fx);
                }
            }
            if room {
                let keys: Vec<_> = std::mem::take(&mut self.hash.over_limit)
                    .into_keys()
                    .collect();
                let mut t = Tally::default();
                for (db, key) in keys {
                    self.reconcile_key_guarded(db, &key, Look::Key, &mut t);
                }
            }
        }
    }

    /// Looks at every hinted key, except a hot key whose last look was costly: its next
    /// look waits (see `pace.rs`). `force`: the waiting keys too, now.
    fn flush_dirty(&mut self, dirty: &mut BTreeSet<(i32, Vec<u8>)>, force: bool) {
        if force {
            dirty.append(&mut self.pacer.take_deferred());
        }
        if dirty.is_empty() {
            return;
        }
        let keys = std::mem::take(dirty);
        self.guarded("reconcile key", |s| {
            let mut tally = Tally::default();
            let now = Instant::now();
            for k in keys {
                if !force && !s.pacer.admit(&k, now) {
                    continue;
                }
                s.look_hold = Duration::ZERO;
                let look = inbox::take_pending(k.0, &k.1);
                s.reconcile_key_guarded(k.0, &k.1, look, &mut tally);
                // What the look cost the server: the time it held the GIL (a look that
                // reads nothing still cost the main thread a wake-up, see `PACE_MIN`).
                s.pacer.looked(k, now, s.look_hold, Instant::now());
            }
        });
    }

    /// Cluster mode: keeps the shard's watches store in place, re-reads slot ownership;
    /// a change (reshard, failover) means a full reconcile, which starts the jobs of
    /// gained slots and stops those of lost ones.
    fn poll_slots(&mut self) {
        self.timers
            .set(Deadline::SlotPoll, Some(Instant::now() + cluster::POLL));
        let now = {
            let ctx = gil::lock(&self.tsc);
            if !ctx.avoid_replication_traffic() && !self.gate.writes_refused() {
                store::ensure(&ctx); // a write: never while writes are paused or refused
            }
            cluster::owned(&ctx)
        };
        if self.node.owned.as_ref() != Some(&now) {
            self.reconcile_all();
        }
    }

    fn start_helper(&mut self) {
        if !self.runs.start_helper() {
            let at = self.runs.helper_failed();
            self.timers.set(Deadline::Helper, Some(at));
        }
    }

    /// Starts a helper in place of one that is gone, and puts the jobs back.
    fn restart_helper(&mut self) {
        self.start_helper();
        if !self.active() {
            return;
        }
        self.reconcile_all();
        // Backoffs that ended while there was no helper found nothing to start then.
        self.hash.start_overdue(Instant::now(), &mut self.runs);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Dirty { .. } => {}
            Msg::ReconcileAll { reply } => {
                inbox::all_taken();
                let t = self.reconcile_all();
                if let Some(r) = reply {
                    r.reply(Reply::Map(vec![
                        ("started".into(), Reply::Int(t.started)),
                        ("stopped".into(), Reply::Int(t.stopped)),
                        ("restarted".into(), Reply::Int(t.restarted)),
                    ]));
                }
            }
            Msg::Watches(w) => {
                self.watches = w;
                self.groups.watches_changed();
                self.reconcile_all();
            }
            Msg::Unwatch { watches, reply } => {
                self.watches = watches;
                let alive: BTreeSet<u64> = self.watches.iter().map(|w| w.id).collect();
                let (hash, queues, mut fx) = self.parts();
                let gone = |watch| !alive.contains(&watch);
                let stopped = hash.stop_watches(gone, &mut fx) + queues.stop_watches(gone, &mut fx);
                if let Some(r) = reply {
                    r.reply(Reply::Int(stopped));
                }
            }
            Msg::Pools { reply } => reply.reply(self.pools.reply(&crate::config::file().handlers)),
            Msg::Jobs { filter, reply } => {
                reply.reply(views::jobs_reply(&self.hash, &self.queues, &filter))
            }
            Msg::Job {
                db,
                key,
                field,
                reply,
            } => self.job(db, &key, &field, reply),
            Msg::Wait {
                db,
                key,
                id,
                timeout,
                reply,
            } => match stream::Sid::parse(&id) {
                Some(sid) => self.wait((db, key, sid), timeout, reply),
                None => reply.reply(Reply::Nil),
            },
            Msg::WaiterGone { token } => self.waiters.gone(token),
            Msg::Cancel { db, key, id, reply } => match stream::Sid::parse(&id) {
                Some(sid) => self.cancel(db, &key, sid, reply),
                None => reply.reply(Reply::Int(0)),
            },
            Msg::Restart {
                db,
                key,
                field,
                reply,
            } => {
                let n = self.hash.restart_field(db, &key, &field, &mut self.runs);
                reply.reply(Reply::Int(n));
            }
            Msg::Reload { reply } => self.reload(reply),
            Msg::Pause => self.pause_node(),
            Msg::Resume => self.resume_node(),
            Msg::WatchPaused {
                pattern,
                paused,
                watches,
            } => self.watch_paused(pattern, paused, watches),
            Msg::Role { primary } => {
                self.node.set_primary(primary);
                if primary {
                    // In Cluster the registry becomes the truth now: first it reads the
                    // store (and paused key) once more, in the slots the node now owns,
                    // in case a replica's view of the slots was behind a moved key.
                    let _ = store::sync(&gil::lock(&self.tsc));
                    if !self.check_gate() {
                        self.reconcile_all();
                    }
                } else {
                    self.stop_everything();
                    self.waiters.release(follow::NOT_PRIMARY);
                    self.check_gate();
                }
            }
            Msg::Report(r) => self.on_report(r),
            Msg::HelperGone => self.on_helper_gone(),
        }
    }

    // ---- looking at keys ----

    /// `reconcile_key` with a panic caught per key: a bug that one key triggers costs
    /// that key (and a log line), never the other keys of a batch or a full reconcile.
    fn reconcile_key_guarded(&mut self, db: i32, key: &[u8], look: Look, tally: &mut Tally) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.reconcile_key(db, key, look, tally)
        }));
        if let Err(p) = r {
            ffi::log_warning(format!(
                "streamwatch: internal error in supervisor (reconcile of '{}' in db {db}): {}",
                String::from_utf8_lossy(key),
                ffi::panic_text(&p)
            ));
        }
    }

    /// Makes the jobs of one key match its current fields: all of them, or (`look`) only
    /// those the commands since the last look wrote; and its queues, if it is a stream.
    fn reconcile_key(&mut self, db: i32, key: &[u8], look: Look, tally: &mut Tally) {
        #[cfg(feature = "panic-test")]
        if key == b"panic-test:supervisor" {
            panic!("panic-test: a bug in the supervisor");
        }
        let (streams, mut covering): (Vec<Arc<Watch>>, Vec<Arc<Watch>>) = self
            .watches
            .iter()
            .filter(|w| w.covers(db, key))
            .cloned()
            .partition(|w| w.spec.kind == Kind::Stream);
        let has_queue = self.queues.has_queue(db, key);
        if self.active() && (!streams.is_empty() || has_queue) {
            let consuming = |w: &Watch| self.queues.consumes(db, key, w.id);
            let mut running =
                self.groups
                    .one_per_group(db, key, streams.clone(), consuming, &mut self.events);
            // A paused watch still takes part in choosing one watch per group (see
            // `groups`), and runs nothing.
            running.retain(|w| !w.is_paused());
            let (_, queues, mut fx) = self.parts();
            queues.reconcile(db, key, &running, &mut fx);
        }
        // A paused watch covers nothing: its jobs stop, none start.
        covering.retain(|w| !w.is_paused());
        if covering.is_empty() && !self.hash.has_jobs(db, key) {
            self.hash.over_limit.remove(&(db, key.to_vec()));
            return;
        }
        if !self.active() {
            return;
        }
        let ids: Vec<u64> = covering.iter().map(|w| w.id).collect();
        // Named fields are enough unless the key is also a queue, or some fields wait
        // for room under max-jobs (those are found by reading the whole key).
        let mut plan = None;
        if let Look::Fields(names) = &look {
            if streams.is_empty() && !has_queue && self.hash.over_limit.is_empty() {
                let hold = &mut self.look_hold;
                match self.node.read_named(&self.tsc, db, key, names, hold) {
                    Ok(values) => {
                        let jobs = &self.hash.jobs;
                        plan = Some(jobs::plan_fields(
                            jobs,
                            db,
                            key,
                            &ids,
                            names.keys(),
                            &values,
                        ));
                    }
                    Err(Some(observed)) => return self.not_observed(observed),
                    Err(None) => {} // not a hash (any more): the whole key
                }
            }
        }
        let plan = match plan {
            Some(plan) => plan,
            None => match self.node.read_hash(&self.tsc, db, key, &mut self.look_hold) {
                Observed::Fields(mut fields) => {
                    self.hash.over_limit.remove(&(db, key.to_vec()));
                    fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    jobs::plan_key(&self.hash.jobs, db, key, &ids, &fields)
                }
                other => return self.not_observed(other),
            },
        };
        let (hash, _, mut fx) = self.parts();
        hash.apply(db, key, &covering, plan, &mut fx, tally);
    }

    fn not_observed(&mut self, observed: Observed) {
        if let Observed::NotActive = observed {
            self.stop_everything();
        }
    }

    /// Every watched key in every watched database, plus every key that has jobs.
    fn reconcile_all(&mut self) -> Tally {
        stats::bump(&stats::RECONCILES);
        // The registry as of now, read under the GIL: a command that changes watches
        // and data together (DEBUG RELOAD, FLUSHALL) has finished, so the watches and
        // the keys read below agree.
        {
            let ctx = gil::lock(&self.tsc);
            self.watches = watch::snapshot();
            self.node.owned = cluster::enabled(&ctx).then(|| cluster::owned(&ctx));
            // The runs' server address, in case a config change event was missed.
            crate::address::refresh(&ctx);
        }
        self.stop_paused();
        let poll = self
            .node
            .owned
            .as_ref()
            .map(|_| Instant::now() + cluster::POLL);
        self.timers.set(Deadline::SlotPoll, poll);
        let mut tally = Tally::default();
        let mut keys: BTreeSet<(i32, Vec<u8>)> = self.hash.keys().collect();
        keys.extend(self.queues.keys());
        keys.extend(std::mem::take(&mut self.hash.over_limit).into_keys());
        if self.active() {
            keys.extend(look::watched_keys(
                &self.tsc,
                self.node.databases,
                &self.watches,
            ));
        }
        for (db, key) in keys {
            self.reconcile_key_guarded(db, &key, Look::Key, &mut tally);
        }
        tally
    }

    fn stop_everything(&mut self) {
        let (hash, queues, mut fx) = self.parts();
        hash.stop_watches(|_| true, &mut fx);
        hash.over_limit.clear();
        queues.stop_watches(|_| true, &mut fx);
        fx.pools.stop_all(fx.runs);
    }

    /// Every queue's pending work; a demoted node stops everything. While the server
    /// would refuse writes, the queues' writes (acks, dead letters) wait.
    fn flush_queues(&mut self) {
        if self.gate.writes_refused() {
            return;
        }
        let mut fx = Effects {
            runs: &mut self.runs,
            timers: &mut self.timers,
            events: &mut self.events,
            pools: &mut self.pools,
        };
        match self.queues.flush(&self.tsc, &self.node, &mut fx) {
            Flushed::Done => {}
            Flushed::Demoted => {
                self.node.set_primary(false);
                self.stop_everything();
                self.waiters.release(follow::NOT_PRIMARY);
            }
            Flushed::WritesPaused => self.writes_paused(),
        }
        self.answer_waiters();
    }

    /// Counts for STATUS/INFO: O(jobs), so at most every `STATS_EVERY` while hints
    /// stream in, and at once after a command (which may be followed by STATUS).
    fn publish_stats(&mut self) {
        let now = Instant::now();
        let due = self.stats_published + STATS_EVERY;
        if !self.stats_now && now < due {
            self.timers.set(Deadline::Publish, Some(due));
            return;
        }
        self.stats_now = false;
        self.stats_published = now;
        self.timers.set(Deadline::Publish, None);
        let mut counts = [0u64; 6];
        let over = self.hash.count(&mut counts);
        self.queues.publish(&self.watches, &mut counts);
        let in_use = self.queues.handlers();
        self.pools
            .retire_unused(&in_use, &mut self.runs, &mut self.timers);
        self.timers.set(Deadline::QueueStats, self.queues.stats_due);
        stats::set_states(counts);
        stats::JOBS_OVER_LIMIT.store(over as u64, Ordering::Relaxed);
    }
}
