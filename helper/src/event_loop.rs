//! The helper's event loop: one epoll set for requests from the control socket, child
//! exits (SIGCHLD, through a self-pipe) and the runs' output and input pipes. It spawns
//! and stops runs as asked, reaps them and reports back; `main` only sets the process
//! up and hands over.

use crate::budget::{
    Budget, OUTPUT_PAUSE, READ_PER_TURN, RUN_BURST, RUN_RATE, TOTAL_BURST, TOTAL_RATE,
};
use crate::protocol::{Report, Request};
use crate::{identity, inbox, log, spawn, sys};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

struct Run {
    pid: i32,
    output: Option<File>,
    /// What the run may still forward now (see `Budget`).
    budget: Budget,
    /// The output pipe is out of the epoll set until then: the run wrote faster than
    /// its budget, so it waits (blocked on a full pipe, as on a slow terminal).
    paused_until: Option<Instant>,
    /// What is still to be written to the run's stdin (stream jobs: the entry).
    input: Option<Input>,
    stop_signal: i32,
    stop_grace: Duration,
    /// Set when a stop was asked: SIGKILL the group at this time.
    kill_at: Option<Instant>,
}

struct Input {
    pipe: File,
    data: Vec<u8>,
    written: usize,
}

impl Input {
    /// Writes what the pipe takes now; true when done (all written, or the run
    /// closed its end: a handler need not read its input).
    fn pump(&mut self) -> bool {
        while self.written < self.data.len() {
            match self.pipe.write(&self.data[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        true
    }
}

/// epoll tokens: the two fixed descriptors, then per run `id << 1` (output) and
/// `id << 1 | 1` (input).
pub const TOKEN_CONTROL: u64 = u64::MAX;
pub const TOKEN_SIGCHLD: u64 = u64::MAX - 1;

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
    /// Runs whose output pipe is paused, by when it is read again.
    paused: std::collections::BTreeSet<(Instant, u64)>,
    /// When children were last reaped without a SIGCHLD (see `run`).
    reaped: Instant,
    /// When adopted processes were last looked for (`kill_adopted`).
    adopted_checked: Instant,
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
                    t if t & 1 == 0 => self.pump_output(t >> 1, false),
                    t => {
                        if let Some(run) = self.runs.get_mut(&(t >> 1)) {
                            if run.input.as_mut().is_some_and(Input::pump) {
                                run.input = None;
                            }
                        }
                    }
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
        }
    }

    fn spawn(&mut self, req: Request) {
        let Request::Spawn {
            run: id,
            argv,
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
        } = req
        else {
            return;
        };
        let result = (|| -> io::Result<(i32, u64, File, Option<Input>)> {
            let (reader, writer) = io::pipe()?;
            // Both pipes are close-on-exec; the run gets its ends by dup2 only.
            let input = stdin
                .map(|data| io::pipe().map(|p| (p, data)))
                .transpose()?;
            let before = identity::now_ns();
            let pid = spawn::run(
                &argv,
                &env,
                cwd.as_deref(),
                input.as_ref().map(|((r, _), _)| r.as_raw_fd()),
                writer.as_raw_fd(),
            )?;
            let started = identity::of(pid, before, identity::now_ns());
            drop(writer);
            let out = File::from(OwnedFd::from(reader));
            sys::set_nonblocking(out.as_raw_fd());
            let input = input.and_then(|((r, w), data)| {
                drop(r);
                let pipe = File::from(OwnedFd::from(w));
                sys::set_nonblocking(pipe.as_raw_fd());
                let mut input = Input {
                    pipe,
                    data,
                    written: 0,
                };
                (!input.pump()).then_some(input)
            });
            Ok((pid, started, out, input))
        })();
        match result {
            Ok((pid, start_ticks, out, input)) => {
                sys::watch(self.epfd, out.as_raw_fd(), libc::EPOLLIN, id << 1);
                if let Some(input) = &input {
                    sys::watch(
                        self.epfd,
                        input.pipe.as_raw_fd(),
                        libc::EPOLLOUT,
                        id << 1 | 1,
                    );
                }
                self.runs.insert(
                    id,
                    Run {
                        pid,
                        output: Some(out),
                        budget: Budget::full(RUN_BURST, Instant::now()),
                        paused_until: None,
                        input,
                        stop_signal,
                        stop_grace: Duration::from_millis(stop_grace_ms),
                        kill_at: None,
                    },
                );
                self.by_pid.insert(pid, id);
                self.starting.insert(pid, start_ticks);
            }
            Err(e) => self.send(Report::SpawnFailed {
                run: id,
                error: e.to_string(),
            }),
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
        let ids: Vec<u64> = self.runs.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
    }

    /// Forwards what the run has written, within its budget and everyone's; a run over
    /// budget is paused (its pipe taken out of the epoll set, so the worker waits on
    /// it). Closes the pipe at end of file. `last`: the run has exited; what its pipe
    /// still holds (its last words, at most one read) is forwarded whatever the budget.
    fn pump_output(&mut self, id: u64, last: bool) {
        let now = Instant::now();
        let total = self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let Some(out) = run.output.as_mut() else {
            return;
        };
        let own = run.budget.refill(now, RUN_RATE, RUN_BURST);
        let allowed = if last {
            READ_PER_TURN
        } else {
            own.min(total).min(READ_PER_TURN)
        };
        let mut eof = false;
        let mut data = None;
        if allowed > 0 {
            loop {
                match out.read(&mut self.scratch[..allowed]) {
                    Ok(0) => eof = true,
                    Ok(n) => data = Some(self.scratch[..n].to_vec()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => eof = true,
                }
                break;
            }
        }
        let n = data.as_ref().map_or(0, Vec::len);
        run.budget.spend(n);
        self.total_budget.spend(n);
        if eof {
            if let Some(out) = run.output.take() {
                if run.paused_until.take().is_none() {
                    sys::unwatch(self.epfd, out.as_raw_fd());
                }
            }
        } else if !last && n >= allowed && allowed < READ_PER_TURN && run.paused_until.is_none() {
            // Used up what it may send now: pause it (a full read within budget is
            // simply read again on the next wake-up, after the other runs).
            let at = now + OUTPUT_PAUSE;
            run.paused_until = Some(at);
            sys::unwatch(self.epfd, out.as_raw_fd());
            self.paused.insert((at, id));
        }
        if let Some(data) = data {
            // A run is reported started before its first output: a run that wrote
            // has exec'ed, so its launch is over even if not collected yet.
            if self
                .runs
                .get(&id)
                .is_some_and(|r| self.starting.contains_key(&r.pid))
            {
                self.settle();
            }
            self.send(Report::Output { run: id, data });
        }
    }

    /// Puts paused output pipes whose pause is over back into the epoll set.
    fn resume_output(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.paused.first() {
            if at > now {
                break;
            }
            self.paused.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.paused_until == Some(at) {
                    run.paused_until = None;
                    if let Some(out) = &run.output {
                        sys::watch(self.epfd, out.as_raw_fd(), libc::EPOLLIN, id << 1);
                    }
                }
            }
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
        while let Some(pid) = sys::peek_exited_child() {
            if self.by_pid.contains_key(&pid) {
                // The leader is a zombie: -pid still names only its own group.
                sys::kill(-pid, libc::SIGKILL);
            }
            let Some(status) = sys::reap(pid) else {
                break;
            };
            if let Some(id) = self.by_pid.remove(&pid) {
                // Whatever the run wrote before it exited goes out first.
                self.pump_output(id, true);
                if let Some(at) = self.runs.remove(&id).and_then(|r| r.kill_at) {
                    // Stopped in time: its SIGKILL deadline goes too (else the helper
                    // wakes for nothing when it comes).
                    self.kills.remove(&(at, id));
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
