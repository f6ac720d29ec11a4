//! `heartbeat-ms`: a run that writes nothing (stdout, stderr or fd 3) for that long is
//! hung. It is stopped the usual way (stop-signal, grace, SIGKILL), an event `hung` is
//! written at once, and its end is a failure whatever its exit (`run_end`: `error` =
//! `hung: no output for N ms`), so what follows is its owner's: a hash job's restart
//! policy, a stream entry's retry or dead letter. A pool worker is hung only while it
//! has an entry (its entry's attempt fails, the worker is replaced); waiting idle for
//! work is not hanging, and the clock starts again when it is given an entry.
//!
//! The clocks (`Heartbeats`, kept by `Runs`: one per run whose handler has a heartbeat)
//! hold when each run was last heard from; output only moves its clock. Each run has
//! one timer (`Timer::Heartbeat`, set when the helper reports its process) that, when
//! it fires early (the run was heard from since), is set again for the new deadline.

use super::jobs::HashJobs;
use super::queue::Queues;
use super::runs::{RunOf, Runs};
use super::timers::{Timer, Timers};
use super::Effects;
use crate::protocol::Report;
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Clock {
    every: Duration,
    /// Last heard from (output, replies, an entry given); `None` before it started.
    heard: Option<Instant>,
}

/// What a run's timer finds when it fires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// The run has ended (or has no heartbeat): nothing to do.
    Moot,
    /// It was heard from since: its deadline is now this.
    Later(Instant),
    /// Silent for its whole heartbeat (this long).
    Silent(Duration),
}

/// The silence clocks of the runs whose handler has a heartbeat.
#[derive(Default)]
pub(super) struct Heartbeats {
    clocks: HashMap<u64, Clock>,
}

impl Heartbeats {
    /// Run `id` starts with a heartbeat of `every` (none if zero).
    pub(super) fn expect(&mut self, id: u64, every: Duration) {
        if !every.is_zero() {
            let heard = None;
            self.clocks.insert(id, Clock { every, heard });
        }
    }

    /// Run `id` has ended.
    pub(super) fn forget(&mut self, id: u64) {
        self.clocks.remove(&id);
    }

    /// The helper reported run `id`'s process at `now`: its clock starts, and its
    /// timer is due then (`None`: no heartbeat).
    fn started(&mut self, id: u64, now: Instant) -> Option<Instant> {
        let c = self.clocks.get_mut(&id)?;
        c.heard = Some(now);
        Some(now + c.every)
    }

    /// Run `id` was heard from (`now` is read only if it has a clock).
    pub(super) fn heard(&mut self, id: u64, now: impl FnOnce() -> Instant) {
        if let Some(c) = self.clocks.get_mut(&id) {
            c.heard = Some(now());
        }
    }

    /// Run `id`'s timer fired at `now`.
    fn due(&self, id: u64, now: Instant) -> Due {
        let Some((c, heard)) = self.clocks.get(&id).and_then(|c| Some((c, c.heard?))) else {
            return Due::Moot;
        };
        match heard + c.every {
            at if at > now => Due::Later(at),
            _ => Due::Silent(c.every),
        }
    }

    /// Run `id` was silent but is not hung (an idle pool worker): its clock starts
    /// again at `now`; its next deadline.
    fn rest(&mut self, id: u64, now: Instant) -> Option<Instant> {
        self.started(id, now)
    }
}

/// What a report says about a run's silence: its process started, or it wrote.
pub(super) fn report(r: &Report, runs: &mut Runs, timers: &mut Timers) {
    let clocks = &mut runs.heartbeats;
    if clocks.clocks.is_empty() {
        return;
    }
    match r {
        Report::Started { run, .. } => {
            if let Some(at) = clocks.started(*run, Instant::now()) {
                timers.push(at, Timer::Heartbeat(*run));
            }
        }
        Report::Output { run, .. } | Report::Replies { run, .. } => {
            clocks.heard(*run, Instant::now);
        }
        _ => {}
    }
}

/// Run `id`'s timer fired at `now`: set again if the run was heard from since; if
/// not, the run is hung and its owner stops it (an idle pool worker is not hung).
pub(super) fn fire(
    hash: &mut HashJobs,
    queues: &mut Queues,
    id: u64,
    now: Instant,
    fx: &mut Effects,
) {
    let every = match fx.runs.heartbeats.due(id, now) {
        Due::Moot => return,
        Due::Later(at) => return fx.timers.push(at, Timer::Heartbeat(id)),
        Due::Silent(every) => every,
    };
    match fx.runs.owner(id).cloned() {
        Some(RunOf::Job(jk)) => hash.hung(&jk, id, every, fx),
        Some(RunOf::Entry(qk, sid)) => queues.hung(&qk, sid, id, every, fx),
        Some(RunOf::Worker(name)) => match fx.pools.busy_with(&name, id).cloned() {
            Some((qk, sid)) => queues.hung(&qk, sid, id, every, fx),
            None => {
                if let Some(at) = fx.runs.heartbeats.rest(id, now) {
                    fx.timers.push(at, Timer::Heartbeat(id));
                }
            }
        },
        None => {}
    }
}

/// The error of a hung run's end (and of its `hung` event).
pub(super) fn hung_error(every: Duration) -> String {
    format!("hung: no output for {} ms", every.as_millis())
}

/// The fields of a `hung` event: the run's pid and the error.
pub(super) fn hung_fields(pid: Option<i32>, every: Duration) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("pid", pid.unwrap_or(0).to_string().into_bytes()),
        ("error", hung_error(every).into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::runs::{run_end, End, Run};
    use super::*;

    #[test]
    fn a_run_is_hung_after_a_whole_heartbeat_of_silence() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let every = Duration::from_millis(100);
        let mut h = Heartbeats::default();
        h.expect(1, every);
        h.expect(2, Duration::ZERO); // no heartbeat: no clock
        assert_eq!(h.due(1, ms(500)), Due::Moot, "not started yet");
        assert_eq!(h.started(2, ms(0)), None);
        assert_eq!(h.started(1, ms(0)), Some(ms(100)));
        // (what happens at, output?, the timer fires at) -> what it finds
        let table = [
            (30, true, 100, Due::Later(ms(130))),
            (0, false, 130, Due::Silent(every)),
            (150, true, 140, Due::Later(ms(250))),
            (260, true, 250, Due::Later(ms(360))),
            (0, false, 360, Due::Silent(every)),
            (0, false, 900, Due::Silent(every)),
        ];
        for (i, (at, output, fires, want)) in table.into_iter().enumerate() {
            if output {
                h.heard(1, || ms(at));
            }
            assert_eq!(h.due(1, ms(fires)), want, "row {i}");
        }
        assert_eq!(h.rest(1, ms(900)), Some(ms(1000)), "an idle worker rests");
        assert_eq!(h.due(1, ms(950)), Due::Later(ms(1000)));
        h.forget(1);
        assert_eq!(h.due(1, ms(2000)), Due::Moot, "ended");
        h.heard(1, || {
            panic!("no clock is read for a run without a heartbeat")
        });
    }

    #[test]
    fn a_hung_run_ends_failed_whatever_its_exit() {
        let mut run = Run::new(1);
        run.hung = Some(Duration::from_millis(300));
        for status in [0, 15, 3 << 8] {
            let e = run_end(&run, End::Status(status), None);
            let error = e.error.as_deref();
            assert_eq!(error, Some("hung: no output for 300 ms"), "{status}");
        }
        let e = run_end(&run, End::Status(9), Some(Duration::from_millis(50)));
        let error = e.error.as_deref();
        assert_eq!(error, Some("timed out after 50 ms"), "a timeout says so");
    }
}
