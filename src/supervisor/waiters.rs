//! The clients blocked in `STREAMWATCH.WAIT` (only they are blocked, never the
//! server), by the entry they wait for: each is answered with the entry's outcome when
//! the queue keeps it, or nil at its timeout (kept here, not by the server: see
//! `Replier::block_waiting`). Bounded: past `MAX_WAITING` clients a WAIT is
//! refused. A node that stops being a primary answers its waiting clients with an
//! error, so they ask the new primary.

use super::stream::Sid;
use super::timers::{Timer, Timers};
use crate::ffi::{Replier, Reply};
use crate::outcomes::Outcome;
use std::collections::HashMap;
use std::time::Instant;

/// The most clients waiting at once.
pub(super) const MAX_WAITING: usize = 10_000;

type EntryKey = (i32, Vec<u8>, Sid);

#[derive(Default)]
pub(super) struct Waiters {
    by_entry: HashMap<EntryKey, Vec<(Replier, Option<Instant>)>>,
    count: usize,
}

impl Waiters {
    /// Client `r` waits for entry `sid` of `key` until `deadline`.
    pub(super) fn add(
        &mut self,
        (db, key, sid): EntryKey,
        r: Replier,
        deadline: Option<Instant>,
        timers: &mut Timers,
    ) {
        if self.count >= MAX_WAITING {
            let why = format!("ERR STREAMWATCH.WAIT: {MAX_WAITING} clients wait already");
            r.reply(Reply::Error(why));
            return;
        }
        if let Some(at) = deadline {
            timers.push(at, Timer::Waits);
        }
        self.by_entry
            .entry((db, key, sid))
            .or_default()
            .push((r, deadline));
        self.count += 1;
    }

    /// Entry `sid` of `key` has outcome `o`: its clients get it.
    pub(super) fn answer(&mut self, db: i32, key: &[u8], sid: Sid, o: &Outcome) {
        if let Some(list) = self.by_entry.remove(&(db, key.to_vec(), sid)) {
            self.count -= list.len();
            for (r, _) in list {
                r.reply(o.reply(db, key));
            }
        }
    }

    /// The clients whose timeout has passed get nil.
    pub(super) fn expire(&mut self, now: Instant) {
        let mut gone = 0;
        for list in self.by_entry.values_mut() {
            let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(_, at)| at.is_some_and(|at| at <= now));
            *list = kept;
            gone += due.len();
            for (r, _) in due {
                r.reply(Reply::Nil);
            }
        }
        self.by_entry.retain(|_, list| !list.is_empty());
        self.count -= gone;
    }

    /// Every waiting client gets error `why` (this node no longer runs the jobs).
    pub(super) fn release(&mut self, why: &str) {
        for (_, list) in self.by_entry.drain() {
            for (r, _) in list {
                r.reply(Reply::Error(why.to_string()));
            }
        }
        self.count = 0;
    }
}
