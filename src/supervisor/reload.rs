//! `STREAMWATCH.RELOAD` on the supervisor thread: the config file is read again, the
//! watches follow it (`watch/reload.rs`, under the GIL), and the jobs of handlers whose
//! definition changed restart, at most `reload-batch` at a time (0: all at once).
//! Untouched jobs keep running.
//!
//! What "restart" means per kind of job:
//! * a hash job stops its run (signal, grace, KILL) and starts one from the new
//!   definition; the next batch goes once each job of this one runs again (or ended:
//!   a spawn error, a job whose field went);
//! * a pool worker finishes the entry it has, then is replaced from the new definition
//!   (an idle one at once), so the pool keeps serving while it turns over;
//! * a per-entry stream run is not stopped: the entries that run now finish, the next
//!   ones run the new definition.
//!
//! A file that cannot be read or does not parse, or one the command watches cannot
//! live with, changes nothing: the reply is the error, naming the file, line and key.

use super::jobs::JobKey;
use super::{gil, Supervisor};
use crate::config;
use crate::ffi::{self, Replier, Reply};
use crate::store;
use crate::watch::{self, Watch};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The hash jobs a reload restarts: those waiting for their turn (in order, and as a
/// set, so that a reload of thousands of jobs is not quadratic), and those restarting
/// now.
#[derive(Default)]
pub(super) struct Rollout {
    waiting: VecDeque<JobKey>,
    queued: BTreeSet<JobKey>,
    restarting: BTreeSet<JobKey>,
}

/// How many more jobs may start restarting while `restarting` are: at most `batch` at
/// once, 0 meaning no limit.
fn room(batch: usize, restarting: usize) -> usize {
    match batch {
        0 => usize::MAX,
        n => n.saturating_sub(restarting),
    }
}

/// The reload-batch config as a count (0: all).
fn batch() -> usize {
    usize::try_from(config::RELOAD_BATCH.load(Ordering::Relaxed)).unwrap_or(0)
}

impl Supervisor {
    /// RELOAD: see the file's doc. Replies with what changed.
    pub(super) fn reload(&mut self, reply: Replier) {
        let path = config::get(&config::CONFIG_PATH);
        if path.is_empty() {
            return reply.reply(Reply::Error(
                "ERR the module was loaded without a config file (config); there is \
                 nothing to reload"
                    .into(),
            ));
        }
        let new = match config::load(&path) {
            Ok(new) => new,
            Err(e) => {
                return reply.reply(Reply::Error(format!(
                    "ERR bad config file {e}; nothing changed"
                )))
            }
        };
        let changes = {
            let ctx = gil::lock(&self.tsc);
            let changes = watch::reload(&new);
            if changes.is_ok() {
                config::set_file(new);
                // Stored watches a handler of the new file makes usable again (the
                // snapshot is read again below).
                let _ = store::sync(&ctx);
            }
            changes
        };
        let changes = match changes {
            Ok(c) => c,
            Err(e) => {
                return reply.reply(Reply::Error(format!("ERR {path}: {e}; nothing changed")))
            }
        };
        // Every part that holds a watch takes its new self (same id, new handler).
        let now: BTreeMap<u64, Arc<Watch>> = watch::snapshot()
            .iter()
            .map(|w| (w.id, w.clone()))
            .collect();
        for job in self.hash.jobs.values_mut() {
            if let Some(w) = now.get(&job.watch.id) {
                job.watch = w.clone();
            }
        }
        for q in self.queues.queues.values_mut() {
            if let Some(w) = now.get(&q.watch.id) {
                q.watch = w.clone();
            }
        }
        let file = config::file();
        for name in &changes.handlers_changed {
            let h = &file.handlers[name];
            self.pools
                .turn_over(name, h, &mut self.runs, &mut self.timers);
        }
        self.groups.watches_changed();
        self.reconcile_all();
        let changed: BTreeSet<u64> = changes.changed.iter().copied().collect();
        let restart: Vec<JobKey> = self
            .hash
            .jobs
            .iter()
            .filter(|(k, j)| j.wanted && changed.contains(&k.watch))
            .map(|(k, _)| k.clone())
            .collect();
        let restarting = restart.len();
        self.prune_restarting();
        for jk in restart {
            // A job whose run is being stopped to start again (an earlier rollout, a
            // changed value) starts from the definition now in force; every other
            // one restarts in its turn, also one an earlier rollout already started
            // again (from the definition before this one).
            let stopping = self.hash.jobs.get(&jk).is_some_and(|j| j.restart_pending());
            if !stopping && self.rollout.queued.insert(jk.clone()) {
                self.rollout.waiting.push_back(jk);
            }
        }
        self.roll();
        ffi::log_notice(format!(
            "streamwatch: reloaded {path}: handlers changed {:?}, added {:?}, removed {:?}; \
             watches added {:?}, changed {:?}, removed {:?}; {restarting} jobs restart",
            changes.handlers_changed,
            changes.handlers_added,
            changes.handlers_removed,
            changes.watches_added,
            changes.watches_changed,
            changes.watches_removed,
        ));
        let names = |v: &[String]| Reply::Array(v.iter().map(Reply::str).collect());
        reply.reply(Reply::Map(vec![
            ("handlers_changed".into(), names(&changes.handlers_changed)),
            ("handlers_added".into(), names(&changes.handlers_added)),
            ("handlers_removed".into(), names(&changes.handlers_removed)),
            ("watches_added".into(), names(&changes.watches_added)),
            ("watches_changed".into(), names(&changes.watches_changed)),
            ("watches_removed".into(), names(&changes.watches_removed)),
            ("jobs_restarting".into(), Reply::Int(restarting as i64)),
        ]));
    }

    /// The rollout's next step: the jobs that restarted are done (running again, or
    /// ended), and as many waiting ones as `reload-batch` allows restart.
    pub(super) fn roll(&mut self) {
        if self.rollout.waiting.is_empty() && self.rollout.restarting.is_empty() {
            return;
        }
        self.prune_restarting();
        let mut room = room(batch(), self.rollout.restarting.len());
        while room > 0 {
            let Some(jk) = self.rollout.waiting.pop_front() else {
                break;
            };
            self.rollout.queued.remove(&jk);
            if !self.hash.jobs.get(&jk).is_some_and(|j| j.wanted) {
                continue; // its field went, or nothing runs here now
            }
            self.hash.restart(&jk, &mut self.runs);
            if self.hash.jobs.get(&jk).is_some_and(|j| !j.settled())
                && self.rollout.restarting.insert(jk)
            {
                room -= 1;
            }
        }
    }

    /// The jobs that restarted are done (running again, or ended).
    fn prune_restarting(&mut self) {
        let hash = &self.hash;
        self.rollout
            .restarting
            .retain(|jk| hash.jobs.get(jk).is_some_and(|j| !j.settled()));
    }
}

#[cfg(test)]
mod tests {
    use super::room;

    #[test]
    fn a_batch_bounds_the_restarts_in_flight() {
        // (batch, restarting now) -> how many more may start
        let table = [
            (0, 0, usize::MAX),
            (0, 50, usize::MAX),
            (1, 0, 1),
            (1, 1, 0),
            (3, 1, 2),
            (3, 3, 0),
            (3, 5, 0), // the batch was lowered meanwhile
        ];
        for (batch, restarting, want) in table {
            assert_eq!(room(batch, restarting), want, "batch {batch}, {restarting}");
        }
    }
}
