//! What the helper reports about runs (started, output, replies, exited) and the
//! supervisor's deadlines: each handed to the part that owns the run (a hash job, a
//! stream entry, a pool worker), and the one end path of every run.

use super::*;

impl Supervisor {
    pub(super) fn on_report(&mut self, r: Report) {
        heartbeat::report(&r, &mut self.runs, &mut self.timers);
        match r {
            Report::Started {
                run,
                pid,
                start_ticks,
            } => {
                let start = (start_ticks != 0).then_some(start_ticks);
                self.runs.record.mark();
                let (hash, queues, mut fx) = self.parts();
                match fx.runs.owner(run).cloned() {
                    Some(RunOf::Job(jk)) => hash.started(&jk, run, pid, start, &mut fx),
                    Some(RunOf::Entry(qk, sid)) => queues.started(&qk, sid, run, pid, start),
                    Some(RunOf::Worker(name)) => {
                        fx.pools.started(&name, run, pid, start);
                        let pid = ("pid", pid.to_string().into_bytes());
                        fx.events.worker("worker-started", &name, vec![pid]);
                    }
                    None => {}
                }
            }
            Report::SpawnFailed { run, error } => self.run_ended(run, End::SpawnError(error)),
            Report::Output { run, data } => {
                runner::output_taken(data.len());
                match self.runs.owner(run) {
                    Some(RunOf::Job(jk)) => self.hash.output(&jk.clone(), &data),
                    Some(RunOf::Entry(qk, sid)) => self.queues.output(&qk.clone(), *sid, &data),
                    Some(RunOf::Worker(name)) => match self.pools.busy_with(name, run) {
                        Some((qk, sid)) => self.queues.output(&qk.clone(), *sid, &data),
                        None => self.pools.output(&name.clone(), run, &data),
                    },
                    None => {}
                }
            }
            Report::Replies { run, data } => {
                runner::output_taken(data.len());
                match self.runs.owner(run).cloned() {
                    Some(RunOf::Worker(name)) => {
                        let (runs, timers) = (&mut self.runs, &mut self.timers);
                        self.pools.replies(&name, run, &data, runs, timers);
                    }
                    Some(RunOf::Entry(qk, sid)) => self.queues.run_said(&qk, sid, &data),
                    _ => {}
                }
            }
            Report::Unread { run } => {
                if let Some(RunOf::Worker(name)) = self.runs.owner(run).cloned() {
                    self.pools.unread(&name, run);
                }
            }
            Report::Fed { run, count } => {
                if let Some(RunOf::Worker(name)) = self.runs.owner(run).cloned() {
                    self.pools.fed(&name, run, count);
                }
            }
            Report::Exited { run, status } => self.run_ended(run, End::Status(status)),
            // No run asks for replies yet (worker pools).
        }
    }

    /// The one end of every run: its owner (a hash job or a stream entry) decides what
    /// follows.
    pub(super) fn run_ended(&mut self, id: u64, end: End) {
        let (live, active) = (self.live(), self.active());
        let (hash, queues, mut fx) = self.parts();
        match fx.runs.ended(id) {
            Some(RunOf::Job(jk)) => hash.run_ended(&jk, id, end, live, &mut fx),
            Some(RunOf::Entry(qk, sid)) => {
                queues.run_ended(&qk, sid, id, end, (active, false), &mut fx)
            }
            Some(RunOf::Worker(name)) => {
                let pid = fx.pools.pid(&name, id).unwrap_or(0);
                fx.events
                    .worker("worker-exited", &name, runs::exit_fields(pid, &end));
                let left = fx.pools.worker_ended(&name, id, active, fx.timers);
                for (qk, sid) in left.unrun {
                    queues.requeue(&qk, sid, id, &mut fx);
                }
                if let Some((qk, sid)) = left.failed {
                    queues.run_ended(&qk, sid, id, end, (active, true), &mut fx);
                }
            }
            None => {}
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        self.timers.due(Deadline::Writes, now); // writes are tried again this turn
        if self.timers.due(Deadline::Waits, now) {
            self.waiters.expire(now);
            self.sweep_waiters(now);
        }
        if self.timers.due(Deadline::Helper, now) && !self.runs.helper_running() {
            self.restart_helper();
        }
        if self.timers.due(Deadline::QueueStats, now) {
            self.stats_now = true; // published this turn: due queues are flushed next
        }
        if self.timers.due(Deadline::Gate, now) {
            self.guarded("gate", |s| {
                s.check_gate();
            });
        }
        if self.timers.due(Deadline::SlotPoll, now) {
            self.guarded("slot ownership", |s| s.poll_slots());
        }
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Job(jk) => {
                    if self.active() {
                        self.hash.backoff_over(&jk, at, &mut self.runs);
                    }
                }
                Timer::Entry(qk, sid) => self.queues.backoff_over(&qk, sid, at),
                Timer::Timeout(qk, sid, run) => {
                    let (_, queues, mut fx) = self.parts();
                    queues.time_out(&qk, sid, run, &mut fx);
                }
                Timer::Heartbeat(id) => {
                    let (hash, queues, mut fx) = self.parts();
                    heartbeat::fire(hash, queues, id, now, &mut fx);
                }
                Timer::Pool(name) => self.pools.backoff_over(&name),
                Timer::Recycle(name, id) => self.pools.recycle_over(&name, id, &mut self.runs),
            }
        }
    }

    pub(super) fn on_helper_gone(&mut self) {
        ffi::log_warning("streamwatch: the helper process is gone; its runs are counted as failed");
        let reported: Vec<(i32, Option<u64>)> = self
            .hash
            .live_runs()
            .chain(self.queues.live_runs())
            .chain(self.pools.live_runs())
            .filter_map(|r| Some((r.pid?, r.start_time)))
            .collect();
        self.runs.helper_gone(reported.into_iter());
        for id in self.runs.ids() {
            self.run_ended(id, End::SpawnError("the helper process exited".into()));
        }
        let at = self.runs.helper_failed();
        self.timers.set(Deadline::Helper, Some(at));
    }
}
