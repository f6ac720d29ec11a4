//! Outcomes at their bounds: a cancel that must outlive its queue when no outcomes are
//! kept, and an outcomes hash made again (after a DEL) that must still expire. (Found
//! by the second adversarial review of the outcomes change; each failed before its
//! fix.)

mod common;

use common::*;
use redis::Value;
use std::path::Path;
use std::time::Duration;

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
