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
    stop_signal: i32,
    stop_grace: Duration,
    /// Set when a stop was asked: SIGKILL the group at this time.
    kill_at: Option<Instant>,
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

/// A run's standard input: a pipe written without blocking, what it does not take
/// now kept here until it does (a worker that does not read blocks no one).
struct Input {
    pipe: File,
    /// Bytes still to write: those from `written` on.
    data: Vec<u8>,
    written: usize,
    /// The pipe stays open once all is written (`keep_stdin`): until `CloseInput`,
    /// the run's exit, or the helper's shutdown.
    keep_open: bool,
    /// In the epoll set (EPOLLOUT): only while something waits to be written, as a
    /// pipe with room is always writable.
    watched: bool,
}

/// Where an `Input` stands after writing what its pipe takes.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// Something is left and the pipe is full: write again when it has room.
    Waiting,
    /// All written; the pipe stays open for more.
    Idle,
    /// Over: all written and not kept open, or the run closed its end (a handler
    /// need not read its input). The pipe is to be closed.
    Done,
}

impl Input {
    fn new(pipe: File, data: Vec<u8>, keep_open: bool) -> Input {
        Input {
            pipe,
            data,
            written: 0,
            keep_open,
            watched: false,
        }
    }

    /// Appends `data` after what is still to be written.
    fn feed(&mut self, data: Vec<u8>) {
        if self.written == self.data.len() {
            self.data = data;
            self.written = 0;
            return;
        }
        // What is written goes before the buffer grows, at most once per half of it.
        if self.written >= self.data.len() / 2 {
            self.data.drain(..self.written);
            self.written = 0;
        }
        self.data.extend_from_slice(&data);
    }

    /// Writes what the pipe takes now.
    fn pump(&mut self) -> Pumped {
        while self.written < self.data.len() {
            match self.pipe.write(&self.data[self.written..]) {
                Ok(0) => return Pumped::Done,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::Waiting,
                Err(_) => return Pumped::Done,
            }
        }
        self.data = Vec::new();
        self.written = 0;
        if self.keep_open {
            Pumped::Idle
        } else {
            Pumped::Done
        }
    }
}

/// What one read of a non-blocking pipe gave.
enum Got {
    Data(usize),
    /// Nothing there now.
    Nothing,
    /// End of file (or an error, which ends the pipe too).
    End,
}

/// One read into `buf`, which must not be empty (a read of 0 bytes says end of file).
fn read_some(pipe: &mut File, buf: &mut [u8]) -> Got {
    debug_assert!(!buf.is_empty());
    loop {
        return match pipe.read(buf) {
            Ok(0) => Got::End,
            Ok(n) => Got::Data(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
            Err(_) => Got::End,
        };
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

/// Without `FIONREAD`'s answer, the most a run's replies pipe is drained of at its
/// exit: what a pipe holds at most unless root raised `fs.pipe-max-size`.
const DRAIN_WITHOUT_COUNT: usize = 1 << 20;

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
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
            keep_stdin,
            replies,
        } = req
        else {
            return;
        };
        type Started = (i32, u64, File, Option<File>, Option<Input>);
        let result = (|| -> io::Result<Started> {
            // Every pipe is close-on-exec; the run gets its ends by dup2 only.
            let (reader, writer) = io::pipe()?;
            let replies = replies.then(io::pipe).transpose()?;
            let input = (stdin.is_some() || keep_stdin).then(io::pipe).transpose()?;
            let before = identity::now_ns();
            let pid = spawn::run(
                &argv,
                &env,
                cwd.as_deref(),
                input.as_ref().map(|(r, _)| r.as_raw_fd()),
                writer.as_raw_fd(),
                replies.as_ref().map(|(_, w)| w.as_raw_fd()),
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
                        stop_signal,
                        stop_grace: Duration::from_millis(stop_grace_ms),
                        kill_at: None,
                    },
                );
                self.by_pid.insert(pid, id);
                self.starting.insert(pid, start_ticks);
                self.pump_input(id);
            }
            Err(e) => self.send(Report::SpawnFailed {
                run: id,
                error: e.to_string(),
            }),
        }
    }

    /// Writes what the run's stdin pipe takes now; watches it for room while
    /// something is left, closes it when it is over.
    fn pump_input(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let Some(input) = run.input.as_mut() else {
            return;
        };
        let fd = input.pipe.as_raw_fd();
        match input.pump() {
            Pumped::Waiting => {
                if !input.watched {
                    sys::watch(self.epfd, fd, libc::EPOLLOUT, token(id, Kind::Input));
                    input.watched = true;
                }
            }
            Pumped::Idle => {
                if input.watched {
                    sys::unwatch(self.epfd, fd);
                    input.watched = false;
                }
            }
            Pumped::Done => {
                if input.watched {
                    sys::unwatch(self.epfd, fd);
                }
                run.input = None;
            }
        }
    }

    /// `Feed`: appended to the run's kept-open stdin (ignored for an unknown run,
    /// or one whose stdin is closed or closing).
    fn feed(&mut self, id: u64, data: Vec<u8>) {
        let Some(input) = self.runs.get_mut(&id).and_then(|r| r.input.as_mut()) else {
            return;
        };
        if !input.keep_open {
            return;
        }
        let full = input.watched;
        input.feed(data);
        if !full {
            self.pump_input(id);
        }
    }

    /// `CloseInput`: the run's stdin is closed once what was fed is written.
    fn close_input(&mut self, id: u64) {
        if let Some(input) = self.runs.get_mut(&id).and_then(|r| r.input.as_mut()) {
            input.keep_open = false;
            self.pump_input(id);
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

    /// Forwards what the run has written to its output or replies pipe, within its
    /// budget and everyone's; a run over budget is paused (both pipes taken out of the
    /// epoll set, so the worker waits on them). Closes the pipe at end of file.
    fn pump(&mut self, id: u64, kind: Kind) {
        let now = Instant::now();
        let total = self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let own = run.budget.refill(now, RUN_RATE, RUN_BURST);
        let Some(pipe) = run.pipe(kind) else {
            return;
        };
        let allowed = own.min(total).min(READ_PER_TURN);
        let got = if allowed > 0 {
            read_some(pipe, &mut self.scratch[..allowed])
        } else {
            Got::Nothing
        };
        let n = if let Got::Data(n) = got { n } else { 0 };
        run.budget.spend(n);
        self.total_budget.spend(n);
        if let Got::End = got {
            self.close_pipe(id, kind);
        } else if n >= allowed && allowed < READ_PER_TURN {
            // Used up what it may send now: pause it (a full read within budget is
            // simply read again on the next wake-up, after the other runs).
            self.pause(id, now + OUTPUT_PAUSE);
        }
        if n > 0 {
            let data = self.scratch[..n].to_vec();
            self.forward(id, kind, data);
        }
    }

    /// At the run's exit, what its pipes still hold, whatever the budget: its output's
    /// last words (at most one read), and all it wrote to its descriptor 3.
    fn last_words(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let mut chunks = Vec::new();
        if let Some(out) = run.output.as_mut() {
            if let Got::Data(n) = read_some(out, &mut self.scratch) {
                chunks.push((Kind::Output, self.scratch[..n].to_vec()));
            }
        }
        if let Some(replies) = run.replies.as_mut() {
            // What the pipe holds now (the leader is reaped: all it wrote is in),
            // and no more: a process it left behind may still hold fd 3 and write.
            let mut left = sys::readable_bytes(replies.as_raw_fd()).unwrap_or(DRAIN_WITHOUT_COUNT);
            while left > 0 {
                let Got::Data(n) = read_some(replies, &mut self.scratch[..left.min(READ_PER_TURN)])
                else {
                    break;
                };
                chunks.push((Kind::Replies, self.scratch[..n].to_vec()));
                left -= n;
            }
        }
        let now = Instant::now();
        self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        run.budget.refill(now, RUN_RATE, RUN_BURST);
        for (kind, data) in chunks {
            if let Some(run) = self.runs.get_mut(&id) {
                run.budget.spend(data.len());
            }
            self.total_budget.spend(data.len());
            self.forward(id, kind, data);
        }
    }

    /// Reports what the run wrote. A run is reported started before its first output
    /// or reply: a run that wrote has exec'ed, so its launch is over even if not
    /// collected yet.
    fn forward(&mut self, id: u64, kind: Kind, data: Vec<u8>) {
        if self
            .runs
            .get(&id)
            .is_some_and(|r| self.starting.contains_key(&r.pid))
        {
            self.settle();
        }
        self.send(match kind {
            Kind::Replies => Report::Replies { run: id, data },
            _ => Report::Output { run: id, data },
        });
    }

    /// Closes the run's output or replies pipe (at its end of file).
    fn close_pipe(&mut self, id: u64, kind: Kind) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let pipe = match kind {
            Kind::Output => run.output.take(),
            Kind::Replies => run.replies.take(),
            Kind::Input => None,
        };
        if let Some(pipe) = pipe {
            // A paused run's pipes are out of the set already.
            if run.paused_until.is_none() {
                sys::unwatch(self.epfd, pipe.as_raw_fd());
            }
        }
    }

    /// Takes the run's output and replies pipes out of the epoll set until `at`.
    fn pause(&mut self, id: u64, at: Instant) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        if run.paused_until.is_some() {
            return;
        }
        run.paused_until = Some(at);
        for pipe in [&run.output, &run.replies].into_iter().flatten() {
            sys::unwatch(self.epfd, pipe.as_raw_fd());
        }
        self.paused.insert((at, id));
    }

    /// Puts paused pipes whose pause is over back into the epoll set.
    fn resume_output(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.paused.first() {
            if at > now {
                break;
            }
            self.paused.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.paused_until == Some(at) {
                    run.paused_until = None;
                    for (pipe, kind) in [(&run.output, Kind::Output), (&run.replies, Kind::Replies)]
                    {
                        if let Some(pipe) = pipe {
                            sys::watch(self.epfd, pipe.as_raw_fd(), libc::EPOLLIN, token(id, kind));
                        }
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
    use std::os::fd::FromRawFd;

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

    /// An `Input` on a fresh non-blocking pipe, and the pipe's read end.
    fn input(data: &[u8], keep_open: bool) -> (Input, File) {
        let (r, w) = sys::pipe_nonblocking().unwrap();
        // SAFETY: both ends were just created and are owned by nothing else.
        let (r, w) = unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) };
        (Input::new(w, data.to_vec(), keep_open), r)
    }

    fn read_all(r: &mut File) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn a_one_shot_input_is_done_once_written() {
        let (mut i, mut r) = input(b"entry", false);
        assert_eq!(i.pump(), Pumped::Done);
        assert_eq!(read_all(&mut r), b"entry");
        let (mut i, _r) = input(b"", false);
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn a_kept_open_input_takes_feeds_in_order_and_waits_when_full() {
        let (mut i, mut r) = input(b"first\n", true);
        assert_eq!(i.pump(), Pumped::Idle);
        // More than the pipe holds (64 KiB by default): the rest waits here.
        let big: Vec<u8> = (0..300_000u32).map(|n| n as u8).collect();
        i.feed(b"second\n".to_vec());
        i.feed(big.clone());
        assert_eq!(i.pump(), Pumped::Waiting);
        i.feed(b"last\n".to_vec());
        assert_eq!(i.pump(), Pumped::Waiting);
        let mut got = Vec::new();
        loop {
            got.extend(read_all(&mut r));
            match i.pump() {
                Pumped::Waiting => continue,
                p => {
                    assert_eq!(p, Pumped::Idle);
                    break;
                }
            }
        }
        got.extend(read_all(&mut r));
        let want = [&b"first\nsecond\n"[..], &big, b"last\n"].concat();
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        // Idle, nothing kept; closing it now is done at once.
        assert!(i.data.is_empty() && i.written == 0);
        i.keep_open = false;
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn feeding_compacts_what_was_written() {
        let (mut i, _r) = input(b"", true);
        i.data = b"abcdef".to_vec();
        i.written = 4;
        i.feed(b"gh".to_vec());
        assert_eq!((&i.data[i.written..], i.written), (&b"efgh"[..], 0));
        i.written = 1;
        i.feed(b"ij".to_vec());
        assert_eq!(&i.data[i.written..], b"fghij");
        i.written = i.data.len();
        i.feed(b"k".to_vec());
        assert_eq!((&i.data[..], i.written), (&b"k"[..], 0));
    }

    #[test]
    fn an_input_whose_reader_is_gone_is_done() {
        let (mut i, r) = input(b"", true);
        drop(r);
        assert_eq!(i.pump(), Pumped::Idle);
        i.feed(b"line\n".to_vec());
        // EPIPE (the helper ignores SIGPIPE, as the test harness does).
        assert_eq!(i.pump(), Pumped::Done);
    }

    #[test]
    fn reads_tell_data_nothing_and_end() {
        let (r, w) = sys::pipe_nonblocking().unwrap();
        // SAFETY: both ends were just created and are owned by nothing else.
        let (mut r, mut w) = unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) };
        let mut buf = [0u8; 8];
        assert!(matches!(read_some(&mut r, &mut buf), Got::Nothing));
        w.write_all(b"abc").unwrap();
        assert!(matches!(read_some(&mut r, &mut buf), Got::Data(3)));
        drop(w);
        assert!(matches!(read_some(&mut r, &mut buf), Got::End));
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
