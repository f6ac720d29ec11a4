//! Runs, for both kinds of job (a hash job's run, a stream entry's run): the one way a
//! run starts (`Runs::start`: its spawn request, a pure function tested by a table
//! here), is stopped (`Runs::stop`) and ends (`run_end`: what its end means, the same
//! for both kinds); which job or entry each run id belongs to; and the helper process
//! that spawns them (started, restarted after a delay that grows with its failures in
//! a row, and what it leaves behind killed when it is gone).
//!
//! A run that cannot be spawned (or sent to the helper) ends without a report: it is
//! queued in `unreported` and ended by the loop like a run the helper reported.

use super::heartbeat::{hung_error, Heartbeats};
use super::jobs::JobKey;
use super::stream::{QueueKey, Sid};
use super::Msg;
use crate::address;
use crate::config::Handler;
use crate::ffi;
use crate::protocol::Request;
use crate::runner::{self, Runner};
use crate::stats;
use crate::template::{substitute, unfilled, unspawnable};
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A helper that lived this long was not failing: its death starts the count again.
const HELPER_STABLE: Duration = Duration::from_secs(30);

/// How long to wait before starting a helper after `failures` in a row: at once after
/// the first, then 100 ms more per failure, at most 5 s.
fn helper_delay(failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        Duration::from_millis(100 * u64::from(failures)).min(Duration::from_secs(5))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One run of a job or entry, held by it while the process lives.
pub(super) struct Run {
    pub id: u64,
    pub pid: Option<i32>,
    /// The worker's start time (`/proc`), to recognise it after the helper is gone.
    pub start_time: Option<u64>,
    pub started: Instant,
    pub started_ms: i64,
    pub stopping: bool,
    /// Stopped for writing nothing this long (`heartbeat-ms`): its end is a failure.
    pub hung: Option<Duration>,
}

impl Run {
    pub(super) fn new(id: u64) -> Run {
        Run {
            id,
            pid: None,
            start_time: None,
            started: Instant::now(),
            started_ms: now_ms(),
            stopping: false,
            hung: None,
        }
    }

    /// An entry's run on pool worker `worker` (its id and process), from now.
    pub(super) fn of_worker(worker: &Run) -> Run {
        Run {
            pid: worker.pid,
            start_time: worker.start_time,
            ..Run::new(worker.id)
        }
    }

    /// The helper reported the process: its pid and start time.
    pub(super) fn spawned(&mut self, pid: i32, start_time: Option<u64>) {
        self.pid = Some(pid);
        self.start_time = start_time;
    }

    /// The state of a job or entry with this run.
    pub(super) fn state(&self) -> &'static str {
        match (self.stopping, self.pid) {
            (true, _) => "stopping",
            (false, None) => "starting",
            (false, Some(_)) => "running",
        }
    }
}

/// Whose run a run id is: a hash job's, or a stream entry's.
#[derive(Clone)]
pub(super) enum RunOf {
    Job(JobKey),
    Entry(QueueKey, Sid),
    /// A worker of the pool of the named handler.
    Worker(String),
}

/// Why a run ended.
pub(super) enum End {
    Status(i32),
    SpawnError(String),
}

/// What a run's end means, for both kinds of job.
pub(super) struct RunEnd {
    /// The exit number (the code, or minus the signal); `None` if it never ran.
    pub exit: Option<i64>,
    /// Why the run counts as failed; `None` if it succeeded (exited 0).
    pub error: Option<String>,
    /// The lifecycle event it is (`exited` or `spawn-error`) and its own fields (`pid`
    /// and `code` or `signal`).
    pub event: &'static str,
    pub fields: Vec<(&'static str, Vec<u8>)>,
    pub ran_for: Duration,
    /// The supervisor was stopping it.
    pub stopping: bool,
}

/// Exit status as one number: the exit code, or minus the signal (like Python).
pub(super) fn exit_number(status: i32) -> i64 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as i64
    } else if libc::WIFSIGNALED(status) {
        -(libc::WTERMSIG(status) as i64)
    } else {
        -1
    }
}

/// A run's `pid`, and `code` or `signal` when it exited (none if it never ran).
pub(super) fn exit_fields(pid: i32, end: &End) -> Vec<(&'static str, Vec<u8>)> {
    let End::Status(status) = end else {
        return Vec::new();
    };
    let n = exit_number(*status);
    vec![
        ("pid", pid.to_string().into_bytes()),
        match n >= 0 {
            true => ("code", n.to_string().into_bytes()),
            false => ("signal", (-n).to_string().into_bytes()),
        },
    ]
}

/// The one end-of-run path: `timed_out` is the handler's `timeout-ms` when the run was
/// stopped for reaching it (its end is then a failure whatever its exit, as is the end
/// of a run stopped as hung).
pub(super) fn run_end(run: &Run, end: End, timed_out: Option<Duration>) -> RunEnd {
    let fields = exit_fields(run.pid.unwrap_or(0), &end);
    let (exit, error, event) = match end {
        End::Status(status) => {
            stats::bump(&stats::EXITS);
            let n = exit_number(status);
            let error = match timed_out {
                Some(t) => Some(format!("timed out after {} ms", t.as_millis())),
                None if run.hung.is_some() => run.hung.map(hung_error),
                None if n == 0 => None,
                None if n > 0 => Some(format!("exit code {n}")),
                None => Some(format!("killed by signal {}", -n)),
            };
            (Some(n), error, "exited")
        }
        End::SpawnError(e) => (None, Some(e), "spawn-error"),
    };
    RunEnd {
        exit,
        error,
        event,
        fields,
        ran_for: run.started.elapsed(),
        stopping: run.stopping,
    }
}

/// The runs in flight and the helper that spawns them.
pub(super) struct Runs {
    owners: HashMap<u64, RunOf>,
    next: u64,
    /// Runs that ended without a report (see the top of this file).
    unreported: Vec<(u64, End)>,
    helper: Option<Runner>,
    tx: Sender<Msg>,
    /// Helpers in a row that died (or could not start) soon after they started.
    helper_failures: u32,
    /// When the current helper started.
    helper_started: Instant,
    /// Live runs on disk, for the next load if the helper dies with the server.
    pub record: runner::RunRecord,
    /// When each run with a `heartbeat-ms` was last heard from.
    pub heartbeats: Heartbeats,
}

impl Runs {
    pub(super) fn new(tx: Sender<Msg>) -> Runs {
        Runs {
            owners: HashMap::new(),
            next: 1,
            unreported: Vec::new(),
            helper: None,
            tx,
            helper_failures: 0,
            helper_started: Instant::now(),
            record: runner::RunRecord::new(None),
            heartbeats: Heartbeats::default(),
        }
    }

    /// Starts a run of `h` for `owner` (see `spawn_request` for the rest).
    pub(super) fn start(
        &mut self,
        owner: RunOf,
        h: &Handler,
        vars: &[(&str, &[u8])],
        extra_env: Vec<(Vec<u8>, Vec<u8>)>,
        stdin: Option<Vec<u8>>,
    ) -> Run {
        self.start_with(owner, h, vars, extra_env, stdin, (false, false))
    }

    /// Starts a stream entry's own run: `stdin` is the entry, and its fd 3 a pipe for
    /// its result and progress (`Replies`).
    pub(super) fn start_entry(
        &mut self,
        owner: RunOf,
        h: &Handler,
        vars: &[(&str, &[u8])],
        extra_env: Vec<(Vec<u8>, Vec<u8>)>,
        stdin: Vec<u8>,
    ) -> Run {
        self.start_with(owner, h, vars, extra_env, Some(stdin), (false, true))
    }

    fn start_with(
        &mut self,
        owner: RunOf,
        h: &Handler,
        vars: &[(&str, &[u8])],
        extra_env: Vec<(Vec<u8>, Vec<u8>)>,
        stdin: Option<Vec<u8>>,
        (keeps_stdin, says): (bool, bool),
    ) -> Run {
        let id = self.next;
        self.next += 1;
        // How to reach this server: in the run's database (a pool worker serves any).
        let db = match &owner {
            RunOf::Job(jk) => Some(jk.db),
            RunOf::Entry(qk, _) => Some(qk.db),
            RunOf::Worker(_) => None,
        };
        let mut extra_env = extra_env;
        if let Some(url) = address::url(db) {
            extra_env.push((b"STREAMWATCH_REDIS_URL".to_vec(), url.into_bytes()));
        }
        self.owners.insert(id, owner);
        self.heartbeats.expect(id, h.heartbeat);
        stats::bump(&stats::RUNS_STARTED);
        match spawn_request(h, id, vars, extra_env, stdin) {
            Ok(mut req) => {
                if let Request::Spawn {
                    keep_stdin,
                    replies,
                    ..
                } = &mut req
                {
                    *keep_stdin = keeps_stdin;
                    *replies = says;
                }
                if let Err(why) = self.send(&req) {
                    self.unreported.push((id, End::SpawnError(why)));
                }
            }
            Err(problem) => self.unreported.push((id, End::SpawnError(problem))),
        }
        Run::new(id)
    }

    /// Starts a pool worker of `h`: its stdin kept open for `feed`, its fd 3 a pipe
    /// whose bytes come back as `Replies`.
    pub(super) fn start_worker(
        &mut self,
        owner: RunOf,
        h: &Handler,
        extra_env: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Run {
        self.start_with(owner, h, &[], extra_env, None, (true, true))
    }

    /// Writes `line` to pool worker `id`'s stdin.
    pub(super) fn feed(&mut self, id: u64, line: Vec<u8>) {
        let _ = self.send(&Request::Feed {
            run: id,
            data: line,
        });
    }

    /// Closes pool worker `id`'s stdin: it finishes and exits.
    pub(super) fn close_input(&mut self, id: u64) {
        let _ = self.send(&Request::CloseInput { run: id });
    }

    /// Asks the helper to stop `run` (once).
    pub(super) fn stop(&mut self, run: &mut Run) {
        if !run.stopping {
            run.stopping = true;
            let _ = self.send(&Request::Stop { run: run.id });
        }
    }

    /// Sends a request to the helper; why it could not be.
    fn send(&mut self, req: &Request) -> Result<(), String> {
        match self.helper.as_mut() {
            None => Err("the helper process is not running".into()),
            Some(r) => r.send(req).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => e.to_string(),
                _ => format!("the helper process is not taking requests ({e})"),
            }),
        }
    }

    /// Sends the requests that wait for the helper; whether some still wait.
    pub(super) fn flush_outbox(&mut self) -> bool {
        self.helper
            .as_mut()
            .is_some_and(|r| r.flush().is_ok() && r.has_outbox())
    }

    /// Whose run `id` is.
    pub(super) fn owner(&self, id: u64) -> Option<&RunOf> {
        self.owners.get(&id)
    }

    /// Run `id` has ended: whose it was (once).
    pub(super) fn ended(&mut self, id: u64) -> Option<RunOf> {
        let owner = self.owners.remove(&id)?;
        self.heartbeats.forget(id);
        self.record.mark();
        Some(owner)
    }

    /// The runs that ended without a report, to be ended now.
    pub(super) fn take_unreported(&mut self) -> Vec<(u64, End)> {
        std::mem::take(&mut self.unreported)
    }

    /// Every run in flight.
    pub(super) fn ids(&self) -> Vec<u64> {
        self.owners.keys().copied().collect()
    }

    pub(super) fn helper_running(&self) -> bool {
        self.helper.is_some()
    }

    /// Starts a helper; false if it could not start.
    pub(super) fn start_helper(&mut self) -> bool {
        let tx = self.tx.clone();
        self.helper_started = Instant::now();
        match Runner::start(move |r| {
            let _ = tx.send(match r {
                Some(report) => Msg::Report(report),
                None => Msg::HelperGone,
            });
        }) {
            Ok(r) => {
                ffi::log_notice(format!(
                    "streamwatch: helper process started, pid {}",
                    r.pid()
                ));
                self.record.set_helper(Some(r.session()));
                self.helper = Some(r);
                true
            }
            Err(e) => {
                ffi::log_warning(format!("streamwatch: cannot start the helper process: {e}"));
                self.record.set_helper(None);
                self.helper = None;
                false
            }
        }
    }

    /// A helper died, or could not start: when to try again, after a delay that grows
    /// with the failures in a row (never by sleeping: commands are still answered
    /// meanwhile). A helper that ran for `HELPER_STABLE` clears the count.
    pub(super) fn helper_failed(&mut self) -> Instant {
        if self.helper_started.elapsed() >= HELPER_STABLE {
            self.helper_failures = 0;
        }
        self.helper_failures += 1;
        Instant::now() + helper_delay(self.helper_failures)
    }

    /// The helper is gone. Its workers were not stopped by it: they are killed before
    /// new ones start, or every job would run twice. The runs it reported are known by
    /// pid (`reported`: pid and start time); those it started and had not reported yet,
    /// and the runs' own children, are found in its session.
    pub(super) fn helper_gone(&mut self, reported: impl Iterator<Item = (i32, Option<u64>)>) {
        let helper = self.helper.take().map(|r| r.session());
        for (pid, start_time) in reported {
            runner::kill_orphaned_run(pid, start_time);
        }
        if let Some((sid, start)) = helper {
            runner::kill_session(sid, start);
        }
        self.record.set_helper(None);
    }
}

/// The request that starts run `run` of `h`. `vars` are the placeholders and their
/// values (the first that matches wins); `extra_env` (the `STREAMWATCH_*` variables)
/// comes after the handler's own environment, which wins where both name a variable
/// (a handler may set its own `STREAMWATCH_REDIS_URL`, say, with a password in it).
/// `Err` is why execve could not take it, or the placeholder it has no value for
/// (the `{field:NAME}` of a field the stream entry does not have).
fn spawn_request(
    h: &Handler,
    run: u64,
    vars: &[(&str, &[u8])],
    extra_env: Vec<(Vec<u8>, Vec<u8>)>,
    stdin: Option<Vec<u8>>,
) -> Result<Request, String> {
    let templates = h.command.iter().chain(h.env.iter().map(|(_, v)| v));
    if let Some(problem) = unfilled(templates.map(String::as_str), vars) {
        return Err(problem);
    }
    let argv: Vec<Vec<u8>> = h.command.iter().map(|a| substitute(a, vars)).collect();
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = h
        .env
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), substitute(v, vars)))
        .collect();
    let ours = extra_env
        .into_iter()
        .filter(|(k, _)| !h.env.iter().any(|(hk, _)| hk.as_bytes() == k.as_slice()));
    env.extend(ours.collect::<Vec<_>>());
    if let Some(problem) = unspawnable(&argv, &env) {
        return Err(problem);
    }
    Ok(Request::Spawn {
        run,
        argv,
        program: h.program_as_written.as_ref().map(|p| p.as_bytes().to_vec()),
        env,
        cwd: h.cwd.as_ref().map(|c| c.as_bytes().to_vec()),
        stdin,
        stop_signal: h.stop_signal,
        stop_grace_ms: h.stop_grace.as_millis() as u64,
        keep_stdin: false,
        replies: false,
        limits: h.limits.wire(),
    })
}

#[cfg(test)]
mod tests;
