//! The replies of `STREAMWATCH.JOBS` and `STREAMWATCH.JOB`: maps of hash jobs and of
//! in-flight stream entries, read from the supervisor's jobs and queues.

use super::jobs::{HashJobs, Job, JobKey};
use super::queue::{Entry, Queues};
use super::runs::Run;
use super::stream::{QueueKey, Sid};
use super::JobFilter;
use crate::ffi::Reply;
use crate::watch::Watch;

/// A run's pid, start (ms since the epoch) and uptime (ms); none of them without a run.
fn run_times(run: Option<&Run>) -> (Option<i64>, Option<i64>, i64) {
    match run {
        Some(r) => (
            r.pid.map(i64::from),
            Some(r.started_ms),
            r.started.elapsed().as_millis() as i64,
        ),
        None => (None, None, 0),
    }
}

/// `STREAMWATCH.JOBS`/`JOB` map of a hash job.
pub(super) fn job_map(k: &JobKey, j: &Job, detail: bool) -> Reply {
    let (pid, started, uptime) = run_times(j.run.as_ref());
    let mut m = vec![
        ("watch".into(), Reply::str(&j.watch.spec.pattern)),
        ("db".into(), Reply::Int(k.db as i64)),
        ("key".into(), Reply::str(&k.key)),
        ("field".into(), Reply::str(&k.field)),
        ("state".into(), Reply::str(j.state())),
        ("pid".into(), Reply::opt_int(pid)),
        ("started_ms".into(), Reply::opt_int(started)),
        ("uptime_ms".into(), Reply::Int(uptime)),
        ("runs".into(), Reply::Int(j.runs as i64)),
        ("failures".into(), Reply::Int(j.failures as i64)),
        ("last_exit".into(), Reply::opt_int(j.last_exit)),
    ];
    if detail {
        m.push(("handler".into(), Reply::str(&j.watch.handler.name)));
        m.push(("value".into(), Reply::str(&j.value)));
        m.push((
            "error".into(),
            j.last_error.as_ref().map_or(Reply::Nil, Reply::str),
        ));
        m.push(("log".into(), j.log.reply()));
    }
    Reply::Map(m)
}

/// `STREAMWATCH.JOBS`/`JOB` map of an in-flight entry of the queue `qk` (of `watch`).
pub(super) fn entry_map(qk: &QueueKey, watch: &Watch, sid: Sid, e: &Entry, detail: bool) -> Reply {
    let (pid, started, uptime) = run_times(e.run.as_ref());
    let mut m = vec![
        ("watch".into(), Reply::str(&watch.spec.pattern)),
        ("db".into(), Reply::Int(qk.db as i64)),
        ("key".into(), Reply::str(&qk.key)),
        ("id".into(), Reply::str(sid.to_string())),
        // JOB answers in the words of outcomes (queued, running, backoff); JOBS in
        // those of runs (starting, running, stopping, backoff).
        (
            "state".into(),
            Reply::str(if detail { e.status() } else { e.state() }),
        ),
        ("pid".into(), Reply::opt_int(pid)),
        ("started_ms".into(), Reply::opt_int(started)),
        ("uptime_ms".into(), Reply::Int(uptime)),
        ("runs".into(), Reply::Int(e.attempts as i64)),
        (
            "failures".into(),
            Reply::Int(e.attempts.saturating_sub(1) as i64),
        ),
        ("last_exit".into(), Reply::opt_int(e.last_exit)),
    ];
    if detail {
        m.push(("handler".into(), Reply::str(&watch.handler.name)));
        m.push(("group".into(), Reply::str(&watch.spec.stream.group)));
        m.push(("attempts".into(), Reply::Int(e.attempts.into())));
        let json = |t: &Option<String>| t.as_ref().map_or(Reply::Nil, Reply::str);
        m.push(("progress".into(), json(&e.progress)));
        m.push(("result".into(), json(&e.result)));
        let mut fields = Vec::new();
        for (f, v) in &e.fields {
            fields.push(Reply::str(f));
            fields.push(Reply::str(v));
        }
        m.push(("fields".into(), Reply::Array(fields)));
        m.push(("log".into(), e.log.reply()));
    }
    Reply::Map(m)
}

/// `STREAMWATCH.JOB key id` of an entry a queue of this node holds.
pub(super) fn held_entry(queues: &Queues, db: i32, key: &[u8], sid: Sid) -> Option<Reply> {
    let (qk, q, e) = queues.find(db, key, sid)?;
    Some(entry_map(qk, &q.watch, sid, e, true))
}

/// `STREAMWATCH.JOBS`: the jobs and in-flight entries that pass `f`, in order.
pub(super) fn jobs_reply(hash: &HashJobs, queues: &Queues, f: &JobFilter) -> Reply {
    let (jobs, queues) = (&hash.jobs, &queues.queues);
    let keep = |watch: &Watch, key: &[u8], state: &str| {
        f.watch.as_ref().is_none_or(|p| *p == watch.spec.pattern)
            && f.key.as_ref().is_none_or(|k| k == key)
            && f.state.is_none_or(|s| s == state)
    };
    // (watch pattern, db, key, field or id) orders the list; ids sort numerically.
    type Sort<'a> = (&'a [u8], i32, &'a [u8], Vec<u8>, Option<Sid>);
    let mut list: Vec<(Sort, Reply)> = Vec::new();
    for (k, j) in jobs {
        if keep(&j.watch, &k.key, j.state()) {
            let sort = (
                j.watch.spec.pattern.as_slice(),
                k.db,
                k.key.as_slice(),
                k.field.clone(),
                None,
            );
            list.push((sort, job_map(k, j, false)));
        }
    }
    for (qk, q) in queues {
        for (sid, e) in &q.entries {
            if keep(&q.watch, &qk.key, e.state()) {
                let sort = (
                    q.watch.spec.pattern.as_slice(),
                    qk.db,
                    qk.key.as_slice(),
                    Vec::new(),
                    Some(*sid),
                );
                list.push((sort, entry_map(qk, &q.watch, *sid, e, false)));
            }
        }
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let n = f.count.unwrap_or(usize::MAX);
    Reply::Array(list.into_iter().take(n).map(|(_, r)| r).collect())
}
