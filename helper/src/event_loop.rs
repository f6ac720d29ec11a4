//! The helper's event loop: one epoll set for requests from the control socket, child
//! exits (SIGCHLD, through a self-pipe) and the runs' pipes: output (stdout and
//! stderr), replies (descriptor 3, for runs that ask for it) and input (stdin, written
//! without blocking; kept open for pool workers, fed by `Feed`). It spawns and stops
//! runs as asked, reaps them and reports back; `main` only sets the process up and
//! hands over.
//!
//! The order the module relies on, per run: `Started` first (`settle` before any
//! output or reply, and at the reaping), then `Output` and `Replies`, then `Exited`,
//! before which everything the run wrote to its descriptor 3 is reported
//! (`last_words`).
//!
//! The runs' pipes themselves (stdin pumped, output and replies read within budget,
//! the drain at exit) are handled in `pipes`.

use crate::answers::Answers;
use crate::budget::{Budget, READ_PER_TURN, RUN_BURST, TOTAL_BURST};
use crate::protocol::{Report, Request};
use crate::{cgroup, identity, inbox, log, spawn, sys};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

mod pipes;

use pipes::Input;

struct Run {
    pid: i32,
    output: Option<File>,
    /// The read end of the run's descriptor 3 (`replies`), until its end of file.
    replies: Option<File>,
    /// What the run may still forward now, output and replies together (see `Budget`).
    budget: Budget,
    /// The output and replies pipes are out of the epoll set until then: the run wrote
    /// faster than its budget, so it waits (blocked on a full pipe, as on a slow
    /// terminal).
    paused_until: Option<Instant>,
    /// The run's stdin pipe and what is still to be written to it (stream jobs: the
    /// entry; pool workers: what was fed).
    input: Option<Input>,
    /// A pool worker's entries fed while it works on one, held until it answers.
    answers: Answers,
    /// Bytes left unread in its stdin when the run closed it (see `entry_unread`).
    unread_input: usize,
    /// The `Feed`s taken, for a run with a kept-open stdin (reported at its end).
    fed: Option<u64>,
    stop_signal: i32,
    stop_grace: Duration,
    /// Set when a stop was asked: SIGKILL the group at this time.
    kill_at: Option<Instant>,
    /// The run's own cgroup (`memory-max`, `cpu-max`), removed when it is over.
    cgroup: Option<std::path::PathBuf>,
}

impl Run {
    /// The pipe of this kind the loop reads, while it is open.
    fn pipe(&mut self, kind: Kind) -> Option<&mut File> {
        match kind {
            Kind::Output => self.output.as_mut(),
            Kind::Replies => self.replies.as_mut(),
            Kind::Input => None,
        }
    }
}

/// The pipes of a run in the epoll set, each with a token of its own (`token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// stdout and stderr.
    Output = 0,
    /// stdin (watched for room only while something waits to be written).
    Input = 1,
    /// Descriptor 3.
    Replies = 2,
}

/// epoll tokens: the two fixed descriptors, then per run `id << 2 | kind` (run ids are
/// far below 2^62, where they would meet the fixed ones).
pub const TOKEN_CONTROL: u64 = u64::MAX;
pub const TOKEN_SIGCHLD: u64 = u64::MAX - 1;

fn token(id: u64, kind: Kind) -> u64 {
    id << 2 | kind as u64
}

/// A run's token back into its run and pipe (`None`: not a run's token).
fn untoken(token: u64) -> Option<(u64, Kind)> {
    let kind = match token & 3 {
        0 => Kind::Output,
        1 => Kind::Input,
        2 => Kind::Replies,
        _ => return None,
    };
    Some((token >> 2, kind))
}

pub struct Helper {
    /// One epoll set for everything (a poll set rebuilt per wake-up costs O(runs), which
    /// made starting 10,000 runs take tens of seconds).
    epfd: i32,
    control: File,
    runs: HashMap<u64, Run>,
    by_pid: HashMap<i32, u64>,
    sigchld_rx: File,
    parent: i32,
    /// The module is gone: stop everything and exit when all runs are reaped.
    shutting_down: bool,
    /// Stop deadlines: (SIGKILL time, run).
    kills: std::collections::BTreeSet<(Instant, u64)>,
    /// Runs launched but not yet reported started: their start time (see `settle`).
    starting: HashMap<i32, u64>,
    /// Bytes read from the control socket that do not make a whole request yet.
    inbox: Vec<u8>,
    /// Reports not written yet: one write per turn of the loop, not one per report.
    outbox: Vec<u8>,
    /// Where a run's output is read into.
    scratch: Vec<u8>,
    /// What all runs together may still forward (see `Budget`).
    total_budget: Budget,
    /// Runs whose output and replies pipes are paused, by when they are read again.
    paused: std::collections::BTreeSet<(Instant, u64)>,
    /// When children were last reaped without a SIGCHLD (see `run`).
    reaped: Instant,
    /// When adopted processes were last looked for (`kill_adopted`).
    adopted_checked: Instant,
    /// Cgroups of runs over, still busy when their run ended.
    cgroups_left: cgroup::Leftovers,
}

impl Helper {
    /// The loop's state before its first turn: no runs yet, every budget full. `epfd`
    /// already watches `control` and `sigchld_rx` (`TOKEN_CONTROL`, `TOKEN_SIGCHLD`).
    pub fn new(epfd: i32, control: File, sigchld_rx: File) -> Helper {
        Helper {
            epfd,
            control,
            runs: HashMap::new(),
            by_pid: HashMap::new(),
            sigchld_rx,
            parent: sys::getppid(),
            shutting_down: false,
            adopted_checked: Instant::now(),
            kills: std::collections::BTreeSet::new(),
            starting: HashMap::new(),
            inbox: Vec::new(),
            outbox: Vec::new(),
            scratch: vec![0; READ_PER_TURN],
            total_budget: Budget::full(TOTAL_BURST, Instant::now()),
            paused: std::collections::BTreeSet::new(),
            reaped: Instant::now(),
            cgroups_left: cgroup::Leftovers::default(),
        }
    }

    pub fn run(&mut self) {
        loop {
            self.flush_reports();
            if self.shutting_down && self.runs.is_empty() {
                // A daemon a run started (adopted by us when the run ended) goes too,
                // before we do: after us it would belong to no one.
                self.reap();
                if self.sweep_adopted() == 0 {
                    return;
                }
            }
            let now = Instant::now();
            self.kill_overdue(now);
            self.resume_output(now);
            let timeout = self.poll_timeout(now);
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
            let n = match sys::epoll_wait(self.epfd, &mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        log(&format!("epoll_wait failed: {e}"));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    continue;
                }
            };
            let mut control_ready = false;
            let mut sigchld = n == 0;
            for ev in &events[..n] {
                let token = ev.u64;
                match token {
                    TOKEN_CONTROL => control_ready = true,
                    TOKEN_SIGCHLD => {
                        sigchld = true;
                        let mut buf = [0u8; 256];
                        while matches!(self.sigchld_rx.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    t => match untoken(t) {
                        Some((id, Kind::Input)) => self.pump_input(id),
                        Some((id, kind)) => self.pump(id, kind),
                        None => {}
                    },
                }
            }
            // Reap on SIGCHLD, and at least every 100 ms in case one was lost (waitid
            // walks every child, so not on every wake-up with 10,000 runs).
            if sigchld || self.reaped.elapsed() >= Duration::from_millis(100) {
                self.reaped = Instant::now();
                self.reap();
            }
            self.kill_adopted();
            if control_ready && !self.shutting_down {
                self.read_requests();
            }
            self.settle();
            if !self.shutting_down && sys::getppid() != self.parent {
                log("redis-server is gone; stopping every run");
                self.shutdown();
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> i32 {
        // Wake at least every 500 ms to notice reparenting.
        let mut t = Duration::from_millis(500);
        if let Some((at, _)) = self.kills.first() {
            t = t.min(at.saturating_duration_since(now));
        }
        if let Some((at, _)) = self.paused.first() {
            t = t.min(at.saturating_duration_since(now));
        }
        if spawn::launching() {
            // A launch's end wakes no one: look again soon.
            t = t.min(Duration::from_millis(1));
        }
        timeout_ms(t)
    }

    /// SIGKILL for the groups whose stop grace is over (only runs being stopped are
    /// looked at: with 10,000 runs every wake-up must stay cheap).
    fn kill_overdue(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.kills.first() {
            if at > now {
                break;
            }
            self.kills.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.kill_at == Some(at) {
                    sys::kill(-run.pid, libc::SIGKILL);
                    run.kill_at = None;
                }
            }
        }
    }

    /// Queues a report; `flush_reports` writes the turn's reports at once.
    fn send(&mut self, report: Report) {
        self.outbox.extend_from_slice(&report.encode());
    }

    fn flush_reports(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let result = self.control.write_all(&self.outbox);
        self.outbox.clear();
        if let Err(e) = result {
            if !self.shutting_down {
                log(&format!(
                    "control socket write failed ({e}); stopping every run"
                ));
                self.shutdown();
            }
        }
    }

    /// Reads what the control socket has (it is readable) and handles every whole
    /// request in it; a partial one waits for the rest.
    fn read_requests(&mut self) {
        let n = match self.control.read(&mut self.scratch) {
            Ok(0) => return self.shutdown(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log(&format!(
                    "control socket read failed ({e}); stopping every run"
                ));
                return self.shutdown();
            }
        };
        let mut inbox = std::mem::take(&mut self.inbox);
        inbox.extend_from_slice(&self.scratch[..n]);
        let mut at = 0;
        while !self.shutting_down {
            let (frame, used) = match inbox::next_frame(&inbox[at..]) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(inbox::BadLength(len)) => {
                    log(&format!("bad frame length {len}; stopping every run"));
                    return self.shutdown();
                }
            };
            match Request::decode(frame) {
                Ok(req) => self.handle(req),
                Err(e) => log(&format!("bad request: {e}")),
            }
            at += used;
        }
        inbox.drain(..at);
        self.inbox = inbox;
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Stop { run } => self.stop(run),
            spawn @ Request::Spawn { .. } => self.spawn(spawn),
            Request::Feed { run, data } => self.feed(run, data),
            Request::CloseInput { run } => self.close_input(run),
        }
    }

    fn spawn(&mut self, req: Request) {
        let Request::Spawn {
            run: id,
            argv,
            program,
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
            keep_stdin,
            replies,
            limits,
        } = req
        else {
            return;
        };
        let group = match limits
            .cgroup
            .as_ref()
            .map(|c| cgroup::make(c, id))
            .transpose()
        {
            Ok(group) => group,
            Err(e) => {
                return self.send(Report::SpawnFailed {
                    run: id,
                    error: e.to_string(),
                })
            }
        };
        type Started = (i32, u64, File, Option<File>, Option<Input>);
        let result = (|| -> io::Result<Started> {
            // Every pipe is close-on-exec; the run gets its ends by dup2 only.
            let (reader, writer) = io::pipe()?;
            let replies = replies.then(io::pipe).transpose()?;
            let input = (stdin.is_some() || keep_stdin).then(io::pipe).transpose()?;
            let before = identity::now_ns();
            let fds = spawn::Fds {
                stdin: input.as_ref().map(|(r, _)| r.as_raw_fd()),
                out: writer.as_raw_fd(),
                replies: replies.as_ref().map(|(_, w)| w.as_raw_fd()),
            };
            let pid = spawn::run(
                &argv,
                program.as_deref(),
                &env,
                cwd.as_deref(),
                fds,
                &limits,
                group.as_deref(),
            )?;
            let started = identity::of(pid, before, identity::now_ns());
            drop(writer);
            let nonblocking = |fd: OwnedFd| {
                sys::set_nonblocking(fd.as_raw_fd());
                File::from(fd)
            };
            let out = nonblocking(reader.into());
            let replies = replies.map(|(r, w)| {
                drop(w);
                nonblocking(r.into())
            });
            let input = input.map(|(r, w)| {
                drop(r);
                Input::new(nonblocking(w.into()), stdin.unwrap_or_default(), keep_stdin)
            });
            Ok((pid, started, out, replies, input))
        })();
        match result {
            Ok((pid, start_ticks, out, replies, input)) => {
                sys::watch(
                    self.epfd,
                    out.as_raw_fd(),
                    libc::EPOLLIN,
                    token(id, Kind::Output),
                );
                if let Some(r) = &replies {
                    sys::watch(
                        self.epfd,
                        r.as_raw_fd(),
                        libc::EPOLLIN,
                        token(id, Kind::Replies),
                    );
                }
                self.runs.insert(
                    id,
                    Run {
                        pid,
                        output: Some(out),
                        replies,
                        budget: Budget::full(RUN_BURST, Instant::now()),
                        paused_until: None,
                        input,
                        answers: Answers::default(),
                        unread_input: 0,
                        fed: keep_stdin.then_some(0),
                        stop_signal,
                        stop_grace: Duration::from_millis(stop_grace_ms),
                        kill_at: None,
                        cgroup: group,
                    },
                );
                self.by_pid.insert(pid, id);
                self.starting.insert(pid, start_ticks);
                self.pump_input(id);
            }
            Err(e) => {
                if let Some(dir) = group {
                    self.cgroups_left.remove(dir);
                }
                self.send(Report::SpawnFailed {
                    run: id,
                    error: e.to_string(),
                })
            }
        }
    }

    /// Reports the runs whose launch is over: started (exec'ed), or failed to start
    /// (then the child has exited, and is reaped as no run's).
    fn settle(&mut self) {
        for (pid, error) in spawn::settled() {
            let Some(start_ticks) = self.starting.remove(&pid) else {
                continue;
            };
            let Some(&id) = self.by_pid.get(&pid) else {
                continue;
            };
            match error {
                None => self.send(Report::Started {
                    run: id,
                    pid,
                    start_ticks,
                }),
                Some(e) => {
                    self.by_pid.remove(&pid);
                    if let Some(run) = self.runs.remove(&id) {
                        if let Some(at) = run.kill_at {
                            self.kills.remove(&(at, id));
                        }
                        if let Some(dir) = run.cgroup {
                            self.cgroups_left.remove(dir);
                        }
                    }
                    self.send(Report::SpawnFailed {
                        run: id,
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    fn stop(&mut self, id: u64) {
        if let Some(run) = self.runs.get_mut(&id) {
            // A stopped worker is given no entry it does not have yet.
            run.answers.drop_held();
            if run.kill_at.is_none() {
                let at = Instant::now() + run.stop_grace;
                self.kills.insert((at, id));
                sys::kill(-run.pid, run.stop_signal);
                run.kill_at = Some(at);
            }
        }
    }

    fn shutdown(&mut self) {
        if !self.shutting_down {
            sys::unwatch(self.epfd, self.control.as_raw_fd());
        }
        self.shutting_down = true;
        // A worker waiting for its next line sees the end of its input.
        for run in self.runs.values_mut() {
            if let Some(input) = run.input.take() {
                if input.watched {
                    sys::unwatch(self.epfd, input.pipe.as_raw_fd());
                }
            }
        }
        let ids: Vec<u64> = self.runs.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
    }

    /// A worker that daemonizes (a new session, out of its process group) leaves a
    /// process the helper adopts as subreaper. Any child that is not a run's leader is
    /// such a leftover: it and its group are killed (it is reaped like any child).
    /// Looked for at most every `ADOPTED_EVERY`, from the kernel's list of our children.
    fn kill_adopted(&mut self) {
        const ADOPTED_EVERY: Duration = Duration::from_millis(250);
        if self.adopted_checked.elapsed() < ADOPTED_EVERY {
            return;
        }
        self.adopted_checked = Instant::now();
        self.sweep_adopted();
    }

    /// Kills every child that is not a run's leader (and its group); returns how many
    /// there were (zombies not reaped yet included).
    fn sweep_adopted(&mut self) -> usize {
        let me = std::process::id();
        let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return 0;
        };
        let mut found = 0;
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if !self.by_pid.contains_key(&pid) {
                found += 1;
                // A live process with this pid: no other group can have this id.
                sys::kill(-pid, libc::SIGKILL);
                sys::kill(pid, libc::SIGKILL);
            }
        }
        found
    }

    /// Reaps every exited child. A run's leader is first only peeked at (WNOWAIT) so that
    /// its process group can be killed while the pid still cannot be reused.
    fn reap(&mut self) {
        // A run is reported started before it is reported exited.
        self.settle();
        self.cgroups_left.retry();
        while let Some(pid) = sys::peek_exited_child() {
            if self.starting.contains_key(&pid) {
                // Launched, exec'ed and exited since the settle above (an exited child
                // has left its launch): reported started (or failed) first, while its
                // pid still names its run.
                self.settle();
            }
            if self.by_pid.contains_key(&pid) {
                // The leader is a zombie: -pid still names only its own group.
                sys::kill(-pid, libc::SIGKILL);
            }
            let Some(status) = sys::reap(pid) else {
                break;
            };
            if let Some(id) = self.by_pid.remove(&pid) {
                // Whatever the run wrote before it exited goes out first (its replies
                // all of it).
                self.last_words(id);
                if let Some(count) = self.runs.get(&id).and_then(|r| r.fed) {
                    self.send(Report::Fed { run: id, count });
                }
                if self.entry_unread(id) {
                    self.send(Report::Unread { run: id });
                }
                let run = self.runs.remove(&id);
                if let Some(at) = run.as_ref().and_then(|r| r.kill_at) {
                    // Stopped in time: its SIGKILL deadline goes too (else the helper
                    // wakes for nothing when it comes).
                    self.kills.remove(&(at, id));
                }
                if let Some(dir) = run.and_then(|r| r.cgroup) {
                    self.cgroups_left.remove(dir);
                }
                self.send(Report::Exited { run: id, status });
            }
            // Otherwise it was an orphaned grandchild we adopted as subreaper.
        }
    }
}

/// An epoll timeout in milliseconds for `t`, at most 500: rounded up, as a deadline
/// 0.3 ms away is not a timeout of 0, which made the helper spin on epoll_wait until it
/// passed, taking a core from everyone.
fn timeout_ms(t: Duration) -> i32 {
    t.as_micros().div_ceil(1000).min(500) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_the_run_and_its_pipe() {
        for id in [0, 1, 7, 1 << 40, (1 << 62) - 2] {
            for kind in [Kind::Output, Kind::Input, Kind::Replies] {
                let t = token(id, kind);
                assert_eq!(untoken(t), Some((id, kind)));
                assert!(t != TOKEN_CONTROL && t != TOKEN_SIGCHLD, "{id} {kind:?}");
            }
        }
        assert_ne!(token(1, Kind::Output), token(0, Kind::Replies));
        assert_eq!(untoken(TOKEN_CONTROL), None);
    }

    #[test]
    fn poll_timeouts_round_up_to_the_millisecond() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        // Counted in whole microseconds first.
        assert_eq!(timeout_ms(Duration::from_nanos(999)), 0);
        assert_eq!(timeout_ms(Duration::from_nanos(1000)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(300)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1000)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1001)), 2);
        assert_eq!(timeout_ms(Duration::from_millis(499)), 499);
        assert_eq!(timeout_ms(Duration::from_millis(500)), 500);
        assert_eq!(timeout_ms(Duration::from_secs(3600)), 500);
    }
}
