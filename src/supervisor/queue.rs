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
//! millions costs nothing here. The entries read ahead are what keeps the slots busy:
//! when a run ends, the next entry starts at once, and its acknowledgement and the
//! next read wait for the turn's one GIL hold instead of the other way round.
//!
//! This is part of the supervisor thread (a child module, so it shares its state):
//! every Redis call below is made under the GIL, batched per loop turn in
//! `flush_queues` (one GIL hold for all acks, dead-letters, claims and reads).

use super::runs;
use super::{exit_number, End, Log, Run, RunOf, Supervisor, Timer};
use crate::cluster;
use crate::ffi;
use crate::protocol::Request;
use crate::stats;
use crate::watch::Watch;
use redis_module::{
    CallOptionsBuilder, CallReply, CallResult, Context, ContextFlags, ErrorReply, KeyType,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sid(pub u64, pub u64);

impl Sid {
    pub fn parse(b: &[u8]) -> Option<Sid> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-')?;
        Some(Sid(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One queue: a watch applied to one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub db: i32,
    pub key: Vec<u8>,
    pub watch: u64,
}

pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// An entry this node is working on (it is pending in the group until acked).
pub struct Entry {
    pub fields: Fields,
    /// This entry's attempt number (its delivery count in the group).
    pub attempts: u32,
    pub run: Option<Run>,
    pub backoff_until: Option<Instant>,
    /// Backoff is over: claim it again and run it (next `flush_queues`).
    pub retry_due: bool,
    pub timed_out: bool,
    pub last_exit: Option<i64>,
    pub log: Log,
}

impl Entry {
    fn new(fields: Fields, attempts: u32) -> Entry {
        Entry {
            fields,
            attempts,
            run: None,
            backoff_until: None,
            retry_due: false,
            timed_out: false,
            last_exit: None,
            log: Log::default(),
        }
    }

    pub fn state(&self) -> &'static str {
        match &self.run {
            Some(r) if r.stopping => "stopping",
            Some(r) if r.pid.is_none() => "starting",
            Some(_) => "running",
            None if self.backoff_until.is_some() || self.retry_due => "backoff",
            None => "starting",
        }
    }
}

/// What becomes of an entry whose work is over, done at the next `flush_queues`.
enum Outcome {
    Ack,
    DeadLetter {
        fields: Fields,
        attempts: u32,
        error: String,
        last_exit: Option<i64>,
    },
}

pub struct Queue {
    pub watch: Arc<Watch>,
    pub entries: BTreeMap<Sid, Entry>,
    /// Read (pending in the group for this consumer) and not started, oldest first; at
    /// most `CONCURRENCY`. Dropped whenever the queue stops or rescans: the group still
    /// has them pending, so a rescan claims them back.
    ahead: VecDeque<(Sid, Fields)>,
    done: Vec<(Sid, Outcome)>,
    /// False once the watch no longer applies here (UNWATCH, pause, demotion, key
    /// gone): its runs are stopped, nothing new starts; it goes when they have ended.
    pub wanted: bool,
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

impl Queue {
    fn new(watch: Arc<Watch>) -> Queue {
        Queue {
            watch,
            entries: BTreeMap::new(),
            ahead: VecDeque::new(),
            done: Vec::new(),
            wanted: true,
            recovering: true,
            after: None,
            pending: 0,
            lag: 0,
            stats_at: None,
        }
    }

    fn free(&self) -> usize {
        (self.watch.spec.stream.concurrency as usize).saturating_sub(self.entries.len())
    }

    /// How many more entries may be read ahead.
    fn ahead_room(&self) -> usize {
        (self.watch.spec.stream.concurrency as usize).saturating_sub(self.ahead.len())
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
}

fn call<'a>(ctx: &'a Context, cmd: &str, args: &[&[u8]]) -> CallResult<'a> {
    let opts = CallOptionsBuilder::new().replicate().build();
    ctx.call_ext(cmd, &opts, args)
}

fn error_text(e: &ErrorReply) -> String {
    e.to_utf8_string().unwrap_or_else(|| "error".into())
}

fn bytes_of(r: &CallResult) -> Option<Vec<u8>> {
    match r {
        Ok(CallReply::String(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn int_of(r: &CallResult) -> Option<i64> {
    match r {
        Ok(CallReply::I64(i)) => Some(i.to_i64()),
        _ => None,
    }
}

/// An entry id from an element of an array reply.
fn sid_of(r: Option<CallResult>) -> Option<Sid> {
    bytes_of(&r?).and_then(|b| Sid::parse(&b))
}

/// `[[id, [f, v, ...]], ...]` (XREADGROUP's per-stream list, XCLAIM's reply).
fn parse_entries(r: &CallResult) -> Vec<(Sid, Fields)> {
    let mut out = Vec::new();
    let Ok(CallReply::Array(list)) = r else {
        return out;
    };
    for item in list.iter() {
        let Ok(CallReply::Array(pair)) = item else {
            continue; // a deleted entry
        };
        let Some(id) = sid_of(pair.get(0)) else {
            continue;
        };
        let mut fields = Vec::new();
        if let Some(Ok(CallReply::Array(fv))) = pair.get(1) {
            let flat: Vec<Vec<u8>> = fv.iter().filter_map(|x| bytes_of(&x)).collect();
            for c in flat.chunks_exact(2) {
                fields.push((c[0].clone(), c[1].clone()));
            }
        } else {
            continue; // deleted while pending: nothing to run
        }
        out.push((id, fields));
    }
    out
}

impl Supervisor {
    /// Part of `reconcile_key`: `covering` are the stream watches that cover the key.
    pub(super) fn reconcile_streams(&mut self, db: i32, key: &[u8], covering: &[Arc<Watch>]) {
        let existing: Vec<QueueKey> = self
            .queues
            .keys()
            .filter(|q| q.db == db && q.key == key)
            .cloned()
            .collect();
        for qk in existing {
            if !covering.iter().any(|w| w.id == qk.watch) {
                self.drop_queue(&qk);
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
            self.dirty_queues.insert(qk);
        }
    }

    /// Stops a queue's runs (their entries stay pending in the group, to be claimed
    /// again); the queue goes when they have ended.
    pub(super) fn drop_queue(&mut self, qk: &QueueKey) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        q.wanted = false;
        q.ahead.clear(); // pending in the group: claimed back when the queue runs again
        let mut stops = Vec::new();
        q.entries.retain(|_, e| match &mut e.run {
            Some(run) => {
                if !run.stopping {
                    run.stopping = true;
                    stops.push(run.id);
                }
                true
            }
            None => false,
        });
        for run in stops {
            self.send_helper(&Request::Stop { run });
        }
        self.forget_if_idle(qk);
    }

    fn forget_if_idle(&mut self, qk: &QueueKey) {
        if self
            .queues
            .get(qk)
            .is_some_and(|q| !q.wanted && q.entries.is_empty() && q.done.is_empty())
        {
            self.queues.remove(qk);
            self.dirty_queues.remove(qk);
        }
    }

    /// Every queue's pending work under one GIL hold: acknowledgements and dead-letters,
    /// retries (claimed again), then as many entries as there are free slots (the
    /// group's pending ones first). The runs start after the GIL is released.
    pub(super) fn flush_queues(&mut self) {
        if self.dirty_queues.is_empty() {
            return;
        }
        let now = Instant::now();
        let dirty: Vec<QueueKey> = std::mem::take(&mut self.dirty_queues)
            .into_iter()
            .filter(|qk| {
                self.queues.get(qk).is_some_and(|q| {
                    !q.done.is_empty()
                        || q.entries.values().any(|e| e.retry_due)
                        || (q.wanted && q.free() > 0)
                        || q.stats_at.is_none_or(|t| now - t >= STATS_EVERY)
                })
            })
            .collect();
        if dirty.is_empty() {
            return;
        }
        let mut to_start: Vec<(QueueKey, Sid)> = Vec::new();
        let demoted = {
            let ctx = super::gil::lock(&self.tsc);
            let flags = ctx.get_flags();
            if !flags.contains(ContextFlags::MASTER) {
                true
            } else if flags.contains(ContextFlags::LOADING) {
                false
            } else {
                for qk in &dirty {
                    self.flush_queue(&ctx, qk, &mut to_start);
                }
                false
            }
        };
        if demoted {
            self.primary = false;
            stats::PRIMARY.store(false, Ordering::Relaxed);
            self.stop_everything();
            return;
        }
        for (qk, sid) in to_start {
            self.start_entry(&qk, sid);
        }
        for qk in &dirty {
            self.forget_if_idle(qk);
        }
    }

    fn flush_queue(&mut self, ctx: &Context, qk: &QueueKey, to_start: &mut Vec<(QueueKey, Sid)>) {
        let owned = match &self.owned {
            Some(o) => cluster::key_slot(ctx, &qk.key).is_some_and(|s| o.contains(s)),
            None => true,
        };
        if !ffi::select_db(ctx, qk.db) {
            return;
        }
        let consumer = self.consumer.clone();
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let opts = q.watch.spec.stream.clone();
        let key = qk.key.as_slice();
        let group = opts.group.as_slice();
        // 1. Outcomes: acknowledge, or dead-letter then acknowledge.
        for (sid, outcome) in std::mem::take(&mut q.done) {
            let id = sid.to_string();
            match outcome {
                Outcome::Ack => {
                    let _ = call(ctx, "XACK", &[key, group, id.as_bytes()]);
                    q.watch.queue.acked.fetch_add(1, Ordering::Relaxed);
                    self.events.entry("acked", qk, &q.watch, sid, vec![]);
                }
                Outcome::DeadLetter {
                    fields,
                    attempts,
                    error,
                    last_exit,
                } => {
                    let dl = opts.deadletter_of(key);
                    let attempts = attempts.to_string();
                    let last = last_exit.map(|n| n.to_string()).unwrap_or_default();
                    let mut args: Vec<&[u8]> = vec![&dl, b"*"];
                    for (f, v) in &fields {
                        args.push(f);
                        args.push(v);
                    }
                    args.extend([
                        b"id".as_slice(),
                        id.as_bytes(),
                        b"attempts",
                        attempts.as_bytes(),
                        b"error",
                        error.as_bytes(),
                        b"last_exit",
                        last.as_bytes(),
                    ]);
                    match call(ctx, "XADD", &args) {
                        Ok(_) => {
                            let _ = call(ctx, "XACK", &[key, group, id.as_bytes()]);
                            q.watch.queue.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            let extra = vec![
                                ("deadletter", dl.clone()),
                                ("attempts", attempts.into_bytes()),
                                ("error", error.into_bytes()),
                            ];
                            self.events.entry("dead-lettered", qk, &q.watch, sid, extra);
                        }
                        Err(e) => {
                            // Not acknowledged: it stays pending for the next recovery.
                            ffi::log_warning(format!(
                                "streamwatch: cannot dead-letter entry {id} of '{}' to '{}': {}",
                                String::from_utf8_lossy(key),
                                String::from_utf8_lossy(&dl),
                                error_text(&e)
                            ));
                        }
                    }
                }
            }
        }
        if !owned {
            if !q.ahead.is_empty() {
                q.rescan(); // claimed back if the slot comes back
            }
            return;
        }
        let exists = {
            let name = ffi::string(ctx, key);
            let k = ctx.open_key_with_flags(&name, redis_module::key::KeyFlags::NOTOUCH);
            k.key_type() == KeyType::Stream
        };
        if !exists {
            // Deleted (or another type now): nothing to read; running entries finish,
            // their acknowledgements find nothing.
            q.ahead.clear();
            if q.entries.is_empty() {
                q.wanted = false;
            }
            return;
        }
        // 2. Retries whose backoff is over: claim again (counts the delivery).
        let due: Vec<Sid> = q
            .entries
            .iter()
            .filter(|(_, e)| e.retry_due && q.wanted)
            .map(|(s, _)| *s)
            .collect();
        for sid in due {
            let id = sid.to_string();
            let r = call(ctx, "XCLAIM", &[key, group, &consumer, b"0", id.as_bytes()]);
            match parse_entries(&r).into_iter().next() {
                Some((_, fields)) => {
                    if let Some(e) = q.entries.get_mut(&sid) {
                        e.retry_due = false;
                        e.fields = fields;
                        e.attempts += 1;
                        to_start.push((qk.clone(), sid));
                    }
                }
                None => {
                    // Deleted from the stream (or the group is gone): nothing to run.
                    let _ = call(ctx, "XACK", &[key, group, id.as_bytes()]);
                    q.entries.remove(&sid);
                }
            }
        }
        // 3. New work: into the free slots, the entries read ahead first, then the
        //    group's pending ones (recovering), then new ones; and new ones read ahead.
        while let Some(sid) = q.take_ahead() {
            to_start.push((qk.clone(), sid));
        }
        let mut created = false;
        loop {
            let want = match q.recovering {
                true => q.free(),
                false => q.free() + q.ahead_room(),
            };
            if !q.wanted || want == 0 {
                break;
            }
            let free = want.to_string();
            if q.recovering {
                let start = match q.after {
                    Some(s) => format!("({s}"),
                    None => "-".into(),
                };
                let r = call(
                    ctx,
                    "XPENDING",
                    &[key, group, start.as_bytes(), b"+", free.as_bytes()],
                );
                if let Err(e) = &r {
                    if !created && error_text(e).starts_with("NOGROUP") {
                        created = true;
                        let _ = call(ctx, "XGROUP", &[b"CREATE", key, group, b"0"]);
                        continue;
                    }
                    break;
                }
                let mut listed = 0;
                let mut ids: Vec<(Sid, u32)> = Vec::new();
                if let Ok(CallReply::Array(list)) = &r {
                    for item in list.iter() {
                        listed += 1;
                        let Ok(CallReply::Array(p)) = item else {
                            continue;
                        };
                        let Some(sid) = sid_of(p.get(0)) else {
                            continue;
                        };
                        let deliveries = p.get(3).as_ref().and_then(int_of).unwrap_or(1);
                        q.after = Some(sid);
                        if !q.entries.contains_key(&sid) {
                            ids.push((sid, deliveries.clamp(0, u32::MAX as i64) as u32));
                        }
                    }
                }
                if listed < q.free() {
                    q.recovering = false;
                }
                if ids.is_empty() {
                    if listed == 0 {
                        q.recovering = false;
                    }
                    continue;
                }
                let id_texts: Vec<String> = ids.iter().map(|(s, _)| s.to_string()).collect();
                let mut args: Vec<&[u8]> = vec![key, group, &consumer, b"0"];
                args.extend(id_texts.iter().map(|s| s.as_bytes()));
                let claimed: HashMap<Sid, Fields> = parse_entries(&call(ctx, "XCLAIM", &args))
                    .into_iter()
                    .collect();
                for (sid, deliveries) in ids {
                    let Some(fields) = claimed.get(&sid) else {
                        // Deleted from the stream: drop it from the group too.
                        let _ = call(ctx, "XACK", &[key, group, sid.to_string().as_bytes()]);
                        continue;
                    };
                    if deliveries >= opts.max_attempts {
                        // It was delivered that many times already (its runs were cut
                        // short by a restart or failover): no attempt is left.
                        q.done.push((
                            sid,
                            Outcome::DeadLetter {
                                fields: fields.clone(),
                                attempts: deliveries,
                                error: format!(
                                    "no attempt left after {deliveries} deliveries (runs cut short by a restart or failover)"
                                ),
                                last_exit: None,
                            },
                        ));
                        self.dirty_queues.insert(qk.clone());
                        continue;
                    }
                    q.entries
                        .insert(sid, Entry::new(fields.clone(), deliveries + 1));
                    to_start.push((qk.clone(), sid));
                }
            } else {
                let r = call(
                    ctx,
                    "XREADGROUP",
                    &[
                        b"GROUP",
                        group,
                        &consumer,
                        b"COUNT",
                        free.as_bytes(),
                        b"STREAMS",
                        key,
                        b">",
                    ],
                );
                if let Err(e) = &r {
                    if !created && error_text(e).starts_with("NOGROUP") {
                        created = true;
                        let _ = call(ctx, "XGROUP", &[b"CREATE", key, group, b"0"]);
                        continue;
                    }
                    ffi::log_warning(format!(
                        "streamwatch: cannot read '{}' through group '{}': {}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(group),
                        error_text(e)
                    ));
                    break;
                }
                let mut got = Vec::new();
                if let Ok(CallReply::Array(streams)) = &r {
                    if let Some(Ok(CallReply::Array(s))) = streams.get(0) {
                        got = parse_entries(&s.get(1).unwrap_or(Ok(CallReply::Unknown)));
                    }
                }
                let drained = got.len() < want;
                for (sid, fields) in got {
                    if q.free() > 0 {
                        q.entries.insert(sid, Entry::new(fields, 1));
                        to_start.push((qk.clone(), sid));
                    } else {
                        q.ahead.push_back((sid, fields));
                    }
                }
                if drained {
                    break; // nothing more in the stream for now
                }
            }
        }
        // 4. The group's own figures, for STREAMWATCH.WATCHES.
        if q.stats_at.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            q.stats_at = Some(Instant::now());
            if let Some((pending, lag)) = group_figures(ctx, key, group) {
                q.pending = pending;
                q.lag = lag;
            }
        }
    }

    /// Starts the entry's run (its attempt number is already counted).
    fn start_entry(&mut self, qk: &QueueKey, sid: Sid) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let watch = q.watch.clone();
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        let h = watch.handler.clone();
        let db = qk.db.to_string();
        let id = sid.to_string();
        let names: Vec<(String, &[u8])> = e
            .fields
            .iter()
            .filter_map(|(f, v)| {
                Some((
                    format!("{{field:{}}}", std::str::from_utf8(f).ok()?),
                    v.as_slice(),
                ))
            })
            .collect();
        let mut vars: Vec<(&str, &[u8])> = vec![
            ("{key}", &qk.key),
            ("{id}", id.as_bytes()),
            ("{db}", db.as_bytes()),
        ];
        vars.extend(names.iter().map(|(n, v)| (n.as_str(), *v)));
        let stdin = entry_json(&e.fields);
        let run_id = self.next_run;
        self.next_run += 1;
        let req = runs::spawn_request(
            &h,
            run_id,
            &vars,
            vec![
                (b"STREAMWATCH_KEY".to_vec(), qk.key.clone()),
                (b"STREAMWATCH_DB".to_vec(), db.as_bytes().to_vec()),
                (b"STREAMWATCH_ID".to_vec(), id.as_bytes().to_vec()),
            ],
            Some(stdin),
        );
        e.backoff_until = None;
        e.timed_out = false;
        e.run = Some(Run::new(run_id));
        self.runs.insert(run_id, RunOf::Entry(qk.clone(), sid));
        stats::bump(&stats::RUNS_STARTED);
        let req = match req {
            Ok(req) => req,
            Err(problem) => {
                self.run_ended(run_id, End::SpawnError(problem));
                return;
            }
        };
        if !h.timeout.is_zero() {
            self.timers.push(Reverse((
                Instant::now() + h.timeout,
                Timer::Timeout(run_id),
            )));
        }
        self.send_helper(&req);
    }

    /// A run of `timeout-ms` is over: stop it; its end counts as a failed attempt.
    pub(super) fn time_out(&mut self, run_id: u64) {
        let Some(RunOf::Entry(qk, sid)) = self.runs.get(&run_id).cloned() else {
            return;
        };
        let Some(e) = self
            .queues
            .get_mut(&qk)
            .and_then(|q| q.entries.get_mut(&sid))
        else {
            return;
        };
        if let Some(run) = e.run.as_mut().filter(|r| r.id == run_id && !r.stopping) {
            run.stopping = true;
            e.timed_out = true;
            self.send_helper(&Request::Stop { run: run_id });
        }
    }

    pub(super) fn entry_run_ended(&mut self, qk: QueueKey, sid: Sid, run_id: u64, end: End) {
        let active = self.active();
        let Some(q) = self.queues.get_mut(&qk) else {
            return;
        };
        let watch = q.watch.clone();
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        let Some(run) = e.run.take().filter(|r| r.id == run_id) else {
            return;
        };
        e.log.finish(watch.handler.log_lines());
        let mut extra = vec![("pid", run.pid.unwrap_or(0).to_string().into_bytes())];
        let error = match &end {
            End::Status(status) => {
                stats::bump(&stats::EXITS);
                let n = exit_number(*status);
                e.last_exit = Some(n);
                if n >= 0 {
                    extra.push(("code", n.to_string().into_bytes()));
                } else {
                    extra.push(("signal", (-n).to_string().into_bytes()));
                }
                if e.timed_out {
                    Some(format!(
                        "timed out after {} ms",
                        watch.handler.timeout.as_millis()
                    ))
                } else if n == 0 {
                    None
                } else if n > 0 {
                    Some(format!("exit code {n}"))
                } else {
                    Some(format!("killed by signal {}", -n))
                }
            }
            End::SpawnError(msg) => Some(msg.clone()),
        };
        if run.stopping && !e.timed_out || !q.wanted || !active {
            // Stopped by us (UNWATCH, pause, demotion): no outcome; the entry stays
            // pending in the group and is claimed again when the queue runs again.
            q.entries.remove(&sid);
            if q.wanted {
                q.rescan();
                self.dirty_queues.insert(qk.clone());
            }
            self.forget_if_idle(&qk);
            return;
        }
        self.dirty_queues.insert(qk.clone());
        let Some(error) = error else {
            q.entries.remove(&sid);
            q.done.push((sid, Outcome::Ack));
            self.start_ahead(&qk);
            return;
        };
        stats::bump(&stats::FAILURES);
        let ev = if matches!(end, End::SpawnError(_)) {
            "spawn-error"
        } else {
            "exited"
        };
        extra.push(("error", error.clone().into_bytes()));
        self.events.entry(ev, &qk, &watch, sid, extra);
        let Some(q) = self.queues.get_mut(&qk) else {
            return;
        };
        let Some(e) = q.entries.get_mut(&sid) else {
            return;
        };
        if e.attempts >= watch.spec.stream.max_attempts {
            let Some(e) = q.entries.remove(&sid) else {
                return;
            };
            q.done.push((
                sid,
                Outcome::DeadLetter {
                    fields: e.fields,
                    attempts: e.attempts,
                    error,
                    last_exit: e.last_exit,
                },
            ));
            self.start_ahead(&qk);
            return;
        }
        watch.queue.retried.fetch_add(1, Ordering::Relaxed);
        let delay = watch.handler.backoff(e.attempts);
        let at = Instant::now() + delay;
        e.backoff_until = Some(at);
        self.timers
            .push(Reverse((at, Timer::Entry(qk.clone(), sid))));
        let extra = vec![
            ("attempts", e.attempts.to_string().into_bytes()),
            ("delay_ms", delay.as_millis().to_string().into_bytes()),
        ];
        self.events.entry("backoff", &qk, &watch, sid, extra);
    }

    /// A slot freed: the next entry read ahead starts now, not after the next read.
    fn start_ahead(&mut self, qk: &QueueKey) {
        if let Some(sid) = self.queues.get_mut(qk).and_then(Queue::take_ahead) {
            self.start_entry(qk, sid);
        }
    }

    /// A retry's backoff is over.
    pub(super) fn entry_due(&mut self, qk: &QueueKey, sid: Sid, at: Instant) {
        if let Some(e) = self
            .queues
            .get_mut(qk)
            .and_then(|q| q.entries.get_mut(&sid))
            .filter(|e| e.run.is_none() && e.backoff_until == Some(at))
        {
            e.backoff_until = None;
            e.retry_due = true;
            self.dirty_queues.insert(qk.clone());
        }
    }

    /// Queues whose figures to refresh now and then, and the gauges per watch.
    pub(super) fn publish_queue_stats(&mut self, counts: &mut [u64; 6]) {
        let mut per_watch: HashMap<u64, (i64, i64, usize)> = HashMap::new();
        for (qk, q) in &self.queues {
            for e in q.entries.values() {
                if let Some(i) = stats::state_index(e.state()) {
                    counts[i] += 1;
                }
            }
            let s = per_watch.entry(qk.watch).or_default();
            s.0 += q.pending;
            s.1 += q.lag;
            s.2 += q.entries.len();
        }
        for w in self.watches.iter() {
            if w.spec.kind == crate::spec::Kind::Stream {
                let (pending, lag, n) = per_watch.get(&w.id).copied().unwrap_or_default();
                w.queue.pending.store(pending, Ordering::Relaxed);
                w.queue.lag.store(lag, Ordering::Relaxed);
                w.jobs.store(n, Ordering::Relaxed);
            }
        }
        // Keep the figures fresh while anything is queued or in flight: such queues
        // are looked at again when their figures are due (`stats_due` wakes the loop).
        let now = Instant::now();
        self.stats_due = None;
        for (qk, q) in &self.queues {
            if q.wanted && (q.pending > 0 || q.lag > 0 || !q.entries.is_empty()) {
                match q.stats_at.map(|t| t + STATS_EVERY).filter(|&due| due > now) {
                    None => {
                        self.dirty_queues.insert(qk.clone());
                    }
                    Some(due) => {
                        self.stats_due = Some(self.stats_due.map_or(due, |d| d.min(due)));
                    }
                }
            }
        }
    }
}

/// `pending` and `lag` of `group` on `key` (XINFO GROUPS); lag is 0 when unknown.
fn group_figures(ctx: &Context, key: &[u8], group: &[u8]) -> Option<(i64, i64)> {
    let opts = CallOptionsBuilder::new().build();
    let r: CallResult = ctx.call_ext("XINFO", &opts, &[b"GROUPS".as_slice(), key]);
    let Ok(CallReply::Array(groups)) = &r else {
        return None;
    };
    for g in groups.iter() {
        let Ok(CallReply::Array(kv)) = g else {
            continue;
        };
        let items: Vec<CallResult> = kv.iter().collect();
        let mut name = None;
        let (mut pending, mut lag) = (0, 0);
        for pair in items.chunks_exact(2) {
            match bytes_of(&pair[0]).as_deref() {
                Some(b"name") => name = bytes_of(&pair[1]),
                Some(b"pending") => pending = int_of(&pair[1]).unwrap_or(0),
                Some(b"lag") => lag = int_of(&pair[1]).unwrap_or(0),
                _ => {}
            }
        }
        if name.as_deref() == Some(group) {
            return Some((pending, lag));
        }
    }
    None
}

/// The entry as a JSON object (`{"field":"value",...}`, in stream order). JSON text is
/// Unicode: bytes that are not UTF-8 become U+FFFD here (`{field:NAME}` in the command
/// passes them exactly).
pub fn entry_json(fields: &Fields) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.push(b'"');
        for c in String::from_utf8_lossy(b).chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out.push(b'"');
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (f, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, f);
        out.push(b':');
        string(&mut out, v);
    }
    out.extend_from_slice(b"}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_like_redis() {
        let a = Sid::parse(b"1700000000000-2").unwrap();
        let b = Sid::parse(b"1700000000000-10").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(Sid::parse(b"nope"), None);
        assert_eq!(Sid::parse(b"1-"), None);
    }

    #[test]
    fn json_escapes() {
        let fields = vec![
            (b"url".to_vec(), b"a\"b\\c\n\x01".to_vec()),
            (b"n".to_vec(), b"\xff\xc3\xa9".to_vec()),
        ];
        assert_eq!(
            String::from_utf8(entry_json(&fields)).unwrap(),
            "{\"url\":\"a\\\"b\\\\c\\n\\u0001\",\"n\":\"\u{fffd}é\"}\n"
        );
        assert_eq!(entry_json(&vec![]), b"{}\n");
    }
}
