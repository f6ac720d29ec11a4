//! Pausing: the whole node (`STREAMWATCH.PAUSE`, not saved: nothing runs until
//! `RESUME`), and paused watches (`STREAMWATCH.PAUSE pattern`): a paused watch covers
//! nothing here.
//!
//! Whether a watch is paused is the registry's mark on the watch itself
//! (`Watch::is_paused`), set from data (`store::paused`), so it arrives by whatever
//! path the data takes: the command, a replicated write, a load, a promotion. Looks
//! skip paused watches (`reconcile_key`), a full reconcile scans none of their keys and
//! stops whatever they still run (`stop_paused`), and a resume is a full reconcile.
//! The stream entries a paused watch was running are stopped and stay pending in its
//! group, claimed back when it is resumed, as under a node-wide `PAUSE`.
//!
//! The `paused`/`resumed` events (with `watch`) are written for the command only: a
//! restart or a promotion that finds a watch paused is not a new pause.

use super::{Msg, Supervisor};
use crate::stats;
use crate::watch::Snapshot;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

impl Supervisor {
    /// `STREAMWATCH.PAUSE`: every job stops, and changes are ignored until RESUME.
    pub(super) fn pause_node(&mut self) {
        if !self.node.paused {
            self.node.paused = true;
            stats::PAUSED.store(true, Ordering::Relaxed);
            self.stop_everything();
            self.events.push_plain("paused");
        }
    }

    /// `STREAMWATCH.RESUME`: also releases a `start-paused` hold; reconciles.
    pub(super) fn resume_node(&mut self) {
        if self.node.paused {
            self.node.paused = false;
            stats::PAUSED.store(false, Ordering::Relaxed);
            self.events.push_plain("resumed");
        }
        self.release_hold();
        self.reconcile_all();
    }

    /// `STREAMWATCH.PAUSE pattern` / `RESUME pattern` changed the watch's state:
    /// `watches` is the registry after it (if it changed). Events in the order of the
    /// node-wide pause: `paused` once the runs are told to stop (their `exited` and
    /// `stopped` follow as they end); `resumed`, then the `started` of the reconcile.
    pub(super) fn watch_paused(
        &mut self,
        pattern: Vec<u8>,
        paused: bool,
        watches: Option<Snapshot>,
    ) {
        if !paused {
            self.events.push_watch("resumed", &pattern);
        }
        if let Some(w) = watches {
            self.handle(Msg::Watches(w));
        }
        if paused {
            self.events.push_watch("paused", &pattern);
        }
    }

    /// Stops the jobs and queues of the paused watches (at every full reconcile: a
    /// watch may have been paused by data, not by the command).
    pub(super) fn stop_paused(&mut self) {
        let paused: BTreeSet<u64> = self
            .watches
            .iter()
            .filter(|w| w.is_paused())
            .map(|w| w.id)
            .collect();
        if paused.is_empty() {
            return;
        }
        let (hash, queues, mut fx) = self.parts();
        hash.stop_watches(|id| paused.contains(&id), &mut fx);
        queues.stop_watches(|id| paused.contains(&id), &mut fx);
    }
}
