//! Hash jobs: every field of a watched hash is a job, a long-running worker with the
//! field's value. A look at a key (read by `look.rs`) is planned here by pure functions
//! that diff the fields with the key's jobs (`plan_key`, `plan_fields`, tested by
//! tables), then applied: jobs started, restarted (the value changed) or stopped (the
//! field is gone). What follows a run's end is the restart policy (`policy.rs`).

use super::heartbeat::hung_fields;
use super::log::Log;
use super::policy;
use super::runs::{run_end, End, Run, RunOf, Runs};
use super::timers::Timer;
use super::Effects;
use crate::config;
use crate::spec::OnChange;
use crate::stats;
use crate::watch::Watch;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct JobKey {
    pub db: i32,
    pub key: Vec<u8>,
    pub watch: u64,
    pub field: Vec<u8>,
}

impl JobKey {
    /// The first job key of `key` in `db`, in order.
    fn first(db: i32, key: &[u8]) -> JobKey {
        JobKey {
            db,
            key: key.to_vec(),
            watch: 0,
            field: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    Exited,
    Failed,
}

pub(super) struct Job {
    pub watch: Arc<Watch>,
    /// The value the job should run with (the field's current value).
    pub value: Vec<u8>,
    /// False once the field is gone: the job is removed when its run has ended.
    pub wanted: bool,
    pub run: Option<Run>,
    /// The current run is being stopped to start again with `value`.
    restart_pending: bool,
    backoff_until: Option<Instant>,
    finished: Option<Finished>,
    pub runs: u64,
    pub failures: u32,
    pub last_exit: Option<i64>,
    /// Why the last run ended, when its exit does not say it (a spawn error, a hung
    /// run, an exit code in `no-restart-exit-codes`), while no other run has started;
    /// none after a plain exit.
    pub last_error: Option<String>,
    pub log: Log,
}

impl Job {
    pub(super) fn state(&self) -> &'static str {
        match (&self.run, self.finished) {
            (Some(r), _) => r.state(),
            (None, _) if self.backoff_until.is_some() => "backoff",
            (None, Some(Finished::Failed)) => "failed",
            (None, Some(Finished::Exited)) => "exited",
            (None, None) => "starting",
        }
    }

    /// Not restarting: no run being stopped to start again, and none still starting.
    pub(super) fn settled(&self) -> bool {
        !self.restart_pending && self.run.as_ref().is_none_or(|r| r.pid.is_some())
    }

    /// Its run is being stopped to start again: the next run starts from the job's
    /// watch's handler as it is then.
    pub(super) fn restart_pending(&self) -> bool {
        self.restart_pending
    }
}

/// What a job is meant to be, as far as a plan is concerned.
pub(super) trait Desired {
    fn wanted(&self) -> bool;
    fn value(&self) -> &[u8];
}

impl Desired for Job {
    fn wanted(&self) -> bool {
        self.wanted
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// What a look at a key found to do.
#[derive(Default, Debug, PartialEq)]
pub(super) struct Plan {
    pub stop: Vec<JobKey>,
    /// (job, revived, new value)
    pub change: Vec<(JobKey, bool, Vec<u8>)>,
    /// (index of the covering watch, field, value)
    pub new: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

/// Diffs the whole key (its `fields`, sorted by field) with its jobs; `covering` are
/// the ids of the hash watches that cover the key. Walks the fields and the jobs (both
/// sorted by field) side by side, with no allocation unless something changed, so a
/// look at a big hash whose fields are unchanged costs little besides reading it.
pub(super) fn plan_key<J: Desired>(
    jobs: &BTreeMap<JobKey, J>,
    db: i32,
    key: &[u8],
    covering: &[u64],
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Plan {
    let mut plan = Plan::default();
    for (k, _) in jobs
        .range(JobKey::first(db, key)..)
        .take_while(|(k, _)| k.db == db && k.key == key)
    {
        if !covering.contains(&k.watch) {
            plan.stop.push(k.clone());
        }
    }
    for (wi, &watch) in covering.iter().enumerate() {
        let start = JobKey {
            watch,
            ..JobKey::first(db, key)
        };
        let mut jobs = jobs
            .range(start..)
            .take_while(|(k, _)| k.db == db && k.key == key && k.watch == watch)
            .peekable();
        let mut fi = 0;
        loop {
            match (jobs.peek(), fields.get(fi)) {
                (None, None) => break,
                (Some((k, j)), Some((f, v))) if k.field == *f => {
                    if !j.wanted() || j.value() != v.as_slice() {
                        plan.change.push(((*k).clone(), !j.wanted(), v.clone()));
                    }
                    jobs.next();
                    fi += 1;
                }
                (None, Some((f, v))) => {
                    plan.new.push((wi, f.clone(), v.clone())); // no job yet
                    fi += 1;
                }
                (Some((k, _)), Some((f, v))) if k.field > *f => {
                    plan.new.push((wi, f.clone(), v.clone()));
                    fi += 1;
                }
                (Some((k, _)), _) => {
                    plan.stop.push((*k).clone()); // its field is gone
                    jobs.next();
                }
            }
        }
    }
    plan
}

/// Diffs only the named fields (`values`: what each holds now, `None` if it is gone)
/// with their jobs.
pub(super) fn plan_fields<'n, J: Desired>(
    jobs: &BTreeMap<JobKey, J>,
    db: i32,
    key: &[u8],
    covering: &[u64],
    names: impl Iterator<Item = &'n Vec<u8>> + Clone,
    values: &[Option<Vec<u8>>],
) -> Plan {
    let mut plan = Plan::default();
    for (wi, &watch) in covering.iter().enumerate() {
        for (field, value) in names.clone().zip(values) {
            let jk = JobKey {
                db,
                key: key.to_vec(),
                watch,
                field: field.clone(),
            };
            match (jobs.get(&jk), value) {
                (Some(j), Some(v)) => {
                    if !j.wanted() || j.value() != v.as_slice() {
                        plan.change.push((jk, !j.wanted(), v.clone()));
                    }
                }
                (None, Some(v)) => plan.new.push((wi, field.clone(), v.clone())),
                (Some(_), None) => plan.stop.push(jk),
                (None, None) => {}
            }
        }
    }
    plan
}

/// What a reconcile did (the reply of `STREAMWATCH.RECONCILE`).
#[derive(Default)]
pub(super) struct Tally {
    pub started: i64,
    pub stopped: i64,
    pub restarted: i64,
}

/// Every hash job, and the keys waiting for room under `max-jobs`.
#[derive(Default)]
pub(super) struct HashJobs {
    pub jobs: BTreeMap<JobKey, Job>,
    /// Keys with fields not started because of `max-jobs`, and how many each.
    pub over_limit: BTreeMap<(i32, Vec<u8>), usize>,
    /// A job went while keys waited for room: they are to be looked at again.
    room_freed: bool,
}

impl HashJobs {
    pub(super) fn has_jobs(&self, db: i32, key: &[u8]) -> bool {
        self.jobs
            .range(JobKey::first(db, key)..)
            .next()
            .is_some_and(|(k, _)| k.db == db && k.key == key)
    }

    /// The keys that have jobs.
    pub(super) fn keys(&self) -> impl Iterator<Item = (i32, Vec<u8>)> + '_ {
        self.jobs.keys().map(|k| (k.db, k.key.clone()))
    }

    pub(super) fn live_runs(&self) -> impl Iterator<Item = &Run> {
        self.jobs.values().filter_map(|j| j.run.as_ref())
    }

    /// The job of `field` of `key`, if any (of the first watch that has one).
    pub(super) fn find(&self, db: i32, key: &[u8], field: &[u8]) -> Option<(&JobKey, &Job)> {
        self.jobs
            .iter()
            .find(|(k, _)| k.db == db && k.key == key && k.field == field)
    }

    /// Whether a job went since the last call while keys waited for room.
    pub(super) fn take_room_freed(&mut self) -> bool {
        std::mem::take(&mut self.room_freed)
    }

    /// Adds the jobs' states to `counts` (see `stats::STATES`); returns how many fields
    /// wait for room.
    pub(super) fn count(&self, counts: &mut [u64; 6]) -> usize {
        for j in self.jobs.values() {
            if let Some(i) = stats::state_index(j.state()) {
                counts[i] += 1;
            }
        }
        self.over_limit.values().sum()
    }

    /// Carries out a plan for `key`: stops, restarts and starts jobs.
    pub(super) fn apply(
        &mut self,
        db: i32,
        key: &[u8],
        covering: &[Arc<Watch>],
        plan: Plan,
        fx: &mut Effects,
        tally: &mut Tally,
    ) {
        for k in &plan.stop {
            if self.jobs.get(k).is_some_and(|j| j.wanted) {
                tally.stopped += 1;
                self.unwant(k, fx);
            }
        }
        for (jk, revived, value) in plan.change {
            let restart = revived
                || covering
                    .iter()
                    .any(|w| w.id == jk.watch && w.spec.onchange == OnChange::Restart);
            if let Some(job) = self.jobs.get_mut(&jk) {
                job.wanted = true;
                job.value = value;
                if restart {
                    tally.restarted += 1;
                    self.restart(&jk, fx.runs);
                }
            }
        }
        for (wi, field, value) in plan.new {
            let w = &covering[wi];
            if self.jobs.len() >= config::max_jobs() {
                *self.over_limit.entry((db, key.to_vec())).or_default() += 1;
                continue;
            }
            let jk = JobKey {
                db,
                key: key.to_vec(),
                watch: w.id,
                field,
            };
            tally.started += 1;
            self.jobs.insert(
                jk.clone(),
                Job {
                    watch: w.clone(),
                    value,
                    wanted: true,
                    run: None,
                    restart_pending: false,
                    backoff_until: None,
                    finished: None,
                    runs: 0,
                    failures: 0,
                    last_exit: None,
                    last_error: None,
                    log: Log::default(),
                },
            );
            w.jobs.fetch_add(1, Ordering::Relaxed);
            self.start_run(&jk, fx.runs);
        }
    }

    fn start_run(&mut self, jk: &JobKey, runs: &mut Runs) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.backoff_until = None;
        job.finished = None;
        job.last_error = None; // a new run: the last one's error no longer explains the state
        job.runs += 1;
        let db = jk.db.to_string();
        let vars: [(&str, &[u8]); 4] = [
            ("{key}", &jk.key),
            ("{field}", &jk.field),
            ("{value}", &job.value),
            ("{db}", db.as_bytes()),
        ];
        let env = vec![
            (b"STREAMWATCH_KEY".to_vec(), jk.key.clone()),
            (b"STREAMWATCH_DB".to_vec(), db.as_bytes().to_vec()),
            (b"STREAMWATCH_FIELD".to_vec(), jk.field.clone()),
            (
                b"STREAMWATCH_WATCH".to_vec(),
                job.watch.spec.pattern.clone(),
            ),
            (
                b"STREAMWATCH_HANDLER".to_vec(),
                job.watch.handler.name.clone().into_bytes(),
            ),
        ];
        let owner = RunOf::Job(jk.clone());
        job.run = Some(runs.start(owner, &job.watch.handler, &vars, env, None));
    }

    /// Stops the job's run, if any; the job then starts again with its current value.
    pub(super) fn restart(&mut self, jk: &JobKey, runs: &mut Runs) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.failures = 0;
        match &mut job.run {
            Some(run) => {
                job.restart_pending = true;
                runs.stop(run);
            }
            None => self.start_run(jk, runs),
        }
    }

    /// `STREAMWATCH.RESTART`: 1 if the field has a job (now restarting), else 0.
    pub(super) fn restart_field(
        &mut self,
        db: i32,
        key: &[u8],
        field: &[u8],
        runs: &mut Runs,
    ) -> i64 {
        let keys: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(k, j)| k.db == db && k.key == key && k.field == field && j.wanted)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.restart(k, runs);
        }
        i64::from(!keys.is_empty())
    }

    /// The job's field is gone: stop its run and forget it.
    pub(super) fn unwant(&mut self, jk: &JobKey, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.wanted = false;
        job.restart_pending = false;
        match &mut job.run {
            Some(run) => fx.runs.stop(run),
            None => self.remove(jk, fx),
        }
    }

    fn remove(&mut self, jk: &JobKey, fx: &mut Effects) {
        if let Some(job) = self.jobs.remove(jk) {
            job.watch.jobs.fetch_sub(1, Ordering::Relaxed);
            fx.events.job("stopped", jk, &job, vec![]);
            self.room_freed |= !self.over_limit.is_empty();
        }
    }

    /// The jobs of the watches for which `stop` is true are stopped (UNWATCH; every
    /// watch: pause, demotion); returns how many had runs.
    pub(super) fn stop_watches(&mut self, stop: impl Fn(u64) -> bool, fx: &mut Effects) -> i64 {
        let gone: Vec<JobKey> = self
            .jobs
            .keys()
            .filter(|k| stop(k.watch))
            .cloned()
            .collect();
        let running = gone.iter().filter(|k| self.jobs[*k].run.is_some()).count();
        for k in gone {
            self.unwant(&k, fx);
        }
        running as i64
    }

    /// The helper reported the run's process.
    pub(super) fn started(
        &mut self,
        jk: &JobKey,
        id: u64,
        pid: i32,
        start_time: Option<u64>,
        fx: &mut Effects,
    ) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        if let Some(r) = job.run.as_mut().filter(|r| r.id == id) {
            r.spawned(pid, start_time);
        }
        let pid = vec![("pid", pid.to_string().into_bytes())];
        fx.events.job("started", jk, job, pid);
    }

    pub(super) fn output(&mut self, jk: &JobKey, data: &[u8]) {
        if let Some(job) = self.jobs.get_mut(jk) {
            let cap = job.watch.handler.log_lines();
            job.log.push(data, cap);
        }
    }

    /// Run `id` of the job ended; `live`: this node runs jobs now (a primary, not
    /// paused). What follows is the restart policy's.
    pub(super) fn run_ended(
        &mut self,
        jk: &JobKey,
        id: u64,
        end: End,
        live: bool,
        fx: &mut Effects,
    ) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        let Some(run) = job.run.take_if(|r| r.id == id) else {
            return;
        };
        let h = job.watch.handler.clone();
        job.log.finish(h.log_lines());
        let e = run_end(&run, end, None);
        if e.exit.is_some() {
            job.last_exit = e.exit;
        }
        let failed = e.error.is_some();
        let mut fields = e.fields;
        // Why, when the exit does not say it: a spawn error, a hung run.
        job.last_error = e.error.filter(|_| e.exit.is_none() || run.hung.is_some());
        if let Some(error) = &job.last_error {
            fields.push(("error", error.clone().into_bytes()));
        }
        fx.events.job(e.event, jk, job, fields);
        let exit = e.exit.filter(|_| run.hung.is_none());
        let ended = policy::Ended {
            wanted: job.wanted && live,
            restart_pending: job.restart_pending,
            failures: job.failures,
            failed,
            ran_for: e.ran_for,
            exit,
        };
        let (next, failures) = policy::after_run(&h, ended);
        job.failures = failures;
        match next {
            policy::Next::Remove => self.remove(jk, fx),
            policy::Next::Start => {
                job.restart_pending = false;
                self.start_run(jk, fx.runs);
            }
            policy::Next::Exited => {
                stats::bump_if(&stats::FAILURES, failed);
                job.finished = Some(Finished::Exited);
            }
            policy::Next::Failed => {
                stats::bump(&stats::FAILURES);
                job.finished = Some(Finished::Failed);
                let mut fields = vec![("failures", failures.to_string().into_bytes())];
                if let Some(n) = exit.filter(|_| h.no_restart(exit)) {
                    let why = format!("exit code {n} is in no-restart-exit-codes");
                    fields.push(("error", why.clone().into_bytes()));
                    job.last_error = Some(why);
                }
                fx.events.job("failed", jk, job, fields);
            }
            policy::Next::Backoff(delay) => {
                stats::bump_if(&stats::FAILURES, failed);
                let at = Instant::now() + delay;
                job.backoff_until = Some(at);
                fx.timers.push(at, Timer::Job(jk.clone()));
                let delay_ms = vec![("delay_ms", delay.as_millis().to_string().into_bytes())];
                fx.events.job("backoff", jk, job, delay_ms);
            }
        }
    }

    /// Run `id` wrote nothing for `every` (`heartbeat-ms`): it is hung, and stopped;
    /// its end is a failure (see `run_end`), and the restart policy decides.
    pub(super) fn hung(&mut self, jk: &JobKey, id: u64, every: Duration, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        let Some(run) = job.run.as_mut().filter(|r| r.id == id && !r.stopping) else {
            return;
        };
        run.hung = Some(every);
        let fields = hung_fields(run.pid, every);
        fx.runs.stop(run);
        fx.events.job("hung", jk, job, fields);
    }

    /// The job's backoff (set for `at`) is over: it starts again, if it still waits.
    pub(super) fn backoff_over(&mut self, jk: &JobKey, at: Instant, runs: &mut Runs) {
        let due = self
            .jobs
            .get(jk)
            .is_some_and(|j| j.run.is_none() && j.wanted && j.backoff_until == Some(at));
        if due {
            self.start_run(jk, runs);
        }
    }

    /// Starts the jobs whose backoff ended while nothing could start (no helper).
    pub(super) fn start_overdue(&mut self, now: Instant, runs: &mut Runs) {
        let due: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.wanted && j.run.is_none())
            .filter(|(_, j)| j.backoff_until.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.start_run(&k, runs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Is(bool, &'static str);

    impl Desired for Is {
        fn wanted(&self) -> bool {
            self.0
        }
        fn value(&self) -> &[u8] {
            self.1.as_bytes()
        }
    }

    fn jk(watch: u64, field: &str) -> JobKey {
        JobKey {
            db: 0,
            key: b"k".to_vec(),
            watch,
            field: field.as_bytes().to_vec(),
        }
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    /// The key's jobs: (watch, field, wanted, value), and one job of another key.
    fn jobs(list: &[(u64, &'static str, bool, &'static str)]) -> BTreeMap<JobKey, Is> {
        let mut m: BTreeMap<JobKey, Is> = list
            .iter()
            .map(|&(w, f, wanted, v)| (jk(w, f), Is(wanted, v)))
            .collect();
        let other = JobKey {
            key: b"other".to_vec(),
            ..jk(1, "a")
        };
        m.insert(other, Is(true, "x"));
        m
    }

    #[test]
    fn a_look_at_the_whole_key_plans_the_difference() {
        type Row<'a> = (
            &'a [(u64, &'static str, bool, &'static str)], // jobs
            &'a [u64],                                     // covering watches
            &'a [(&'a str, &'a str)],                      // fields, sorted
            Plan,
        );
        let table: Vec<Row> = vec![
            // Nothing changed: nothing to do.
            (&[(1, "a", true, "1")], &[1], &[("a", "1")], Plan::default()),
            // A new field, a changed value, a gone field.
            (
                &[(1, "a", true, "1"), (1, "c", true, "3")],
                &[1],
                &[("a", "2"), ("b", "9")],
                Plan {
                    stop: vec![jk(1, "c")],
                    change: vec![(jk(1, "a"), false, b("2"))],
                    new: vec![(0, b("b"), b("9"))],
                },
            ),
            // A job being stopped whose field came back is revived.
            (
                &[(1, "a", false, "1")],
                &[1],
                &[("a", "1")],
                Plan {
                    change: vec![(jk(1, "a"), true, b("1"))],
                    ..Plan::default()
                },
            ),
            // A watch that no longer covers the key: its jobs stop; the other watch's
            // fields start (each watch has its own job per field).
            (
                &[(1, "a", true, "1")],
                &[2],
                &[("a", "1")],
                Plan {
                    stop: vec![jk(1, "a")],
                    new: vec![(0, b("a"), b("1"))],
                    ..Plan::default()
                },
            ),
            // The key is gone: every job stops.
            (
                &[(1, "a", true, "1"), (1, "b", true, "2")],
                &[1],
                &[],
                Plan {
                    stop: vec![jk(1, "a"), jk(1, "b")],
                    ..Plan::default()
                },
            ),
        ];
        for (i, (list, covering, fields, want)) in table.into_iter().enumerate() {
            let fields: Vec<(Vec<u8>, Vec<u8>)> =
                fields.iter().map(|(f, v)| (b(f), b(v))).collect();
            let got = plan_key(&jobs(list), 0, b"k", covering, &fields);
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn a_look_at_named_fields_plans_only_them() {
        let jobs = jobs(&[
            (1, "a", true, "1"),
            (1, "b", true, "2"),
            (1, "z", true, "0"),
        ]);
        let names = [b("a"), b("b"), b("c"), b("d")];
        let values = [Some(b("1")), None, Some(b("3")), None];
        let got = plan_fields(&jobs, 0, b"k", &[1], names.iter(), &values);
        let want = Plan {
            stop: vec![jk(1, "b")],
            change: vec![],
            new: vec![(0, b("c"), b("3"))],
        };
        assert_eq!(got, want, "z is not named: left alone");
    }
}
