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

/// What the module asks of the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Start a run in its own process group, stdout and stderr captured.
    Spawn {
        run: u64,
        argv: Vec<Vec<u8>>,
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
                env,
                cwd,
                stdin,
                stop_signal,
                stop_grace_ms,
                keep_stdin,
                replies,
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
                for opt in [cwd, stdin] {
                    match opt {
                        Some(c) => {
                            e.i32(1);
                            e.bytes(c);
                        }
                        None => e.i32(0),
                    }
                }
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
                let keep_stdin = d.bool()?;
                let replies = d.bool()?;
                Ok(Request::Spawn {
                    run,
                    argv,
                    env,
                    cwd,
                    stdin,
                    stop_signal,
                    stop_grace_ms,
                    keep_stdin,
                    replies,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(frame: Vec<u8>) -> Vec<u8> {
        frame[4..].to_vec()
    }

    fn spawn(keep_stdin: bool, replies: bool) -> Request {
        Request::Spawn {
            run: 7,
            argv: vec![b"/bin/sh".to_vec(), vec![0xff, b';', b'\n']],
            env: vec![(b"A".to_vec(), b"1".to_vec())],
            cwd: Some(b"/tmp".to_vec()),
            stdin: Some(b"{\"a\":\"1\"}".to_vec()),
            stop_signal: 15,
            stop_grace_ms: 5000,
            keep_stdin,
            replies,
        }
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            spawn(false, false),
            spawn(true, false),
            spawn(false, true),
            spawn(true, true),
            Request::Stop { run: 9 },
            Request::Feed {
                run: 10,
                data: b"line\n".to_vec(),
            },
            Request::Feed {
                run: u64::MAX,
                data: Vec::new(),
            },
            Request::CloseInput { run: 11 },
        ] {
            assert_eq!(Request::decode(&strip(r.encode())).unwrap(), r);
        }
    }

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Started {
                run: 1,
                pid: 42,
                start_ticks: 123_456,
            },
            Report::SpawnFailed {
                run: 2,
                error: "No such file".into(),
            },
            Report::Output {
                run: 3,
                data: b"hi\n".to_vec(),
            },
            Report::Replies {
                run: 5,
                data: b"{\"ok\":1}\n{\"ok\"".to_vec(),
            },
            Report::Unread { run: 6 },
            Report::Fed { run: 7, count: 3 },
            Report::Exited {
                run: 4,
                status: 7 << 8,
            },
        ] {
            assert_eq!(Report::decode(&strip(r.encode())).unwrap(), r);
        }
    }

    #[test]
    fn the_pool_flags_are_the_last_two_bytes_of_a_spawn() {
        let plain = strip(spawn(false, false).encode());
        let both = strip(spawn(true, true).encode());
        assert_eq!(plain.len(), both.len());
        assert_eq!(plain[plain.len() - 2..], [0, 0]);
        assert_eq!(both[both.len() - 2..], [1, 1]);
        assert_eq!(
            strip(spawn(true, false).encode())[plain.len() - 2..],
            [1, 0]
        );
        // A flag that is neither 0 nor 1 is not a frame either side wrote.
        let mut bad = both.clone();
        *bad.last_mut().unwrap() = 2;
        assert!(Request::decode(&bad).is_err());
    }

    #[test]
    fn tags_are_distinct() {
        let tags = [
            T_SPAWN,
            T_STOP,
            T_FEED,
            T_CLOSE_INPUT,
            T_STARTED,
            T_SPAWN_FAILED,
            T_OUTPUT,
            T_EXITED,
            T_REPLIES,
            T_UNREAD,
            T_FED,
        ];
        for (i, a) in tags.iter().enumerate() {
            assert!(!tags[i + 1..].contains(a), "tag {a} twice");
        }
        // Requests and reports never decode as each other.
        let feed = strip(
            Request::Feed {
                run: 1,
                data: b"x".to_vec(),
            }
            .encode(),
        );
        assert!(Report::decode(&feed).is_err());
        let replies = strip(
            Report::Replies {
                run: 1,
                data: b"x".to_vec(),
            }
            .encode(),
        );
        assert!(Request::decode(&replies).is_err());
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let frames = [
            strip(
                Request::Spawn {
                    run: 1,
                    argv: vec![b"x".to_vec()],
                    env: vec![],
                    cwd: None,
                    stdin: None,
                    stop_signal: 15,
                    stop_grace_ms: 1,
                    keep_stdin: true,
                    replies: true,
                }
                .encode(),
            ),
            strip(
                Request::Feed {
                    run: 1,
                    data: b"abc".to_vec(),
                }
                .encode(),
            ),
            strip(Request::CloseInput { run: 1 }.encode()),
        ];
        for frame in frames {
            for n in 0..frame.len() {
                assert!(Request::decode(&frame[..n]).is_err());
            }
        }
        let frame = strip(
            Report::Replies {
                run: 1,
                data: b"abc".to_vec(),
            }
            .encode(),
        );
        for n in 0..frame.len() {
            assert!(Report::decode(&frame[..n]).is_err());
        }
    }
}
