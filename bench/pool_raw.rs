//! The pool benchmark's raw limit: what N pool workers can do with nobody in between.
//! This process starts the workers itself and plays the module's part of the protocol
//! (an entry line on a worker's stdin, its answer line back on the worker's fd 3, one
//! entry in flight per worker), with no Redis, stream or module involved. The module's
//! pool throughput is measured against this figure. Included by the benchmark and by
//! `examples/pool_raw_check.rs` as a module (`#[path = "../bench/pool_raw.rs"]`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Starts `workers` processes of `command` (stdin a pipe, fd 3 a pipe, stdout and
/// stderr inherited), feeds them `entries` entry lines of the module's shape
/// (`{"key":"q","id":"<n>-0","db":0,"attempt":1,"fields":{"n":"<n>"}}`, n from 1), a
/// worker getting its next line only once its answer to the last came, and returns
/// entries per second: wall time from the first timed write to the last answer. Each
/// worker first answers one warm-up entry (`0-<w>`, not timed), so that start-up (a
/// Python interpreter's, say) is not counted. Then closes the stdins and waits for the
/// workers. Panics if a worker fails to start, answers other than `"ok":true` for the
/// entry, or exits before answering or with an error.
pub fn raw_pool_rate(command: &[&str], workers: usize, entries: usize) -> f64 {
    assert!(!command.is_empty() && workers > 0 && entries > 0);
    let mut children = Vec::new();
    let mut lanes = Vec::new();
    for _ in 0..workers {
        // Both ends close-on-exec; the child gets the write end as fd 3 by dup2 only.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let fd = writer.as_raw_fd();
        let mut cmd = Command::new(command[0]);
        cmd.args(&command[1..]).stdin(Stdio::piped());
        // SAFETY: between fork and exec the closure calls only dup2 and fcntl, which
        // are async-signal-safe, and touches no memory but its copied `fd`.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) // already 3: just let it past exec
                } else {
                    libc::dup2(fd, 3) // the copy is not close-on-exec
                };
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        drop(writer); // the child's copy only: its exit is EOF here
        lanes.push((child.stdin.take().unwrap(), BufReader::new(reader)));
        children.push(child);
    }

    let next = Arc::new(AtomicUsize::new(1));
    let start = Arc::new(Barrier::new(workers + 1));
    let threads: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(w, (mut stdin, mut replies))| {
            let (next, start) = (next.clone(), start.clone());
            std::thread::spawn(move || -> Result<Option<Instant>, String> {
                let mut line = String::new();
                let warm = exchange(&mut stdin, &mut replies, 0, w + 1, &mut line);
                start.wait(); // even after a failed warm-up, or the others would wait for ever
                warm?;
                let mut last = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n > entries {
                        break;
                    }
                    exchange(&mut stdin, &mut replies, n, 0, &mut line)?;
                    last = Some(Instant::now());
                }
                drop(stdin); // EOF: the worker finishes and exits
                Ok(last)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let end = threads
        .into_iter()
        .map(|t| t.join().expect("a worker's thread panicked"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
        .into_iter()
        .flatten()
        .max()
        .expect("no entry answered");
    for mut child in children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "{command:?} exited with {status}");
    }
    entries as f64 / end.duration_since(t0).as_secs_f64()
}

/// Writes entry `n-seq` to a worker and reads its answer, skipping progress lines.
fn exchange(
    stdin: &mut ChildStdin,
    replies: &mut impl BufRead,
    n: usize,
    seq: usize,
    line: &mut String,
) -> Result<(), String> {
    let mut entry =
        format!(r#"{{"key":"q","id":"{n}-{seq}","db":0,"attempt":1,"fields":{{"n":"{n}"}}}}"#);
    entry.push('\n');
    stdin
        .write_all(entry.as_bytes())
        .map_err(|e| format!("writing entry {n}-{seq}: {e}"))?;
    let id = format!(r#""id":"{n}-{seq}""#);
    loop {
        line.clear();
        match replies.read_line(line) {
            Err(e) => return Err(format!("reading the answer to {n}-{seq}: {e}")),
            Ok(0) => return Err(format!("a worker exited without answering {n}-{seq}")),
            Ok(_) if line.contains(r#""progress""#) => continue,
            Ok(_) if line.contains(&id) && line.contains(r#""ok":true"#) => return Ok(()),
            Ok(_) => return Err(format!("answer to {n}-{seq}: {}", line.trim_end())),
        }
    }
}
