//! The supervision options of a handler, for stream entries: a run that went silent
//! (`heartbeat-ms`, see `supervisor/heartbeat.rs`) fails its attempt, and one that
//! exits with a code of `no-restart-exit-codes` ends its entry without a retry.

use super::Queues;
use crate::config::Handler;
use crate::supervisor::heartbeat::hung_fields;
use crate::supervisor::runs::{Run, RunEnd};
use crate::supervisor::stream::{QueueKey, Sid};
use crate::supervisor::Effects;
use std::time::Duration;

impl Queues {
    /// The entry's run `id` (its own process, or the pool worker it is in) wrote
    /// nothing for `every`: it is hung and stopped (a pool worker is replaced), and
    /// its end fails the attempt (retried or dead-lettered).
    pub(in crate::supervisor) fn hung(
        &mut self,
        qk: &QueueKey,
        sid: Sid,
        id: u64,
        every: Duration,
        fx: &mut Effects,
    ) {
        let Some(q) = self.queues.get_mut(qk) else {
            return;
        };
        let watch = q.watch.clone();
        let Some(run) = q.entries.get_mut(&sid).and_then(|e| e.run.as_mut()) else {
            return;
        };
        if run.id != id || run.stopping {
            return;
        }
        run.hung = Some(every);
        let fields = hung_fields(run.pid, every);
        Queues::stop_run(run, true, fx);
        fx.events.entry("hung", qk, &watch, sid, fields);
    }
}

/// Whether the end `r` of an entry's `run` is an exit code of the handler's
/// `no-restart-exit-codes` (a run that ended by itself and failed): then the entry is
/// dead-lettered whatever attempts remain, and its error says why.
pub(super) fn no_retry(
    h: &Handler,
    run: &Run,
    r: &mut RunEnd,
    timed_out: Option<Duration>,
) -> bool {
    let by_itself = timed_out.is_none() && run.hung.is_none();
    if !(by_itself && r.error.is_some() && h.no_restart(r.exit)) {
        return false;
    }
    if let Some(e) = r.error.as_mut() {
        e.push_str(", in no-restart-exit-codes: not retried");
    }
    true
}
