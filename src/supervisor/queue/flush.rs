//! The queues' one GIL hold per loop turn: every dirty queue's acknowledgements and
//! dead-letters, retries claimed again, and new work (the group's pending entries
//! first, then new ones, and as many read ahead), through the calls of `stream.rs`.
//! The runs start after the GIL is released.

use super::{Entry, Queues, STATS_EVERY};
use crate::cluster;
use crate::ffi;
use crate::outcomes;
use crate::spec::Ack;
use crate::supervisor::events::Flushed;
use crate::supervisor::gil;
use crate::supervisor::look::{Node, Tsc};
use crate::supervisor::stream::{Group, QueueKey, Sid};
use crate::supervisor::Effects;
use redis_module::{Context, ContextFlags};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Queues {
    /// Every dirty queue's work under one GIL hold: acknowledgements and dead-letters,
    /// retries (claimed again), then as many entries as there are free slots (the
    /// group's pending ones first). The runs start after the GIL is released. Nothing is
    /// done on a node that is no longer a primary, or while writes are paused (these
    /// calls write: a write during CLIENT PAUSE WRITE or FAILOVER crashes the server).
    pub(in crate::supervisor) fn flush(
        &mut self,
        tsc: &Tsc,
        node: &Node,
        fx: &mut Effects,
    ) -> Flushed {
        if self.dirty.is_empty() {
            return Flushed::Done;
        }
        let now = Instant::now();
        let dirty: Vec<QueueKey> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|qk| self.queues.get(qk).is_some_and(|q| q.has_work(now)))
            .collect();
        if dirty.is_empty() {
            return Flushed::Done;
        }
        let mut to_start: Vec<(QueueKey, Sid)> = Vec::new();
        {
            let ctx = gil::lock(tsc);
            let flags = ctx.get_flags();
            if !flags.contains(ContextFlags::MASTER) {
                return Flushed::Demoted;
            }
            if ctx.avoid_replication_traffic() {
                self.dirty.extend(dirty);
                return Flushed::WritesPaused;
            }
            if !flags.contains(ContextFlags::LOADING) {
                for qk in &dirty {
                    self.flush_queue(&ctx, node, qk, &mut to_start, fx);
                }
            }
        }
        for (qk, sid) in to_start {
            self.start_entry(&qk, sid, fx);
        }
        for qk in &dirty {
            self.forget_if_idle(qk);
        }
        Flushed::Done
    }

    fn flush_queue(
        &mut self,
        ctx: &Context,
        node: &Node,
        qk: &QueueKey,
        to_start: &mut Vec<(QueueKey, Sid)>,
        fx: &mut Effects,
    ) {
        let owned = match &node.owned {
            Some(o) => cluster::key_slot(ctx, &qk.key).is_some_and(|s| o.contains(s)),
            None => true,
        };
        if !ffi::select_db(ctx, qk.db) {
            return;
        }
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let opts = q.watch.spec.stream.clone();
        let g = Group {
            ctx,
            key: &qk.key,
            group: &opts.group,
            consumer: &node.consumer,
            start: &opts.start,
        };
        // 1. Outcomes: acknowledge, or dead-letter then acknowledge (one XACK for all the
        //    finished entries); with `ACK delete` they then leave the stream too (XACK
        //    and XDEL in this one hold).
        let done = |sids: &[Sid]| {
            g.ack(sids);
            if opts.ack == Ack::Delete {
                g.delete(sids);
            }
        };
        // A cancel of an entry not read yet is kept (`outcomes::take_cancelled`), so it
        // outlives this queue (PAUSE, UNWATCH, a restart, a failover): such an entry is
        // acknowledged when read, never run.
        let cancelled_of = |ids: Vec<String>, known: &mut Option<bool>| -> BTreeSet<Sid> {
            let found = outcomes::take_cancelled(ctx, &qk.key, &ids, known);
            found
                .iter()
                .filter_map(|id| Sid::parse(id.as_bytes()))
                .collect()
        };
        let (mut kept, mut unread, mut to_ack) = (Vec::new(), Vec::new(), Vec::new());
        for (sid, d) in std::mem::take(&mut q.done) {
            let o = d.outcome;
            if let Some(dead) = d.dead {
                let dl = opts.deadletter_of(&qk.key);
                let attempts = o.attempts.to_string();
                let error = o.error.clone().unwrap_or_default();
                let last = dead.last_exit.map(|n| n.to_string()).unwrap_or_default();
                let about: [(&str, &[u8]); 8] = [
                    ("id", o.id.as_bytes()),
                    ("attempts", attempts.as_bytes()),
                    ("error", error.as_bytes()),
                    ("last_exit", last.as_bytes()),
                    ("output", &dead.output),
                    ("watch", &q.watch.spec.pattern),
                    ("group", &opts.group),
                    ("handler", q.watch.handler.name.as_bytes()),
                ];
                if let Err(e) = g.add(&dl, &dead.fields, &about) {
                    // Not acknowledged: it stays pending for the next recovery.
                    if !std::mem::replace(&mut q.dead_letter_failing, true) {
                        ffi::log_warning(format!(
                            "streamwatch: cannot dead-letter entry {} of '{}' to '{}': {e} \
                             (said once until a dead letter of this stream is written)",
                            o.id,
                            String::from_utf8_lossy(&qk.key),
                            String::from_utf8_lossy(&dl),
                        ));
                    }
                    continue;
                }
                q.dead_letter_failing = false;
                q.watch.queue.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let extra = vec![
                    ("deadletter", dl.clone()),
                    ("attempts", attempts.into_bytes()),
                    ("error", error.into_bytes()),
                ];
                fx.events.entry("dead-lettered", qk, &q.watch, sid, extra);
            } else if o.state == outcomes::ACKED {
                q.watch.queue.acked.fetch_add(1, Ordering::Relaxed);
                fx.events.entry("acked", qk, &q.watch, sid, vec![]);
            }
            match d.ack {
                true => to_ack.push(sid),
                false => unread.push(o.id.clone()),
            }
            // Made at finish; here only if `outcomes-max` was 0 then and is not now.
            let made_now = || (outcomes::max_kept() > 0).then(|| outcomes::Kept::of(&o));
            kept.extend(d.kept.or_else(made_now));
            self.finished.push((qk.db, qk.key.clone(), sid, o));
        }
        done(&to_ack);
        if !unread.is_empty() {
            q.cancels = Some(true);
        }
        let unread: Vec<&str> = unread.iter().map(String::as_str).collect();
        if let Err(e) = outcomes::keep_all(ctx, &qk.key, &kept, &unread, &mut q.kept_len) {
            if !std::mem::replace(&mut q.warned, true) {
                ffi::log_warning(format!(
                    "streamwatch: cannot keep the outcomes of '{}' beside it: {e}",
                    String::from_utf8_lossy(&qk.key),
                ));
            }
        }
        q.kept_since += kept.len();
        if q.tend_due() {
            outcomes::tend(ctx, &qk.key);
            q.kept_since = 0;
            q.tended_at = Some(Instant::now());
        }
        if !owned {
            if !q.ahead.is_empty() {
                q.rescan(); // claimed back if the slot comes back
            }
            return;
        }
        if !g.exists() {
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
            match g.claim(&[sid]).remove(&sid) {
                Some(fields) => {
                    if let Some(e) = q.entries.get_mut(&sid) {
                        e.retry_due = false;
                        e.fields = fields;
                        e.attempts += 1;
                        to_start.push((qk.clone(), sid));
                    }
                }
                None => {
                    // Deleted from the stream (or the group is gone): nothing to run.
                    g.ack(&[sid]);
                    q.entries.remove(&sid);
                }
            }
        }
        // 3. New work: into the free slots, the entries read ahead first, then the
        //    group's pending ones (recovering), then new ones; and new ones read ahead.
        while let Some(sid) = q.take_ahead() {
            to_start.push((qk.clone(), sid));
        }
        loop {
            let want = match q.recovering {
                true => q.free(),
                false => q.free() + q.ahead_room(),
            };
            if !q.wanted || want == 0 {
                break;
            }
            if q.recovering {
                let after = q.after;
                let Ok(listed) = g.created(|g| g.pending(after, want)) else {
                    break;
                };
                let n = listed.len();
                let mut ids: Vec<(Sid, u32)> = Vec::new();
                for (sid, deliveries) in listed {
                    q.after = Some(sid);
                    if !q.entries.contains_key(&sid) {
                        ids.push((sid, deliveries));
                    }
                }
                if n < q.free() {
                    q.recovering = false;
                }
                if ids.is_empty() {
                    if n == 0 {
                        q.recovering = false;
                    }
                    continue;
                }
                let sids: Vec<Sid> = ids.iter().map(|(s, _)| *s).collect();
                let claimed = g.claim(&sids);
                let cancelled =
                    cancelled_of(sids.iter().map(Sid::to_string).collect(), &mut q.cancels);
                for (sid, deliveries) in ids {
                    let Some(fields) = claimed.get(&sid) else {
                        g.ack(&[sid]); // deleted from the stream: drop it from the group too
                        continue;
                    };
                    if q.cancelled.remove(&sid) | cancelled.contains(&sid) {
                        done(&[sid]); // cancelled before it was claimed: its outcome is kept
                        continue;
                    }
                    if deliveries >= opts.max_attempts {
                        // It was delivered that many times already (its runs were cut
                        // short by a restart or failover): no attempt is left.
                        let error = format!(
                            "no attempt left after {deliveries} deliveries (runs cut short by a restart or failover)"
                        );
                        q.dead_letter(qk, sid, (None, fields.clone(), deliveries), error, fx);
                        self.dirty.insert(qk.clone());
                        continue;
                    }
                    q.entries
                        .insert(sid, Entry::new(fields.clone(), deliveries + 1));
                    to_start.push((qk.clone(), sid));
                }
            } else {
                let got = match g.created(|g| g.read_new(want)) {
                    Ok(got) => got,
                    Err(e) => {
                        ffi::log_warning(format!(
                            "streamwatch: cannot read '{}' through group '{}': {e}",
                            String::from_utf8_lossy(&qk.key),
                            String::from_utf8_lossy(&opts.group),
                        ));
                        break;
                    }
                };
                let drained = got.len() < want;
                let cancelled = cancelled_of(
                    got.iter().map(|(s, _)| s.to_string()).collect(),
                    &mut q.cancels,
                );
                let held = q.held_of(&got);
                for (sid, fields) in got {
                    if held.contains(&sid) {
                        // Delivered anew by a group made again (XGROUP DESTROY, SETID)
                        // while it runs here: it runs once, and is acknowledged in the
                        // new group when it ends.
                        continue;
                    }
                    if q.cancelled.remove(&sid) | cancelled.contains(&sid) {
                        done(&[sid]); // cancelled before it was read: its outcome is kept
                        continue;
                    }
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
            if let Some((pending, lag)) = g.figures() {
                q.pending = pending;
                q.lag = lag;
            }
        }
    }
}
