//! Job outcomes under what a hostile or unlucky client does: a cancel that must
//! outlive the queue that took it (with or without outcomes kept), WAIT on an entry
//! deleted meanwhile, clients that disconnect while they wait, ids that share a
//! millisecond, results too large to keep, an outcomes hash deleted and made again.
//! (Found by the two adversarial reviews of the outcomes change; each failed before
//! its fix.)

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

/// A cancelled entry not read yet, then PAUSE and RESUME (the queue that took the cancel
/// goes, another reads the entry): it never runs. `keep`: `outcomes-max`, if set.
fn cancelled_unread_survives_pause(keep: Option<&str>) {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    if let Some(n) = keep {
        ok(&mut c, &["CONFIG", "SET", "streamwatch.outcomes-max", n]);
    }
    let last = fill(&mut c);
    assert_eq!(state_of(&mut c, &last), "queued");
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])),
        Some(1)
    );
    let kept = keep != Some("0");
    if kept {
        wait_until("cancelled", WAIT, || state_of(&mut c, &last) == "cancelled");
    }
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    wait_until("runs stopped", WAIT, || jobs(&mut c).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    let ran = lines(&dir.path().join("ran"));
    assert!(!ran.contains(&last), "the cancelled entry ran: {ran:?}");
    if kept {
        assert_eq!(state_of(&mut c, &last), "cancelled");
    }
}

/// A cancel of an entry not read yet outlives the queue that took it (PAUSE + RESUME;
/// likewise UNWATCH/WATCH, REPLACE, a failover). It once lived in that queue's memory
/// only, and the entry ran.
#[test]
fn a_cancelled_unread_entry_does_not_run_after_pause_and_resume() {
    cancelled_unread_survives_pause(None);
}

/// The same across a restart of the server (the outcome `cancelled` is persisted).
#[test]
fn a_cancelled_unread_entry_does_not_run_after_a_restart() {
    let dir = TempDir::new();
    let cfg = config(dir.path());
    let mut s = Server::builder(&cfg).dir(dir.clone()).save("1 1").start();
    let mut c = s.conn();
    let last = fill(&mut c);
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])),
        Some(1)
    );
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

/// A WAIT without TIMEOUT on an entry deleted from the stream meanwhile (XDEL: any
/// client that may write the stream) is answered nil, as for an entry the stream does
/// not have. It once waited forever.
#[test]
fn wait_on_an_entry_deleted_while_waiting_is_answered() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
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

/// Clients that disconnect while they WAIT are let go at once. They once stayed counted
/// (with ~33 KB of server memory each) until the entry finished, so a read-only client
/// filled the 10,000 slots in a second and every later WAIT was refused.
#[test]
fn disconnected_waiters_do_not_lock_everyone_out() {
    use std::io::Write;
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
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

/// Eviction keeps the most recently finished outcomes, whatever their ids (here all
/// in one millisecond, where `1-10` sorts before `1-9` as text), and drops the oldest.
#[test]
fn eviction_keeps_the_newest_of_ids_that_share_a_millisecond() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    ok(&mut c, &["CONFIG", "SET", "streamwatch.outcomes-max", "6"]);
    for seq in 1..=12 {
        ok(&mut c, &["XADD", "q", &format!("1-{seq}"), "x", "1"]);
    }
    wait_until("drained", WAIT, || drained(&mut c, "q", "streamwatch"));
    let kept = |c: &mut redis::Connection, id: &str| {
        ["q:outcomes", "q:outcomes:old"]
            .iter()
            .any(|k| vint(&ok(c, &["HEXISTS", k, id])) == Some(1))
    };
    let all: Vec<Vec<String>> = ["q:outcomes", "q:outcomes:old"]
        .iter()
        .map(|k| {
            redis::cmd("HKEYS")
                .arg(*k)
                .query(&mut c)
                .unwrap_or_default()
        })
        .collect();
    // (Two run at once, so the last three to finish are among the last four.)
    for seq in 11..=12 {
        assert!(kept(&mut c, &format!("1-{seq}")), "1-{seq}: {all:?}");
    }
    for seq in 1..=4 {
        assert!(!kept(&mut c, &format!("1-{seq}")), "1-{seq}");
    }
}

/// A run's result larger than an outcome keeps is replaced by a note, not kept whole.
#[test]
fn a_result_too_large_is_not_kept_whole() {
    let dir = TempDir::new();
    let script = r#"read -r entry
head -c 30000 /dev/zero | tr '\0' a | { printf '{"result": "'; cat; printf '"}\n'; } >&3"#;
    let toml = format!(
        "[handler.big]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''']\n\n[[watch]]\npattern = \"q\"\nhandler = \"big\"\ntype = \"stream\"\n"
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let id = xadd(&mut c, "q", &[("x", "1")]);
    let m = to_map(&ok(
        &mut c,
        &["STREAMWATCH.WAIT", "q", &id, "TIMEOUT", "20000"],
    ));
    assert_eq!(get_str(&m, "state"), "acked");
    let result = get_str(&m, "result");
    assert!(
        result.contains("not kept"),
        "{}",
        &result[..result.len().min(200)]
    );
    let size = vint(&ok(&mut c, &["HSTRLEN", "q:outcomes", &id])).unwrap();
    assert!(size < 20_000, "outcome of {size} bytes");
}

/// A hash watch whose pattern matches everything makes no jobs of a stream's outcomes.
#[test]
fn outcomes_are_never_hash_jobs() {
    let dir = TempDir::new();
    let toml = format!(
        "{}[handler.h]\ncommand = [\"/bin/sleep\", \"30\"]\n\n[[watch]]\npattern = \"*\"\nhandler = \"h\"\n",
        config(dir.path())
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let id = xadd(&mut c, "q", &[("x", "1")]);
    wait_until("acked", WAIT, || state_of(&mut c, &id) == "acked");
    assert_eq!(vint(&ok(&mut c, &["HLEN", "q:outcomes"])), Some(1));
    ok(&mut c, &["HSET", "cams", "cam1", "u"]);
    wait_until("the real hash has its job", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "cams"]).len() == 1
    });
    assert!(jobs_filtered(&mut c, &["KEY", "q:outcomes"]).is_empty());
}

/// A cancel of an unread entry outlives its queue also with `outcomes-max 0` (keep no
/// outcomes): the note in `q:cancels` is written all the same.
#[test]
fn a_cancel_outlives_the_queue_also_when_no_outcomes_are_kept() {
    cancelled_unread_survives_pause(Some("0"));
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
