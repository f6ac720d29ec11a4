//! Following one stream entry: `STREAMWATCH.JOB key id`, `STREAMWATCH.WAIT` and
//! `STREAMWATCH.CANCEL`. An entry is held by a queue of this node (queued, running or
//! in backoff), finished (its outcome kept in Redis, `crate::outcomes`), or still in
//! the stream, waiting to be read or claimed; the group and the stream tell which.

use super::stream::{Group, Sid, Stage};
use super::waiters::EntryKey;
use super::{gil, views, Supervisor};
use crate::ffi::{self, Replier, Reply};
use crate::outcomes::{self, Outcome};
use crate::spec::Kind;
use crate::watch::Watch;
use redis_module::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an entry of a stream is.
enum Found {
    /// A queue of this node holds it: its `STREAMWATCH.JOB` map.
    Held(Reply),
    /// Done with: its outcome (kept, or kept at the next flush).
    Finished(Outcome),
    /// In the stream and not acknowledged by the group of this watch: waiting to be
    /// read or claimed.
    Queued(Arc<Watch>),
    /// Acknowledged by the watch's group, and no outcome is kept (evicted, or off).
    Acked(Arc<Watch>),
    Missing,
}

/// What a node that is not a primary answers WAIT and CANCEL.
pub const NOT_PRIMARY: &str =
    "ERR streamwatch runs jobs on the primary only: ask the primary (after a failover, the new one)";

impl Supervisor {
    /// `STREAMWATCH.JOB key field|id`.
    pub(super) fn job(&mut self, db: i32, key: &[u8], field: &[u8], reply: Replier) {
        if let Some((k, j)) = self.hash.find(db, key, field) {
            return reply.reply(views::job_map(k, j, true));
        }
        let Some(sid) = Sid::parse(field) else {
            return reply.reply(Reply::Nil);
        };
        reply.reply(match self.find_entry(db, key, sid) {
            Found::Held(map) => map,
            Found::Finished(o) => o.reply(db, key),
            Found::Queued(w) => short_map(&w, db, key, sid, "queued"),
            Found::Acked(w) => short_map(&w, db, key, sid, outcomes::ACKED),
            Found::Missing => Reply::Nil,
        });
    }

    /// `STREAMWATCH.WAIT key id [TIMEOUT ms]`: answered now if the entry is done with
    /// (or not in the stream: nil), else when it is (`Waiters`).
    pub(super) fn wait(
        &mut self,
        (db, key, sid): (i32, Vec<u8>, Sid),
        timeout: Option<Duration>,
        reply: Replier,
    ) {
        if !self.node.primary {
            return reply.reply(Reply::Error(NOT_PRIMARY.into()));
        }
        match self.find_entry(db, &key, sid) {
            Found::Held(_) | Found::Queued(_) => {
                let deadline = timeout.map(|t| Instant::now() + t);
                self.waiters.add((db, key, sid), reply, deadline);
            }
            Found::Finished(o) => reply.reply(o.reply(db, &key)),
            Found::Acked(w) => reply.reply(short_map(&w, db, &key, sid, outcomes::ACKED)),
            Found::Missing => reply.reply(Reply::Nil),
        }
    }

    /// `STREAMWATCH.CANCEL key id`: 1 if the entry was cancelled (or is being: a
    /// running one is stopped first), 0 if it is not waiting or running.
    pub(super) fn cancel(&mut self, db: i32, key: &[u8], sid: Sid, reply: Replier) {
        if !self.node.primary {
            return reply.reply(Reply::Error(NOT_PRIMARY.into()));
        }
        let (_, queues, mut fx) = self.parts();
        if let super::queue::Cancel::Done = queues.cancel(db, key, sid, &mut fx) {
            return reply.reply(Reply::Int(1));
        }
        // Not held here: cancellable if some queue's group has not acknowledged it.
        let groups: Vec<Vec<u8>> = self
            .watches
            .iter()
            .filter(|w| self.queues.consumes(db, key, w.id))
            .map(|w| w.spec.stream.group.clone())
            .collect();
        let mut unread: Vec<Vec<u8>> = Vec::new();
        {
            let ctx = gil::lock(&self.tsc);
            if ffi::select_db(&ctx, db) {
                for group in groups {
                    let g = Group {
                        ctx: &ctx,
                        key,
                        group: &group,
                        consumer: b"",
                        start: b"0",
                    };
                    if matches!(g.stage(sid), Stage::Unread | Stage::Pending) {
                        unread.push(group);
                    }
                }
            }
        }
        let (_, queues, mut fx) = self.parts();
        let took = queues.cancel_unread(db, key, sid, |g| unread.iter().any(|u| u == g), &mut fx);
        reply.reply(Reply::Int(took.into()));
    }

    /// The clients waiting for the entries the last flush finished get their outcome.
    pub(super) fn answer_waiters(&mut self) {
        for (db, key, sid, o) in self.queues.take_finished() {
            let entry = (db, key, sid);
            if self.waiters.waits_for(&entry) {
                let reply = o.reply(db, &entry.1);
                self.waiters.answer(&entry, reply);
            }
        }
    }

    /// A look at the entries waited for that no queue here holds (in one GIL hold):
    /// one that has left the stream, or that its group acknowledged without this node
    /// keeping an outcome (an XACK by hand, say), is answered now.
    pub(super) fn sweep_waiters(&mut self, now: Instant) {
        let batch = self.waiters.sweep_due(now);
        let batch: Vec<EntryKey> = batch
            .into_iter()
            .filter(|(db, key, sid)| {
                views::held_entry(&self.queues, *db, key, *sid).is_none()
                    && self.queues.finishing(*db, key, *sid).is_none()
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        let mut answers = Vec::new();
        {
            let ctx = gil::lock(&self.tsc);
            for (db, key, sid) in batch {
                let reply = match self.look(&ctx, db, &key, sid) {
                    Found::Held(_) | Found::Queued(_) => continue,
                    Found::Finished(o) => o.reply(db, &key),
                    Found::Acked(w) => short_map(&w, db, &key, sid, outcomes::ACKED),
                    Found::Missing => Reply::Nil,
                };
                answers.push(((db, key, sid), reply));
            }
        }
        for (entry, reply) in answers {
            self.waiters.answer(&entry, reply);
        }
    }

    fn find_entry(&mut self, db: i32, key: &[u8], sid: Sid) -> Found {
        if let Some(map) = views::held_entry(&self.queues, db, key, sid) {
            return Found::Held(map);
        }
        if let Some(o) = self.queues.finishing(db, key, sid) {
            return Found::Finished(o);
        }
        let ctx = gil::lock(&self.tsc);
        self.look(&ctx, db, key, sid)
    }

    /// Where an entry no queue here holds is, as Redis tells (under the GIL).
    fn look(&self, ctx: &Context, db: i32, key: &[u8], sid: Sid) -> Found {
        let streams: Vec<Arc<Watch>> = self
            .watches
            .iter()
            .filter(|w| w.spec.kind == Kind::Stream && w.covers(db, key))
            .cloned()
            .collect();
        if !ffi::select_db(ctx, db) {
            return Found::Missing;
        }
        if let Some(o) = outcomes::find(ctx, key, &sid.to_string(), None) {
            return Found::Finished(o);
        }
        // Queued if some group of it still has it; acked if they all acknowledged it.
        let mut acked = None;
        for w in streams {
            let g = Group {
                ctx,
                key,
                group: &w.spec.stream.group,
                consumer: b"",
                start: b"0",
            };
            match g.stage(sid) {
                Stage::Unread | Stage::Pending => return Found::Queued(w),
                Stage::Acked => acked = acked.or(Some(w)),
                Stage::Missing => return Found::Missing,
            }
        }
        acked.map_or(Found::Missing, Found::Acked)
    }
}

/// The map of an entry this node does not hold and has no outcome of.
fn short_map(w: &Watch, db: i32, key: &[u8], sid: Sid, state: &str) -> Reply {
    Reply::Map(vec![
        ("watch".into(), Reply::str(&w.spec.pattern)),
        ("db".into(), Reply::Int(db.into())),
        ("key".into(), Reply::str(key)),
        ("id".into(), Reply::str(sid.to_string())),
        ("state".into(), Reply::str(state)),
        ("group".into(), Reply::str(&w.spec.stream.group)),
    ])
}
