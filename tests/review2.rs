//! Second adversarial review of the outcomes / WAIT changes (94a3a22..15cfae0).
//! Each test shows a break (it fails on 15cfae0) unless it says it measures.

mod common;

use common::*;
use redis::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// As tests/outcome_faults.rs: handler `job` waits for `$D/go` if the entry has `wait`,
/// logs the id it ran in `$D/ran`.
fn config(dir: &Path) -> String {
    let script = r#"
read -r entry
case "$entry" in *'"wait"'*) while [ ! -e "$D/go" ]; do sleep 0.02; done ;; esac
echo "$1" >> "$D/ran"
exit 0"#;
    format!(
        "[handler.job]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"]\nenv = {{ D = \"{}\" }}\n\n[[watch]]\npattern = \"q\"\nhandler = \"job\"\ntype = \"stream\"\nconcurrency = 2\n",
        dir.display()
    )
}

fn state_of(c: &mut redis::Connection, id: &str) -> String {
    match run(c, &["STREAMWATCH.JOB", "q", id]).expect("JOB") {
        Value::Nil => "nil".into(),
        v => get_str(&to_map(&v), "state"),
    }
}

/// Two entries run (and wait for `go`), four are read ahead: the last is unread.
fn fill(c: &mut redis::Connection) -> String {
    let a = xadd(c, "q", &[("wait", "1")]);
    let b = xadd(c, "q", &[("wait", "1")]);
    wait_until("two running", WAIT, || {
        state_of(c, &a) == "running" && state_of(c, &b) == "running"
    });
    for _ in 0..4 {
        xadd(c, "q", &[("wait", "1")]);
    }
    xadd(c, "q", &[("x", "1")])
}

/// With `outcomes-max 0` (keep no outcomes), CANCEL of an unread entry answers 1 but
/// the note in `q:cancels` is never written (`keep_all` returns before the SADD when
/// outcomes are not `usable`), so after PAUSE + RESUME the cancelled entry runs.
#[test]
fn a_cancel_outlives_the_queue_also_when_no_outcomes_are_kept() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    ok(&mut c, &["CONFIG", "SET", "streamwatch.outcomes-max", "0"]);
    let last = fill(&mut c);
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])),
        Some(1)
    );
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    wait_until("runs stopped", WAIT, || jobs(&mut c).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    let ran = lines(&dir.path().join("ran"));
    assert!(!ran.contains(&last), "the cancelled entry ran: {ran:?}");
}

/// `q:outcomes` deleted by a client (or renamed away by another watch's queue on the
/// same stream) leaves the queue's `kept_len` stale: the next HSET creates the hash
/// again with `before != 0`, so no PEXPIRE, and `tend` is not due (less than a second
/// since the last): the hash never expires.
#[test]
fn an_outcomes_hash_made_again_expires() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    let a = xadd(&mut c, "q", &[("x", "1")]);
    wait_until("a acked", WAIT, || state_of(&mut c, &a) == "acked");
    assert!(vint(&ok(&mut c, &["PTTL", "q:outcomes"])).unwrap() > 0);
    ok(&mut c, &["DEL", "q:outcomes"]);
    let b = xadd(&mut c, "q", &[("x", "1")]);
    wait_until("b kept", WAIT, || {
        vint(&ok(&mut c, &["HEXISTS", "q:outcomes", &b])) == Some(1)
    });
    std::thread::sleep(Duration::from_millis(2500));
    let pttl = vint(&ok(&mut c, &["PTTL", "q:outcomes"])).unwrap();
    assert!(pttl > 0, "q:outcomes has no expiry: PTTL {pttl}");
}

/// A client that may write `q:cancels` (not `q`) makes any entry it names skipped:
/// acknowledged, never run, with no `cancelled` event and no outcome; JOB then says
/// `acked` (as if it ran).
#[test]
#[ignore = "reported (design choice), not fixed on this branch"]
fn a_foreign_cancels_set_skips_entries_silently() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    let id = "9999999999999-0";
    ok(&mut c, &["SADD", "q:cancels", id]);
    ok(&mut c, &["XADD", "q", id, "x", "1"]);
    wait_drained(&mut c, "q");
    std::thread::sleep(Duration::from_millis(300));
    let ran = lines(&dir.path().join("ran"));
    let state = state_of(&mut c, id);
    let cancelled_events = events(&mut c)
        .into_iter()
        .filter(|e| e.get("event").map(String::as_str) == Some("cancelled"))
        .count();
    assert!(
        ran.contains(&id.to_string()) || (state == "cancelled" && cancelled_events == 1),
        "skipped silently: ran {ran:?}, state {state}, cancelled events {cancelled_events}"
    );
}

/// Measures: 10,000 waiters whose clients all disconnect at once (each `WaiterGone`
/// scans every waiter: O(n^2) on the supervisor thread). Prints how long until the
/// supervisor answers again.
#[test]
fn measure_mass_disconnect_of_waiters() {
    use std::io::Write;
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .redis_args(&["--maxclients", "12000"])
        .start();
    let mut c = s.conn();
    let last = fill(&mut c);
    let port = s.port;
    let mut p = redis::pipe();
    for _ in 0..5_000 {
        p.cmd("XADD").arg("q").arg("*").arg("wait").arg("1");
    }
    let queued: Vec<String> = p.query(&mut c).unwrap();
    let mut socks = Vec::new();
    for i in 0..9_990 {
        // distinct entries, so that the per-entry lists are short and by_entry long
        let id = if i % 2 == 0 { last.clone() } else { queued[i / 2].clone() };
        let cmd = format!(
            "*3\r\n$16\r\nSTREAMWATCH.WAIT\r\n$1\r\nq\r\n${}\r\n{}\r\n",
            id.len(),
            id
        );
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.write_all(cmd.as_bytes()).unwrap();
        socks.push(sock);
    }
    std::thread::sleep(Duration::from_millis(3000));
    let info = info(&mut c, "clients");
    eprintln!("blocked clients: {:?}", info.get("blocked_clients"));
    let t = Instant::now();
    drop(socks);
    let got = run(&mut c, &["STREAMWATCH.JOBS"]);
    eprintln!("JOBS answered {:?} after the disconnects", t.elapsed());
    assert!(got.is_ok());
    std::fs::write(dir.path().join("go"), "").unwrap();
}
