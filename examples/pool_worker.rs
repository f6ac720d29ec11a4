//! A pool worker in Rust, std only, that acknowledges every entry at once. It exists as
//! the smallest correct worker: a template to copy, and the fast end of the pool
//! benchmark (`examples/pool_raw_check.rs`, `bench/pool_raw.rs`), where it measures
//! the protocol's cost with no work in it.
//!
//! `cargo build --release --examples`, then a handler that keeps 8 of it running:
//!
//! ```toml
//! [handler.ack]
//! command = ["/path/to/target/release/examples/pool_worker"]
//! pool = 8
//!
//! [[watch]]
//! pattern = "q"
//! handler = "ack"
//! type = "stream"
//! ```
//!
//! Protocol: one JSON line per entry on stdin (`{"key":"q","id":"1-0","db":0,
//! "attempt":1,"fields":{...}}`), one answer line per entry on fd 3
//! (`{"id":"1-0","ok":true}`), stdout and stderr are the log; stdin closed means finish
//! and exit. Only the entry's top-level `"id"` is read, copied back still escaped.
//!
//! fd 3 is opened as `/dev/fd/3` rather than taken over with `File::from_raw_fd(3)`, so
//! that no unsafe code is needed; that works for a pipe (what the module gives a
//! worker) and a file, not for a socket.
//!
//! For the benchmark's latency figure (XADD -> the worker has the entry), with
//! `STAMP_DIR` set the worker records, for each line, the CLOCK_REALTIME time in
//! nanoseconds at which it read the line into `$STAMP_DIR/<id>` (written to
//! `$STAMP_DIR/.<id>` and renamed, so a reader never sees half a number), then answers.
//! An id that is not a plain file name (empty, `.`, `..`, a `/` or a `\`) is answered
//! without a stamp.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    // Append: for a pipe no difference; for a file (`3>>answers` when trying it by
    // hand) a fresh open would start writing at offset 0, over what is there.
    let fd3 = OpenOptions::new()
        .append(true)
        .open("/dev/fd/3")
        .unwrap_or_else(|e| {
            eprintln!(
                "pool_worker: fd 3 is not open ({e}): run this worker from a handler with pool = N"
            );
            exit(2)
        });
    let stamps = std::env::var_os("STAMP_DIR").map(PathBuf::from);
    if let Err(e) = serve(io::stdin().lock(), BufWriter::new(fd3), stamps.as_deref()) {
        eprintln!("pool_worker: {e}");
        exit(1);
    }
}

/// Answers each line of `input` on `replies` (flushed per line) until `input` ends;
/// with `stamps`, first records when each line was read (see the top of the file).
fn serve(
    mut input: impl BufRead,
    mut replies: impl Write,
    stamps: Option<&Path>,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(()); // stdin closed: done
        }
        let read_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(id) = top_level_id(&line) else {
            // Without an id there is nothing to answer: exit and let the module see it.
            let text = String::from_utf8_lossy(&line);
            return Err(io::Error::other(format!(
                "no \"id\" in the entry line {text}"
            )));
        };
        if let Some(dir) = stamps {
            stamp(dir, id, read_at)?;
        }
        replies.write_all(b"{\"id\":\"")?;
        replies.write_all(id)?;
        replies.write_all(b"\",\"ok\":true}\n")?;
        replies.flush()?;
    }
}

/// Writes `ns` to `dir/<id>` by way of `dir/.<id>`, unless `id` is no plain file name.
fn stamp(dir: &Path, id: &[u8], ns: u128) -> io::Result<()> {
    if id.is_empty() || id == b"." || id == b".." || id.iter().any(|&b| b == b'/' || b == b'\\') {
        return Ok(());
    }
    let name = OsStr::from_bytes(id);
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(id);
    let tmp = dir.join(OsStr::from_bytes(&tmp));
    std::fs::write(&tmp, ns.to_string())?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The raw (still escaped) contents of the string value of the top-level key `"id"`
/// of a JSON object, or None. Every string is skipped whole, escapes included, and
/// nesting is counted, so an `"id"` inside `fields` (as a key or a value) is never
/// taken for it. The key must be spelt `"id"` (not with `\u` escapes), as the module
/// writes it.
fn top_level_id(line: &[u8]) -> Option<&[u8]> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'"' => {
                let end = string_end(line, i + 1)?;
                let text = &line[i + 1..end];
                i = end + 1;
                if depth == 1 && text == b"id" {
                    let colon = skip_space(line, i);
                    if line.get(colon) == Some(&b':') {
                        // A key (a value is never followed by ':'): its value must be a string.
                        let open = skip_space(line, colon + 1);
                        if line.get(open) != Some(&b'"') {
                            return None;
                        }
                        let close = string_end(line, open + 1)?;
                        return Some(&line[open + 1..close]);
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote that closes the string whose contents start at `start`.
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2, // the escaped byte (`\"`, `\\`, `\u`...) is skipped
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_space(line: &[u8], mut i: usize) -> usize {
    while line.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}
