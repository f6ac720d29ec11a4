//! streamwatch-helper: the real parent of every worker the module runs.
//!
//! Why a separate process: while Redis has a fork child of its own (BGSAVE, AOF rewrite,
//! full sync) it calls `waitpid(-1)` and reaps *any* child of redis-server, so a module
//! that spawned workers itself would lose their exit statuses. The module spawns this
//! helper once (posix_spawn, no fork of the big server), and the helper spawns, stops,
//! reaps and reports every run over the control socket on its stdin (see
//! `src/protocol.rs`). Nothing else reaps the helper's children, so statuses are exact.
//!
//! When the module goes away (the socket closes: SHUTDOWN, a crash, `kill -9` of
//! redis-server) or the helper is reparented, it stops every run (stop signal, then
//! SIGKILL after the grace) and exits, so no worker outlives the server. When the
//! helper itself is killed, every run it started dies with it (`PR_SET_PDEATHSIG`), and
//! the module kills what is left in the helper's session (the runs' own children).
//!
//! A run's output is forwarded at a bounded rate (see `Budget`): a worker that writes
//! faster waits on its pipe, so no amount of output is ever buffered on either side.
//!
//! The module embeds this binary (build.rs builds this crate with the workspace's
//! `helper` profile). It uses `std` and the `libc` crate.
//!
//! Here: the startup and the event loop. Elsewhere: `spawn` (starting a run),
//! `identity` (a run's start time), `budget` (the output rate), `inbox` (splitting the
//! control stream into requests), `sys` (the libc calls std does not wrap), and the
//! protocol itself, shared with the module.

mod budget;
mod identity;
mod inbox;
#[path = "../../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;
mod spawn;
mod sys;

use budget::{Budget, OUTPUT_PAUSE, READ_PER_TURN, RUN_BURST, RUN_RATE, TOTAL_BURST, TOTAL_RATE};
use protocol::{Report, Request};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Write end of the self-pipe the SIGCHLD handler pokes.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_sig: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        sys::poke(fd);
    }
}

fn log(msg: &str) {
    let _ = writeln!(
        io::stderr(),
        "streamwatch-helper[{}]: {msg}",
        std::process::id()
    );
}

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
const TOKEN_CONTROL: u64 = u64::MAX;
const TOKEN_SIGCHLD: u64 = u64::MAX - 1;

struct Helper {
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

fn main() {
    // The control socket is our stdin; stdout/stderr are redis-server's.
    // SAFETY: descriptor 0 is the socket the module gave us, owned by nothing else.
    let control = unsafe { File::from_raw_fd(0) };
    // fd 0 becomes /dev/null for anything that would read it; the socket moves away.
    let control = match control.try_clone() {
        Ok(c) => {
            drop(control);
            if let Ok(null) = File::open("/dev/null") {
                // open() returns the lowest free fd, 0.
                std::mem::forget(null);
            }
            c
        }
        Err(e) => {
            log(&format!("cannot take the control socket: {e}"));
            std::process::exit(2);
        }
    };
    sys::set_cloexec(control.as_raw_fd());
    close_inherited_fds(&[0, 1, 2, control.as_raw_fd()]);
    spawn::reserve();
    reset_signals();
    detach_from_terminal();
    mark_runs();
    sys::raise_fd_limit();
    sys::become_subreaper();
    // Executed from a memfd its name would be the fd number; `ps`/`top` show this.
    sys::set_name(c"streamwatch-hlp");

    let Ok((sigchld_rx, sigchld_tx)) = sys::pipe_nonblocking() else {
        log("cannot create the SIGCHLD pipe");
        std::process::exit(2);
    };
    SIGCHLD_PIPE.store(sigchld_tx, Ordering::Relaxed);
    sys::signal(libc::SIGCHLD, on_sigchld as *const () as libc::sighandler_t);

    let Ok(epfd) = sys::epoll_create() else {
        log("cannot create the epoll set");
        std::process::exit(2);
    };
    sys::watch(epfd, control.as_raw_fd(), libc::EPOLLIN, TOKEN_CONTROL);
    sys::watch(epfd, sigchld_rx, libc::EPOLLIN, TOKEN_SIGCHLD);
    let mut helper = Helper {
        epfd,
        control,
        runs: HashMap::new(),
        by_pid: HashMap::new(),
        // SAFETY: the pipe's read end was just created and is owned by nothing else.
        sigchld_rx: unsafe { File::from_raw_fd(sigchld_rx) },
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
    };
    helper.run();
}

/// Redis does not mark all its descriptors close-on-exec; none of them may reach a worker.
fn close_inherited_fds(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            sys::close(fd);
        }
    }
}

/// Ignored signals stay ignored across exec; workers must start with defaults.
fn reset_signals() {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGPIPE {
            sys::signal(sig, libc::SIG_DFL);
        }
    }
}

/// The helper follows its control socket, not signals meant for the server: Ctrl-C in
/// the terminal of `make run` (SIGINT to the terminal's process group) or a service
/// manager's stop (SIGTERM to every process of the unit) would otherwise end the helper
/// and its runs while redis-server is still shutting down, and the module would start
/// a new helper. In a session of its own, no terminal signal reaches it or its runs;
/// the signals a service manager sends everyone are ignored (runs get the defaults
/// back, see `spawn`). The session also names every run for the module: after the
/// helper dies, whatever is left in its session is a leftover of its runs.
fn detach_from_terminal() {
    sys::setsid();
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
        sys::signal(sig, libc::SIG_IGN);
    }
}

/// Every run inherits `STREAMWATCH_HELPER=<pid>.<start time>` naming this helper, and
/// so, usually, does whatever a run starts: a daemon that left the helper's session
/// (`setsid`) is still found by it when the helper is killed (see the module's
/// `runner::kill_session`). Set before any thread or run exists.
fn mark_runs() {
    let me = std::process::id() as i32;
    let start = identity::from_proc(me).unwrap_or(0);
    std::env::set_var("STREAMWATCH_HELPER", format!("{me}.{start}"));
}

impl Helper {
    fn run(&mut self) {
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
