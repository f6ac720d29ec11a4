//! The queues' figures: the entries' states for STATUS/INFO and, per stream watch,
//! the groups' pending and lag (read in `flush`) for STREAMWATCH.WATCHES.

use super::{Queues, STATS_EVERY};
use crate::stats;
use crate::watch::Snapshot;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Queues {
    /// Adds the entries' states to `counts`, publishes the figures per watch, and keeps
    /// them fresh while anything is queued or in flight: such queues are flushed again
    /// when their figures are due (`stats_due` wakes the loop).
    pub(in crate::supervisor) fn publish(&mut self, watches: &Snapshot, counts: &mut [u64; 6]) {
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
        for w in watches.iter() {
            if w.spec.kind == crate::spec::Kind::Stream {
                let (pending, lag, n) = match per_watch.get(&w.id) {
                    Some(&figures) => figures,
                    // Paused: its groups are not read, so their figures are not known.
                    None if w.is_paused() => (-1, -1, 0),
                    None => Default::default(),
                };
                w.queue.pending.store(pending, Ordering::Relaxed);
                w.queue.lag.store(lag, Ordering::Relaxed);
                w.jobs.store(n, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        self.stats_due = None;
        for (qk, q) in &self.queues {
            if q.wanted && (q.pending > 0 || q.lag > 0 || !q.entries.is_empty()) {
                match q.stats_at.map(|t| t + STATS_EVERY).filter(|&due| due > now) {
                    None => {
                        self.dirty.insert(qk.clone());
                    }
                    Some(due) => {
                        self.stats_due = Some(self.stats_due.map_or(due, |d| d.min(due)));
                    }
                }
            }
        }
    }
}
