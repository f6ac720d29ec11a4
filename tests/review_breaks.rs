//! Breaks found in review of the job-outcomes change (see the review report).

mod common;

use common::*;
use redis::Value;
use std::path::Path;
use std::time::Duration;

/// As tests/outcomes.rs: handler `job` waits for `$D/go` if the entry has `wait`, logs
/// the id it ran in `$D/ran`.
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

/// Two entries run (and wait for `go`), two are read ahead: the fifth is unread.
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

/// CANCEL of an entry not read yet answers 1 and keeps the outcome `cancelled`, but
/// what makes it skipped when it is read is only in the queue's memory: after
/// PAUSE + RESUME (likewise a restart, a failover, UNWATCH/WATCH, REPLACE) it runs.
#[test]
fn a_cancelled_unread_entry_does_not_run_after_pause_and_resume() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path())).dir(dir.clone()).start();
    let mut c = s.conn();
    let last = fill(&mut c);
    assert_eq!(state_of(&mut c, &last), "queued");
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])), Some(1));
    wait_until("cancelled", WAIT, || state_of(&mut c, &last) == "cancelled");
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    wait_until("runs stopped", WAIT, || jobs(&mut c).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    let ran = lines(&dir.path().join("ran"));
    assert!(!ran.contains(&last), "the cancelled entry ran: {ran:?}");
    assert_eq!(state_of(&mut c, &last), "cancelled");
}

/// The same across a restart of the server (the outcome `cancelled` is persisted).
#[test]
fn a_cancelled_unread_entry_does_not_run_after_a_restart() {
    let dir = TempDir::new();
    let cfg = config(dir.path());
    let mut s = Server::builder(&cfg).dir(dir.clone()).save("1 1").start();
    let mut c = s.conn();
    let last = fill(&mut c);
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])), Some(1));
    wait_until("cancelled", WAIT, || state_of(&mut c, &last) == "cancelled");
    ok(&mut c, &["SAVE"]);
    s.stop();
    std::fs::write(dir.path().join("go"), "").unwrap();
    let s = Server::builder(&cfg).dir(dir.clone()).save("1 1").start();
    let mut c = s.conn();
    wait_drained(&mut c, "q");
    let ran = lines(&dir.path().join("ran"));
    assert!(!ran.contains(&last), "the cancelled entry ran: {ran:?}");
}

/// A WAIT without TIMEOUT on an entry deleted from the stream (XDEL: any client that
/// may write the stream) is never answered: the docs say nil for an entry the stream
/// does not have.
#[test]
fn wait_on_an_entry_deleted_while_waiting_is_answered() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path())).dir(dir.clone()).start();
    let mut c = s.conn();
    let last = fill(&mut c);
    let mut w = s.conn();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let id = last.clone();
    let t = std::thread::spawn(move || run(&mut w, &["STREAMWATCH.WAIT", "q", &id]));
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["XDEL", "q", &last]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    let got = t.join().unwrap();
    assert_eq!(got.ok(), Some(Value::Nil), "WAIT got no answer");
}

/// Clients that disconnect while they WAIT stay counted (and their blocked-client
/// handles, ~33 KB of server memory each, stay allocated) until the entry finishes:
/// a read-only client fills the 10,000 slots in a second, after which every WAIT
/// is refused.
#[test]
fn disconnected_waiters_do_not_lock_everyone_out() {
    use std::io::Write;
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path())).dir(dir.clone()).start();
    let mut c = s.conn();
    let last = fill(&mut c);
    let port = s.port;
    let cmd = format!(
        "*3\r\n$16\r\nSTREAMWATCH.WAIT\r\n$1\r\nq\r\n${}\r\n{}\r\n",
        last.len(),
        last
    );
    for _ in 0..10_000 {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.write_all(cmd.as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = run(&mut c, &["STREAMWATCH.WAIT", "q", &last, "TIMEOUT", "100"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(got.map_err(|e| e.to_string()), Ok(Value::Nil));
}
