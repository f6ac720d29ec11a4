//! The clients blocked in `STREAMWATCH.WAIT` (only they are blocked, never the
//! server), by the entry they wait for. Each is answered once: with the entry's outcome
//! when the queue keeps it, nil at its timeout (kept here, not by the server: see
//! `Replier::block_waiting`), nil when a sweep finds the entry gone from the stream
//! (deleted, or acknowledged by someone else), or an error when this node stops being
//! a primary (so that it asks the new one). A client that disconnects is let go at
//! once. Bounded: past `MAX_WAITING` clients a WAIT is refused.

use super::stream::Sid;
use crate::ffi::{Replier, Reply};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The most clients waiting at once.
pub(super) const MAX_WAITING: usize = 10_000;

/// How often the entries waited for are looked at in the stream, and how many each
/// time (the oldest looked at first).
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);
pub(super) const SWEEP_BATCH: usize = 256;

pub(super) type EntryKey = (i32, Vec<u8>, Sid);

struct Waiter {
    reply: Replier,
    deadline: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Waiters {
    by_entry: HashMap<EntryKey, Vec<Waiter>>,
    count: usize,
    /// When the entries are next looked at; `None` while nobody waits.
    sweep_at: Option<Instant>,
    /// The entries, oldest sweep first (an entry's place moves to the end each time);
    /// entries answered since are dropped lazily (`compact`), so that answering one
    /// entry or letting one client go is not a scan of every waiter.
    order: Vec<EntryKey>,
    /// The entry each client (`Replier::token`) waits for.
    tokens: HashMap<usize, EntryKey>,
    /// Whether the next deadline may have changed since `changed` was last asked.
    changed: bool,
}

impl Waiters {
    /// Client `r` waits for entry `sid` of `key` until `deadline`.
    pub(super) fn add(&mut self, entry: EntryKey, reply: Replier, deadline: Option<Instant>) {
        if self.count >= MAX_WAITING {
            let why = format!("ERR STREAMWATCH.WAIT: {MAX_WAITING} clients wait already");
            reply.reply(Reply::Error(why));
            return;
        }
        let list = self.by_entry.entry(entry.clone()).or_default();
        if list.is_empty() {
            self.order.push(entry.clone());
        }
        self.tokens.insert(reply.token(), entry);
        list.push(Waiter { reply, deadline });
        self.count += 1;
        self.changed = true;
        self.sweep_at
            .get_or_insert_with(|| Instant::now() + SWEEP_EVERY);
    }

    /// Whether a client waits for `entry`.
    pub(super) fn waits_for(&self, entry: &EntryKey) -> bool {
        self.by_entry.contains_key(entry)
    }

    /// When `expire` or a sweep is next due (if anyone waits), if that may have
    /// changed since the last call.
    pub(super) fn changed(&mut self) -> Option<Option<Instant>> {
        if !std::mem::replace(&mut self.changed, false) {
            return None;
        }
        let first = self.by_entry.values().flatten().filter_map(|w| w.deadline);
        Some(first.chain(self.sweep_at).min())
    }

    /// Entry `entry` is done with: its clients get `reply` (its outcome map; nil if it
    /// is gone).
    pub(super) fn answer(&mut self, entry: &EntryKey, reply: Reply) {
        if let Some(list) = self.by_entry.remove(entry) {
            self.count -= list.len();
            self.changed = true;
            for w in list {
                self.tokens.remove(&w.reply.token());
                w.reply.reply(reply.clone());
            }
        }
        self.compact();
    }

    /// Drops from `order` the entries nobody waits for any more, once they are as
    /// many as the others (amortized O(1) per answer).
    fn compact(&mut self) {
        if self.count == 0 {
            self.sweep_at = None;
            self.order.clear();
            return;
        }
        if self.order.len() > 2 * self.by_entry.len() + 64 {
            let by_entry = &self.by_entry;
            let mut seen = std::collections::HashSet::new();
            self.order
                .retain(|e| by_entry.contains_key(e) && seen.insert(e.clone()));
        }
    }

    /// The clients whose timeout has passed get nil.
    pub(super) fn expire(&mut self, now: Instant) {
        self.take(|w| w.deadline.is_some_and(|at| at <= now), Reply::Nil);
    }

    /// The client of `Replier::token` `token` disconnected.
    pub(super) fn gone(&mut self, token: usize) {
        let Some(entry) = self.tokens.remove(&token) else {
            return;
        };
        let Some(list) = self.by_entry.get_mut(&entry) else {
            return;
        };
        let Some(at) = list.iter().position(|w| w.reply.token() == token) else {
            return;
        };
        let w = list.swap_remove(at);
        if list.is_empty() {
            self.by_entry.remove(&entry);
        }
        self.count -= 1;
        self.changed = true;
        w.reply.reply(Reply::Nil);
        self.compact();
    }

    /// Every waiting client gets error `why` (this node no longer runs the jobs).
    pub(super) fn release(&mut self, why: &str) {
        self.take(|_| true, Reply::Error(why.to_string()));
    }

    /// The entries to look at now (at most `SWEEP_BATCH`), if a sweep is due.
    pub(super) fn sweep_due(&mut self, now: Instant) -> Vec<EntryKey> {
        if self.sweep_at.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.sweep_at = Some(now + SWEEP_EVERY);
        self.changed = true;
        let by_entry = &self.by_entry;
        let mut batch: Vec<EntryKey> = Vec::new();
        let mut looked = 0;
        while looked < self.order.len() && batch.len() < SWEEP_BATCH {
            let e = &self.order[looked];
            looked += 1;
            if by_entry.contains_key(e) && !batch.contains(e) {
                batch.push(e.clone());
            }
        }
        self.order.drain(..looked);
        self.order.extend(batch.iter().cloned());
        batch
    }

    /// The waiters for which `which` is true get `reply` and go.
    fn take(&mut self, which: impl Fn(&Waiter) -> bool, reply: Reply) {
        let mut gone = 0;
        for list in self.by_entry.values_mut() {
            let (due, kept): (Vec<Waiter>, Vec<Waiter>) =
                std::mem::take(list).into_iter().partition(&which);
            *list = kept;
            gone += due.len();
            for w in due {
                self.tokens.remove(&w.reply.token());
                w.reply.reply(reply.clone());
            }
        }
        self.by_entry.retain(|_, list| !list.is_empty());
        self.count -= gone;
        self.changed |= gone > 0;
        self.compact();
    }
}
