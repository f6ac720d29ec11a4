//! The module's end of the helper process (see `helper/main.rs` for why it exists).
//!
//! Runs on module threads only. `Runner::start` launches the embedded helper binary
//! from a memfd with `posix_spawn` (std's `Command` with no pre-exec hook, so the large
//! redis-server heap is never forked), hands it one end of a Unix socket as its stdin,
//! and starts a reader thread that forwards every report to the supervisor's channel.

use crate::ffi;
use crate::protocol::{read_frame, write_frame, Report, Request};
use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The helper binary, compiled by build.rs.
static HELPER_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/streamwatch-helper"));

pub struct Runner {
    socket: UnixStream,
    pid: i32,
    _memfd: File,
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
                        Ok(Some(report)) => on_report(Some(report)),
                        Ok(None) => break,
                        Err(e) => {
                            redis_module::logging::log_warning(format!(
                                "streamwatch: helper connection failed: {e}"
                            ));
                            break;
                        }
                    }
                }
                ffi::reap_nohang(pid);
                on_report(None);
            })?;
        Ok(Runner {
            socket: ours,
            pid,
            _memfd: memfd,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn send(&mut self, req: &Request) -> io::Result<()> {
        write_frame(&mut self.socket, &req.encode())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Closing our end makes the helper stop every run and exit.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        ffi::reap_nohang(self.pid);
    }
}

/// `(process group, start time in clock ticks since boot)` of a live process, from
/// `/proc/PID/stat`; `None` if there is no such process.
pub fn proc_identity(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); pgrp is field 5, starttime field 22.
    Some((f.get(2)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Kills what is left of a run whose helper died (so nothing reports on it any more):
/// its process group, once it is sure the group is still the run's. If the leader
/// (pid == pgid) is alive it must have the recorded start time, otherwise the number
/// was recycled and nothing is killed; if the leader is gone, the group id cannot have
/// been reused by a new group (that needs a new leader with that pid), so the
/// remaining members are the run's own children.
pub fn kill_orphaned_run(pid: i32, start_time: Option<u64>) {
    match proc_identity(pid) {
        Some((_, started)) if Some(started) == start_time => {
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
    dirty: bool,
    last_write: std::time::Instant,
}

const RECORD_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl RunRecord {
    pub fn new(dir: Option<&str>) -> RunRecord {
        RunRecord {
            path: dir.map(|d| std::path::Path::new(d).join("streamwatch.runs")),
            dirty: false,
            last_write: std::time::Instant::now() - RECORD_EVERY,
        }
    }

    /// Kills the runs a previous instance recorded that are still alive (same pid and
    /// same start time, so a recycled pid is never hit). Returns how many.
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
            let mut it = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            if proc_identity(pid).is_some_and(|(_, t)| t == start) {
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
        for (pid, start) in runs {
            text.push_str(&format!("{pid} {start}\n"));
        }
        let tmp = path.with_extension("runs.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            redis_module::logging::log_warning(format!(
                "streamwatch: cannot write {}: {e}",
                path.display()
            ));
        }
    }
}
