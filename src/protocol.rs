//! The wire protocol between the module and its helper process.
//!
//! Redis reaps any child of its own process while it has a fork child (BGSAVE, AOF
//! rewrite, full sync), so the module never spawns workers itself: a small helper
//! process, spawned once, is the workers' real parent and reports their exact exit
//! statuses. This file is compiled into both sides (the helper includes it with
//! `#[path]`), so the two can never disagree on the format.
//!
//! A frame is `u32 length (LE) | u8 tag | payload`; integers are little-endian, byte
//! strings are `u32 length | bytes`, flags one byte (0 or 1). Only `std` is used here.

use std::io::{self, Read, Write};

/// Largest frame either side accepts: a spawn with a few arguments of Linux's
/// 128 KiB per-argument maximum fits easily.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What the module asks of the helper. (A `Spawn` is much larger than the others;
/// requests are encoded one at a time and never kept in bulk, so no box.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Start a run in its own process group, stdout and stderr captured.
    Spawn {
        run: u64,
        argv: Vec<Vec<u8>>,
        /// The program as the handler wrote it, when `argv[0]` is its resolution
        /// (`./worker.py`, relative to the config file): spawn errors name both.
        program: Option<Vec<u8>>,
        /// Added to the helper's (that is, redis-server's) environment.
        env: Vec<(Vec<u8>, Vec<u8>)>,
        cwd: Option<Vec<u8>>,
        /// Written to the run's standard input, which is then closed (unless
        /// `keep_stdin`); `None`: /dev/null (unless `keep_stdin`: nothing written first).
        stdin: Option<Vec<u8>>,
        /// Used by `Stop` and when the module goes away.
        stop_signal: i32,
        stop_grace_ms: u64,
        /// The run's standard input is a pipe that stays open (a pool worker's): `stdin`
        /// is written first, then whatever `Feed` brings, in order. Closed only by
        /// `CloseInput`, by the run's exit, or when the helper shuts down.
        keep_stdin: bool,
        /// The run gets a pipe as its descriptor 3; what it writes there is reported as
        /// `Report::Replies`, all of it before the run's `Exited`. Without: no fd 3.
        replies: bool,
        /// What the run is limited to, set before its exec (the handler's `nice`,
        /// `oom-score-adj`, `limit-*`, `memory-max`, `cpu-max`).
        limits: Limits,
    },
    /// Send the run's stop signal to its process group, then SIGKILL after the grace.
    Stop { run: u64 },
    /// One entry line for a pool worker (a run with `keep_stdin` and `replies`):
    /// written to its standard input after everything fed before, once the run has
    /// answered every entry fed before it (a line on descriptor 3 that is a JSON object
    /// whose `"ok"` is a boolean), and held by the helper until then. Ignored for an
    /// unknown run or one whose stdin is closed.
    Feed { run: u64, data: Vec<u8> },
    /// Close the run's kept-open standard input once everything fed is written; the
    /// entries `Feed` still holds for the run's answer are dropped.
    CloseInput { run: u64 },
}

/// A resource limit a run may be given (`setrlimit`), soft and hard alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rlimit {
    /// RLIMIT_AS, bytes of address space.
    As = 0,
    /// RLIMIT_NOFILE, open descriptors.
    Nofile = 1,
    /// RLIMIT_CPU, seconds of CPU time.
    Cpu = 2,
    /// RLIMIT_NPROC, processes (threads) of the run's user.
    Nproc = 3,
    /// RLIMIT_CORE, bytes of a core dump.
    Core = 4,
}

impl Rlimit {
    pub const ALL: [Rlimit; 5] = [
        Rlimit::As,
        Rlimit::Nofile,
        Rlimit::Cpu,
        Rlimit::Nproc,
        Rlimit::Core,
    ];

    /// The handler option that sets it.
    pub fn option(self) -> &'static str {
        match self {
            Rlimit::As => "limit-as",
            Rlimit::Nofile => "limit-nofile",
            Rlimit::Cpu => "limit-cpu",
            Rlimit::Nproc => "limit-nproc",
            Rlimit::Core => "limit-core",
        }
    }

    fn from_code(code: u8) -> Option<Rlimit> {
        Rlimit::ALL.get(code as usize).copied()
    }
}

/// A limit's value meaning none (the kernel's RLIM_INFINITY).
pub const UNLIMITED: u64 = u64::MAX;

/// What a run is limited to; each is set in the run before its exec, and a run whose
/// limit cannot be set does not start (its spawn error names the option).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Its nice value (-20 to 19); `None`: the helper's (the server's).
    pub nice: Option<i32>,
    /// Its `/proc/PID/oom_score_adj` (-1000 to 1000); `None`: the helper's.
    pub oom_score_adj: Option<i32>,
    /// Resource limits, each set as soft and hard limit (`UNLIMITED`: none).
    pub rlimits: Vec<(Rlimit, u64)>,
    /// A cgroup v2 of the run's own, made for it and removed after it.
    pub cgroup: Option<Cgroup>,
}

/// A run's own cgroup: made in `parent` (a directory of the cgroup v2 filesystem),
/// with these limits written before the run is moved into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub parent: Vec<u8>,
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `cpu.max`: microseconds of CPU time per period, and the period.
    pub cpu_max: Option<(u64, u64)>,
}

/// What the helper reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Started {
        run: u64,
        pid: i32,
        /// The process's start time as `/proc/PID/stat` gives it (clock ticks since
        /// boot): with the pid, what identifies the process later (see `runner`).
        start_ticks: u64,
    },
    SpawnFailed {
        run: u64,
        error: String,
    },
    /// Output bytes from the run's stdout or stderr (merged).
    Output {
        run: u64,
        data: Vec<u8>,
    },
    /// Bytes the run wrote to its descriptor 3 (see `replies`), raw: chunks of a stream
    /// that the module splits into lines. All of them come after the run's `Started`
    /// and before its `Exited`.
    Replies {
        run: u64,
        data: Vec<u8>,
    },
    /// The entry last fed to the run (a pool worker, see `Feed`) and not answered was
    /// still whole in its stdin when the run exited: it never read it. Comes just
    /// before the run's `Exited`.
    Unread {
        run: u64,
    },
    /// How many `Feed`s the helper took for the run (one with `keep_stdin`) in all: a
    /// `Feed` that came after the run's end, or after its stdin closed, was not taken.
    /// Comes just before the run's `Unread` and `Exited`.
    Fed {
        run: u64,
        count: u64,
    },
    /// The run's leader was reaped; `status` is the raw wait status.
    Exited {
        run: u64,
        status: i32,
    },
}

const T_SPAWN: u8 = 1;
const T_STOP: u8 = 2;
const T_FEED: u8 = 3;
const T_CLOSE_INPUT: u8 = 4;
const T_STARTED: u8 = 11;
const T_SPAWN_FAILED: u8 = 12;
const T_OUTPUT: u8 = 13;
const T_EXITED: u8 = 14;
const T_REPLIES: u8 = 15;
const T_UNREAD: u8 = 16;
const T_FED: u8 = 17;

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Enc {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0, 0, 0, 0, tag]);
        Enc(v)
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn i32(&mut self, x: i32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn bool(&mut self, x: bool) {
        self.0.push(x as u8);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    /// A flag, then the value if there is one.
    fn opt<T>(&mut self, x: &Option<T>, put: impl FnOnce(&mut Self, &T)) {
        self.bool(x.is_some());
        if let Some(x) = x {
            put(self, x);
        }
    }
    fn limits(&mut self, l: &Limits) {
        self.opt(&l.nice, |e, n| e.i32(*n));
        self.opt(&l.oom_score_adj, |e, n| e.i32(*n));
        self.i32(l.rlimits.len() as i32);
        for (r, v) in &l.rlimits {
            self.0.push(*r as u8);
            self.u64(*v);
        }
        self.opt(&l.cgroup, |e, c| {
            e.bytes(&c.parent);
            e.opt(&c.memory_max, |e, m| e.u64(*m));
            e.opt(&c.cpu_max, |e, (quota, period)| {
                e.u64(*quota);
                e.u64(*period);
            });
        });
    }
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct Dec<'a>(&'a [u8]);

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated frame")
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(short());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn i32(&mut self) -> io::Result<i32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(i32::from_le_bytes(b))
    }
    /// One byte, 0 or 1 (anything else is not a frame either side wrote).
    fn bool(&mut self) -> io::Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad flag {b}"),
            )),
        }
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.i32()? as u32 as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn opt(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(if self.i32()? == 1 {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    /// A flag, then the value if there is one (see `Enc::opt`).
    fn maybe<T>(&mut self, get: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<Option<T>> {
        Ok(if self.bool()? { Some(get(self)?) } else { None })
    }
    fn limits(&mut self) -> io::Result<Limits> {
        let nice = self.maybe(Dec::i32)?;
        let oom_score_adj = self.maybe(Dec::i32)?;
        let n = self.i32()? as u32 as usize;
        if n > Rlimit::ALL.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{n} resource limits"),
            ));
        }
        let mut rlimits = Vec::with_capacity(n);
        for _ in 0..n {
            let code = self.take(1)?[0];
            let r = Rlimit::from_code(code).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad rlimit {code}"))
            })?;
            rlimits.push((r, self.u64()?));
        }
        let cgroup = self.maybe(|d| {
            Ok(Cgroup {
                parent: d.bytes()?,
                memory_max: d.maybe(Dec::u64)?,
                cpu_max: d.maybe(|d| Ok((d.u64()?, d.u64()?)))?,
            })
        })?;
        Ok(Limits {
            nice,
            oom_score_adj,
            rlimits,
            cgroup,
        })
    }
    fn list(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let n = self.i32()? as u32 as usize;
        if n > self.0.len() {
            return Err(short());
        }
        (0..n).map(|_| self.bytes()).collect()
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Spawn {
                run,
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
            } => {
                let mut e = Enc::new(T_SPAWN);
                e.u64(*run);
                e.i32(*stop_signal);
                e.u64(*stop_grace_ms);
                e.i32(argv.len() as i32);
                argv.iter().for_each(|a| e.bytes(a));
                e.i32(env.len() as i32);
                for (k, v) in env {
                    e.bytes(k);
                    e.bytes(v);
                }
                for opt in [cwd, stdin, program] {
                    match opt {
                        Some(c) => {
                            e.i32(1);
                            e.bytes(c);
                        }
                        None => e.i32(0),
                    }
                }
                e.limits(limits);
                e.bool(*keep_stdin);
                e.bool(*replies);
                e.finish()
            }
            Request::Stop { run } => {
                let mut e = Enc::new(T_STOP);
                e.u64(*run);
                e.finish()
            }
            Request::Feed { run, data } => {
                let mut e = Enc::new(T_FEED);
                e.u64(*run);
                e.bytes(data);
                e.finish()
            }
            Request::CloseInput { run } => {
                let mut e = Enc::new(T_CLOSE_INPUT);
                e.u64(*run);
                e.finish()
            }
        }
    }

    pub fn decode(frame: &[u8]) -> io::Result<Request> {
        let (&tag, rest) = frame.split_first().ok_or_else(short)?;
        let mut d = Dec(rest);
        match tag {
            T_SPAWN => {
                let run = d.u64()?;
                let stop_signal = d.i32()?;
                let stop_grace_ms = d.u64()?;
                let argv = d.list()?;
                let n = d.i32()? as u32 as usize;
                if n > d.0.len() {
                    return Err(short());
                }
                let mut env = Vec::with_capacity(n);
                for _ in 0..n {
                    env.push((d.bytes()?, d.bytes()?));
                }
                let cwd = d.opt()?;
                let stdin = d.opt()?;
                let program = d.opt()?;
                let limits = d.limits()?;
                let keep_stdin = d.bool()?;
                let replies = d.bool()?;
                Ok(Request::Spawn {
                    run,
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
                })
            }
            T_STOP => Ok(Request::Stop { run: d.u64()? }),
            T_FEED => Ok(Request::Feed {
                run: d.u64()?,
                data: d.bytes()?,
            }),
            T_CLOSE_INPUT => Ok(Request::CloseInput { run: d.u64()? }),
            t => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request tag {t}"),
            )),
        }
    }
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Report::Started {
                run,
                pid,
                start_ticks,
            } => {
                let mut e = Enc::new(T_STARTED);
                e.u64(*run);
                e.i32(*pid);
                e.u64(*start_ticks);
                e.finish()
            }
            Report::SpawnFailed { run, error } => {
                let mut e = Enc::new(T_SPAWN_FAILED);
                e.u64(*run);
                e.bytes(error.as_bytes());
                e.finish()
            }
            Report::Output { run, data } => {
                let mut e = Enc::new(T_OUTPUT);
                e.u64(*run);
                e.bytes(data);
                e.finish()
            }
            Report::Replies { run, data } => {
                let mut e = Enc::new(T_REPLIES);
                e.u64(*run);
                e.bytes(data);
                e.finish()
            }
            Report::Unread { run } => {
                let mut e = Enc::new(T_UNREAD);
                e.u64(*run);
                e.finish()
            }
            Report::Fed { run, count } => {
                let mut e = Enc::new(T_FED);
                e.u64(*run);
                e.u64(*count);
                e.finish()
            }
            Report::Exited { run, status } => {
                let mut e = Enc::new(T_EXITED);
                e.u64(*run);
                e.i32(*status);
                e.finish()
            }
        }
    }

    pub fn decode(frame: &[u8]) -> io::Result<Report> {
        let (&tag, rest) = frame.split_first().ok_or_else(short)?;
        let mut d = Dec(rest);
        match tag {
            T_STARTED => Ok(Report::Started {
                run: d.u64()?,
                pid: d.i32()?,
                start_ticks: d.u64()?,
            }),
            T_SPAWN_FAILED => Ok(Report::SpawnFailed {
                run: d.u64()?,
                error: String::from_utf8_lossy(&d.bytes()?).into_owned(),
            }),
            T_OUTPUT => Ok(Report::Output {
                run: d.u64()?,
                data: d.bytes()?,
            }),
            T_REPLIES => Ok(Report::Replies {
                run: d.u64()?,
                data: d.bytes()?,
            }),
            T_UNREAD => Ok(Report::Unread { run: d.u64()? }),
            T_FED => Ok(Report::Fed {
                run: d.u64()?,
                count: d.u64()?,
            }),
            T_EXITED => Ok(Report::Exited {
                run: d.u64()?,
                status: d.i32()?,
            }),
            t => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown report tag {t}"),
            )),
        }
    }
}

/// Reads one frame (without its length prefix); `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Writes an encoded frame whole.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}

// A path relative to this file's directory, so that the helper (which includes this
// file with `#[path]`) finds the same tests.
#[cfg(test)]
#[path = "protocol/tests.rs"]
mod tests;
