//! The module's end of the helper process (see `helper/src/main.rs` for why it exists).
//!
//! Runs on module threads only. `Runner::start` launches the embedded helper binary
//! from a memfd with `posix_spawn` (std's `Command` with no pre-exec hook, so the large
//! redis-server heap is never forked), hands it one end of a Unix socket as its stdin,
//! and starts a reader thread that forwards every report to the supervisor's channel.
//!
//! Output reports are the only ones whose volume a worker decides: the reader forwards
//! at most `MAX_QUEUED_OUTPUT` bytes of them not yet taken by the supervisor and drops
//! (and counts) the rest, so a worker's output can never grow the server's memory (the
//! helper already limits how fast each run's output comes, see `helper/src/budget.rs`).
//!
//! When the helper is gone, everything left in its session (the runs it started, their
//! children) is killed (`kill_session`), and the record of live runs on disk names the
//! helper's session too, for a module that loads after a crash of both.

use crate::ffi;
use crate::protocol::{read_frame, Report, Request, MAX_FRAME};
use crate::stats;
use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `/proc/PID/stat`, shared with the helper and the test harness.
#[path = "procstat.rs"]
mod procstat;

/// The helper binary, compiled by build.rs.
static HELPER_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/streamwatch-helper"));

pub struct Runner {
    socket: UnixStream,
    /// Requests not yet taken by the socket (see `send`), from `outbox_start` on.
    outbox: Vec<u8>,
    outbox_start: usize,
    pid: i32,
    /// The helper's start time (`ProcStat::start_time`), to know its pid again.
    start_time: Option<u64>,
    _memfd: File,
}

/// Bytes of output reports forwarded to the supervisor and not yet taken by it.
static QUEUED_OUTPUT: AtomicUsize = AtomicUsize::new(0);
/// Past this many queued bytes, output reports are dropped (and counted).
const MAX_QUEUED_OUTPUT: usize = 4 << 20;
/// Requests waiting for the helper to read them, at most (see `Runner::send`).
const MAX_OUTBOX: usize = 16 << 20;
/// Past this many bytes of requests, `send` writes them at once.
const OUTBOX_BATCH: usize = 64 << 10;

/// The supervisor took an output report of `len` bytes off its channel.
pub fn output_taken(len: usize) {
    QUEUED_OUTPUT.fetch_sub(len, Ordering::Relaxed);
}

/// Whether an output report of `len` bytes may be queued (and counted as queued).
fn queue_output(len: usize) -> bool {
    let queued = QUEUED_OUTPUT.fetch_add(len, Ordering::Relaxed);
    if queued + len <= MAX_QUEUED_OUTPUT {
        return true;
    }
    QUEUED_OUTPUT.fetch_sub(len, Ordering::Relaxed);
    stats::OUTPUT_DROPPED.fetch_add(len as u64, Ordering::Relaxed);
    false
}

impl Runner {
    /// Starts a helper; `on_report(None)` is called once when it is gone.
    pub fn start(on_report: impl Fn(Option<Report>) + Send + 'static) -> io::Result<Runner> {
        let memfd = ffi::helper_memfd(HELPER_BINARY)?;
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(ffi::fd_path(&memfd))
            .arg0("streamwatch-helper")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id() as i32;
        // The helper is reaped by us when it is gone (or by Redis during a fork child).
        drop(child);
        let start_time = proc_stat(pid).map(|s| s.start_time);
        let reader = ours.try_clone()?;
        std::thread::Builder::new()
            .name("streamwatch-reports".into())
            .spawn(move || {
                let mut r = BufReader::with_capacity(256 * 1024, reader);
                loop {
                    match read_frame(&mut r).and_then(|f| match f {
                        Some(frame) => Report::decode(&frame).map(Some),
                        None => Ok(None),
                    }) {
                        Ok(Some(Report::Output { data, .. })) if !queue_output(data.len()) => {}
                        // Replies are the pool's protocol: counted like output (the
                        // supervisor takes them the same way), never dropped; the helper
                        // bounds their rate like output's.
                        Ok(Some(report @ Report::Replies { .. })) => {
                            if let Report::Replies { data, .. } = &report {
                                QUEUED_OUTPUT.fetch_add(data.len(), Ordering::Relaxed);
                            }
                            on_report(Some(report));
                        }
                        Ok(Some(report)) => on_report(Some(report)),
                        Ok(None) => break,
                        Err(e) => {
                            ffi::log_warning(format!("streamwatch: helper connection failed: {e}"));
                            break;
                        }
                    }
                }
                ffi::reap_child(pid);
                on_report(None);
            })?;
        Ok(Runner {
            socket: ours,
            outbox: Vec::new(),
            outbox_start: 0,
            pid,
            start_time,
            _memfd: memfd,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The helper's session: its pid and start time (see `kill_session`).
    pub fn session(&self) -> (i32, Option<u64>) {
        (self.pid, self.start_time)
    }

    /// Sends a request without ever waiting for the helper: it waits in the outbox
    /// until `flush` (or until the outbox holds `OUTBOX_BATCH`), and what the socket
    /// does not take then waits for the next `flush`, so a helper that stops reading
    /// (stopped with SIGSTOP, or starved) never blocks the supervisor. A spawn request
    /// that would take the outbox past `MAX_OUTBOX` (behind others) is refused instead,
    /// and so is a request larger than the helper takes (`MAX_FRAME`).
    pub fn send(&mut self, req: &Request) -> io::Result<()> {
        let frame = req.encode();
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the request is {} bytes; the helper takes at most {MAX_FRAME}",
                    frame.len()
                ),
            ));
        }
        let waiting = self.outbox.len() - self.outbox_start;
        let spawn = matches!(req, Request::Spawn { .. });
        if spawn && waiting > 0 && waiting + frame.len() > MAX_OUTBOX {
            return Err(io::Error::other(
                "the helper process is not taking requests",
            ));
        }
        if waiting == 0 {
            self.outbox.clear();
            self.outbox_start = 0;
        }
        self.outbox.extend_from_slice(&frame);
        // Small requests wait for the end of the supervisor's turn (`flush`), so a turn
        // that feeds or starts many runs costs one write, not one per request.
        if waiting + frame.len() >= OUTBOX_BATCH {
            return self.flush();
        }
        Ok(())
    }

    /// Sends what waits in the outbox, as far as the socket takes it now.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.outbox_start < self.outbox.len() {
            match ffi::send_nonblocking(&self.socket, &self.outbox[self.outbox_start..]) {
                Ok(n) => self.outbox_start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.outbox_start > self.outbox.len() / 2 {
            self.outbox.drain(..self.outbox_start);
            self.outbox_start = 0;
        }
        Ok(())
    }

    /// Whether requests wait in the outbox.
    pub fn has_outbox(&self) -> bool {
        self.outbox_start < self.outbox.len()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Closing our end makes the helper stop every run and exit.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        ffi::reap_nohang(self.pid);
    }
}

/// What `/proc/PID/stat` says of a live process that the module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, ... `Z` for a zombie.
    pub state: char,
    pub pgrp: i32,
    pub session: i32,
    /// Start time in clock ticks since boot: with the pid, what identifies a process.
    pub start_time: u64,
}

/// `None` if there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&procstat::read(pid)?)
}

fn parse_stat(stat: &str) -> Option<ProcStat> {
    let f: Vec<&str> = procstat::fields(stat)?.collect();
    // f starts at field 3 (state); pgrp is field 5, session 6, starttime 22.
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// Kills what is left of a helper that is gone (`sid` is its pid, `start_time` its
/// start time): every process in its session (the runs it started and whatever they
/// started), and every process whose environment names it (`STREAMWATCH_HELPER`, set
/// by the helper for its runs: a daemon a run started in a session of its own), which
/// would otherwise outlive it, reparented to init and unknown to anyone. Returns how
/// many.
///
/// Safe against a recycled pid: while any process is in the session, the kernel does
/// not give its id to a new process; if a process with pid `sid` exists with another
/// start time, the number was recycled, so the session is empty and nothing is killed.
/// The environment mark holds the start time too, so it names no other helper.
pub fn kill_session(sid: i32, start_time: Option<u64>) -> usize {
    if sid <= 1 {
        return 0;
    }
    if let Some(leader) = proc_stat(sid) {
        if start_time.is_some_and(|t| t != leader.start_time) {
            return 0;
        }
    }
    let me = std::process::id() as i32;
    let mark = start_time.map(|t| format!("STREAMWATCH_HELPER={sid}.{t}\0").into_bytes());
    let left_behind = |pid: i32| {
        let Some(s) = proc_stat(pid).filter(|s| s.state != 'Z') else {
            return false;
        };
        s.session == sid
            || mark.as_ref().is_some_and(|m| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.windows(m.len()).any(|w| w == m.as_slice()))
            })
    };
    let mut killed = std::collections::BTreeSet::new();
    // Again while a pass finds someone new: a member may have forked during the pass.
    for _ in 0..5 {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            break;
        };
        let members: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && !killed.contains(&pid) && left_behind(pid))
            .collect();
        if members.is_empty() {
            break;
        }
        for pid in members {
            ffi::kill_hard(pid, false);
            killed.insert(pid);
        }
    }
    killed.len()
}

/// Kills what is left of a run whose helper died (so nothing reports on it any more):
/// its process group, once it is sure the group is still the run's. If the leader
/// (pid == pgid) is alive it must have the recorded start time, otherwise the number
/// was recycled and nothing is killed; if the leader is gone, the group id cannot have
/// been reused by a new group (that needs a new leader with that pid), so the
/// remaining members are the run's own children.
pub fn kill_orphaned_run(pid: i32, start_time: Option<u64>) {
    match proc_stat(pid) {
        Some(s) if Some(s.start_time) == start_time => {
            ffi::kill_hard(pid, true);
            ffi::kill_hard(pid, false);
        }
        Some(_) => {}
        None => ffi::kill_hard(pid, true),
    }
}

/// The live runs written to `<dir>/streamwatch.runs` (pid and start time per line), so
/// that workers left behind when both redis-server and the helper die at once (say a
/// cgroup OOM kill) are killed when the module next loads in the same `--dir`. Owned by
/// the supervisor thread; written at most every `RECORD_EVERY` while runs change.
pub struct RunRecord {
    path: Option<std::path::PathBuf>,
    /// The live helper's session (pid, start time), written as `session PID START`.
    helper: Option<(i32, u64)>,
    dirty: bool,
    last_write: std::time::Instant,
}

const RECORD_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl RunRecord {
    pub fn new(dir: Option<&str>) -> RunRecord {
        RunRecord {
            path: dir.map(|d| std::path::Path::new(d).join("streamwatch.runs")),
            helper: None,
            dirty: false,
            last_write: std::time::Instant::now() - RECORD_EVERY,
        }
    }

    /// Kills the runs a previous instance recorded that are still alive (same pid and
    /// same start time, so a recycled pid is never hit), and what is left in its
    /// helper's session. Returns how many.
    pub fn kill_leftovers(&self) -> usize {
        let Some(text) = self
            .path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return 0;
        };
        let mut killed = 0;
        for line in text.lines() {
            if let Some(session) = line.strip_prefix("session ") {
                let mut it = session.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(sid)), Some(Ok(start))) = (it.next(), it.next()) {
                    if let Ok(sid) = i32::try_from(sid) {
                        killed += kill_session(sid, Some(start));
                    }
                }
                continue;
            }
            let mut it = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            if proc_stat(pid).is_some_and(|s| s.start_time == start && s.state != 'Z') {
                ffi::kill_hard(pid, true);
                ffi::kill_hard(pid, false);
                killed += 1;
            }
        }
        killed
    }

    pub fn mark(&mut self) {
        self.dirty = true;
    }

    /// The helper now running (its session), if any.
    pub fn set_helper(&mut self, helper: Option<(i32, Option<u64>)>) {
        self.helper = helper.and_then(|(pid, start)| Some((pid, start?)));
        self.dirty = true;
    }

    /// How long until a pending write is due (`None`: nothing pending).
    pub fn due_in(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        self.dirty
            .then(|| RECORD_EVERY.saturating_sub(now.saturating_duration_since(self.last_write)))
    }

    /// Writes the record if a write is pending and due.
    pub fn write_if_due(
        &mut self,
        now: std::time::Instant,
        runs: impl Iterator<Item = (i32, u64)>,
    ) {
        if self.due_in(now) != Some(std::time::Duration::ZERO) {
            return;
        }
        self.dirty = false;
        self.last_write = now;
        let Some(path) = &self.path else { return };
        let mut text = String::new();
        if let Some((sid, start)) = self.helper {
            text.push_str(&format!("session {sid} {start}\n"));
        }
        for (pid, start) in runs {
            text.push_str(&format!("{pid} {start}\n"));
        }
        let tmp = path.with_extension("runs.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            ffi::log_warning(format!("streamwatch: cannot write {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_the_command_name() {
        let line = "42 (a) b (c)) S 1 40 39 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    123456 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 40,
                session: 39,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn a_live_process_is_read_from_proc() {
        // Not this process's own session: in a container it may be 0 (its leader is
        // outside the pid namespace). A child in a group of its own is always known.
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let stat = proc_stat(pid).expect("the child's stat");
        let me = proc_stat(std::process::id() as i32).expect("our own stat");
        child.kill().ok();
        child.wait().ok();
        assert_eq!(stat.pgrp, pid);
        assert!(stat.start_time >= me.start_time && me.start_time > 0);
    }
}
