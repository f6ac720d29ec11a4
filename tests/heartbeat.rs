//! Supervision options of a handler (issue 19): `heartbeat-ms` (a run that writes
//! nothing on stdout, stderr or fd 3 for that long is hung: stopped, reported `hung`,
//! then restarted by policy or its attempt failed) and `no-restart-exit-codes` (a hash
//! job ends `failed` without a restart, a stream entry is dead-lettered at once). Real
//! workers, waits on conditions only: a worker that keeps writing is judged next to a
//! silent one that has been found hung meanwhile, not against a clock.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::Path;

type Event = HashMap<String, String>;

fn state(c: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    job(c, key, field).map(|j| get_str(&j, "state"))
}

fn field_of<'a>(e: &'a Event, name: &str) -> &'a str {
    e.get(name).map_or("", String::as_str)
}

/// Events `name` about stream `key`.
fn entry_events(c: &mut redis::Connection, name: &str, key: &str) -> Vec<Event> {
    events_of(c, name, key, None)
}

/// A per-entry stream handler running `/bin/sh -c script TAG {id} args...`.
fn stream_handler(name: &str, script: &str, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
    format!(
        "[handler.{name}]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"{args}]\n{extra}\n"
    )
}

const HUNG_300: &str = "hung: no output for 300 ms";

#[test]
fn a_silent_hash_worker_is_stopped_reported_hung_and_restarted() {
    let toml = format!(
        "{}\n{}",
        sh_handler(
            "quiet",
            r#"echo "start $3"; while :; do sleep 1; done"#,
            "heartbeat-ms = 300\nstop-grace-ms = 300\nbackoff-initial-ms = 50"
        ),
        watch_toml("hb:*", "quiet", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "hb:k", "f", "v"]);
    let first = running_pid(&mut c, "hb:k", "f");
    let hung = wait_for("a hung event", WAIT, || {
        events_of(&mut c, "hung", "hb:k", Some("f"))
            .into_iter()
            .next()
    });
    assert_eq!(field_of(&hung, "pid"), first.to_string(), "{hung:?}");
    assert_eq!(field_of(&hung, "error"), HUNG_300, "{hung:?}");
    // Stopped the usual way (its group gets TERM), and its exit says why.
    wait_gone("the hung worker", &[first]);
    let exited = wait_for("its exited event", WAIT, || {
        let evs = events_of(&mut c, "exited", "hb:k", Some("f"));
        evs.into_iter()
            .find(|e| field_of(e, "pid") == first.to_string())
    });
    assert_eq!(field_of(&exited, "error"), HUNG_300, "{exited:?}");
    assert!(exited.contains_key("signal") || exited.contains_key("code"));
    // A failure: the policy restarts it after its backoff, as a new process.
    let second = wait_for("a new run", WAIT, || {
        let j = job(&mut c, "hb:k", "f")?;
        let pid = get_int(&j, "pid")? as u32;
        (pid != first && get_str(&j, "state") == "running").then_some(pid)
    });
    assert!(second != first);
    let j = job(&mut c, "hb:k", "f").unwrap();
    assert!(get_int(&j, "runs").unwrap_or(0) >= 2, "{j:?}");
    assert!(!events_of(&mut c, "backoff", "hb:k", Some("f")).is_empty());
    let failures = stats_failures(&mut c);
    assert!(failures >= 1, "counted as a failure: {failures}");
    // It hangs again, and again it is caught.
    wait_gone("the second hung worker", &[second]);
}

fn stats_failures(c: &mut redis::Connection) -> i64 {
    info(c, "streamwatch")
        .get("streamwatch_failures")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn a_hung_hash_worker_counts_toward_max_failures() {
    let toml = format!(
        "{}\n{}",
        sh_handler(
            "quiet",
            "sleep 1000",
            "heartbeat-ms = 300\nstop-grace-ms = 200\nbackoff-initial-ms = 20\nmax-failures = 2"
        ),
        watch_toml("hm:*", "quiet", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "hm:k", "f", "v"]);
    wait_until("the job gives up", WAIT, || {
        state(&mut c, "hm:k", "f").as_deref() == Some("failed")
    });
    let j = job(&mut c, "hm:k", "f").unwrap();
    assert_eq!(get_int(&j, "runs"), Some(2), "{j:?}");
    assert_eq!(get_int(&j, "failures"), Some(2), "{j:?}");
    assert_eq!(get_str(&j, "error"), HUNG_300, "{j:?}");
    wait_eq("two hung events", WAIT, 2, || {
        events_of(&mut c, "hung", "hm:k", Some("f")).len()
    });
}

#[test]
fn a_worker_that_keeps_writing_is_not_hung() {
    // Output on stdout, or on stderr only, keeps a worker alive; a silent one next to
    // them is caught (twice) meanwhile, so the heartbeat was checked all along.
    let extra = "heartbeat-ms = 1000\nstop-grace-ms = 200\nbackoff-initial-ms = 20";
    let toml = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        sh_handler("chatty", "while :; do echo tick; sleep 0.1; done", extra),
        sh_handler(
            "grumbly",
            "while :; do echo tick >&2; sleep 0.1; done",
            extra
        ),
        sh_handler("silent", "sleep 1000", extra),
        watch_toml("ch:*", "chatty", None),
        watch_toml("gr:*", "grumbly", None),
        watch_toml("si:*", "silent", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ch:k", "f", "v"]);
    ok(&mut c, &["HSET", "gr:k", "f", "v"]);
    let chatty = running_pid(&mut c, "ch:k", "f");
    let grumbly = running_pid(&mut c, "gr:k", "f");
    ok(&mut c, &["HSET", "si:k", "f", "v"]);
    wait_until("the silent worker hung twice", WAIT, || {
        events_of(&mut c, "hung", "si:k", Some("f")).len() >= 2
    });
    for (key, pid) in [("ch:k", chatty), ("gr:k", grumbly)] {
        assert!(events_of(&mut c, "hung", key, None).is_empty(), "{key}");
        let j = job(&mut c, key, "f").unwrap();
        assert_eq!(get_int(&j, "pid"), Some(pid as i64), "{key}: {j:?}");
        assert_eq!(get_int(&j, "runs"), Some(1), "{key}: {j:?}");
        assert!(pid_alive(pid));
    }
}

#[test]
fn a_silent_stream_run_fails_its_attempts_and_is_dead_lettered() {
    // "hang" prints once and goes silent; "talk" writes progress on fd 3 only, for
    // longer than the heartbeat, and succeeds.
    let script = r#"case "$2" in
        hang) echo "begin $1"; sleep 1000 ;;
        talk) for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo '{"progress": 1}' >&3; sleep 0.1; done ;;
    esac"#;
    let toml = stream_handler(
        "job",
        script,
        &["{field:mode}"],
        "heartbeat-ms = 300\nstop-grace-ms = 200\nbackoff-initial-ms = 10",
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "hq",
        "job",
        &["MAX-ATTEMPTS", "2", "CONCURRENCY", "2"],
    );
    let hang = xadd(&mut c, "hq", &[("mode", "hang")]);
    let talk = xadd(&mut c, "hq", &[("mode", "talk")]);
    wait_drained(&mut c, "hq");
    // Events are appended after the acknowledgement, in the supervisor's next GIL hold:
    // once both entries' last events are there, every earlier one is too.
    wait_until("the entries' acked and dead-lettered events", WAIT, || {
        let last = |c: &mut redis::Connection, name, id: &str| {
            entry_events(c, name, "hq").iter().any(|e| e["id"] == id)
        };
        last(&mut c, "acked", &talk) && last(&mut c, "dead-lettered", &hang)
    });
    let dead = stream_entries(&mut c, "hq:dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], hang);
    assert_eq!(dead[0]["attempts"], "2");
    assert_eq!(dead[0]["error"], HUNG_300);
    assert!(
        dead[0]["output"].contains(&format!("begin {hang}")),
        "{dead:?}"
    );
    let hung = entry_events(&mut c, "hung", "hq");
    assert_eq!(hung.len(), 2, "{hung:?}");
    assert!(hung
        .iter()
        .all(|e| e["id"] == hang && e["error"] == HUNG_300));
    let exited: Vec<Event> = entry_events(&mut c, "exited", "hq");
    let of_hang: Vec<&Event> = exited.iter().filter(|e| e["id"] == hang).collect();
    assert_eq!(of_hang.len(), 2, "{exited:?}");
    assert!(of_hang.iter().all(|e| e["error"] == HUNG_300), "{exited:?}");
    assert!(!exited.iter().any(|e| e["id"] == talk), "{exited:?}");
    let acked = entry_events(&mut c, "acked", "hq");
    assert!(acked.iter().any(|e| e["id"] == talk), "{acked:?}");
}

/// A pool worker: each entry line's `mode` says what to do (`hang`: never answer).
const POOL_WORKER: &str = r#"
while IFS= read -r line; do
  id=${line#*\"id\":\"}; id=${id%%\"*}
  echo "$id $$" >> "$D/done"
  case "$line" in *'"mode":"hang"'*) sleep 1000;; *'"mode":"nap"'*) sleep 0.2;; esac
  printf '{"id":"%s","ok":true}\n' "$id" >&3
done
"#;

fn pool_handler(dir: &Path) -> String {
    format!(
        "[handler.pw]\ncommand = [\"/bin/sh\", \"-c\", '''{POOL_WORKER}''', \"{TAG}\"]\nenv = {{ D = \"{}\" }}\npool = 1\nheartbeat-ms = 500\nstop-grace-ms = 200\nbackoff-initial-ms = 20\n",
        dir.display()
    )
}

#[test]
fn a_pool_worker_silent_with_an_entry_is_hung_an_idle_one_is_not() {
    let dir = TempDir::new();
    let toml = format!(
        "{}\n{}\n{}",
        pool_handler(dir.path()),
        sh_handler(
            "silent",
            "sleep 1000",
            "heartbeat-ms = 500\nstop-grace-ms = 200"
        ),
        watch_toml("si:*", "silent", None)
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "pq", "pw", &["MAX-ATTEMPTS", "2"]);
    let first = xadd(&mut c, "pq", &[("mode", "ok")]);
    wait_drained(&mut c, "pq");
    let ran = lines(&dir.path().join("done"));
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].starts_with(&first), "{ran:?}");
    let pids = |c: &mut redis::Connection| -> Vec<i64> {
        let pools = parse_maps(&ok(c, &["STREAMWATCH.POOLS"]));
        let p = pools.into_iter().find(|m| get_str(m, "handler") == "pw");
        p.map_or(Vec::new(), |p| {
            to_array(&p["pids"]).iter().filter_map(vint).collect()
        })
    };
    let idle = pids(&mut c);
    assert_eq!(idle.len(), 1, "{idle:?}");
    // Idle for longer than its heartbeat (a silent hash job is caught twice
    // meanwhile): the worker is not hung.
    ok(&mut c, &["HSET", "si:k", "f", "v"]);
    wait_until("the silent hash job hung twice", WAIT, || {
        events_of(&mut c, "hung", "si:k", Some("f")).len() >= 2
    });
    assert_eq!(pids(&mut c), idle, "the idle worker is kept");
    // Given an entry, its silence counts from then, not from its last answer.
    xadd(&mut c, "pq", &[("mode", "nap")]);
    wait_drained(&mut c, "pq");
    assert_eq!(pids(&mut c), idle, "the idle worker is kept");
    assert!(entry_events(&mut c, "hung", "pq").is_empty());
    // Silent with an entry: hung; the attempt fails, the worker is replaced, and
    // after its last attempt the entry is dead-lettered.
    let hang = xadd(&mut c, "pq", &[("mode", "hang")]);
    wait_drained(&mut c, "pq");
    let dead = stream_entries(&mut c, "pq:dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], hang);
    assert_eq!(dead[0]["attempts"], "2");
    assert_eq!(dead[0]["error"], "hung: no output for 500 ms");
    let hung = entry_events(&mut c, "hung", "pq");
    assert_eq!(hung.len(), 2, "{hung:?}");
    assert_eq!(hung[0]["pid"], idle[0].to_string(), "{hung:?}");
    let now = pids(&mut c);
    assert!(
        !now.contains(&idle[0]),
        "the hung worker was replaced: {now:?}"
    );
    wait_gone("the hung worker", &[idle[0] as u32]);
}

#[test]
fn an_exit_code_in_no_restart_exit_codes_ends_a_hash_job_failed() {
    // The field's value is the exit code: 3 and 0 are in the list, 4 is not.
    let toml = format!(
        "{}\n{}",
        sh_handler(
            "coded",
            r#"echo "exiting $3"; exit "$3""#,
            "restart = \"always\"\nbackoff-initial-ms = 20\nno-restart-exit-codes = [3, 0]"
        ),
        watch_toml("nr:*", "coded", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(
        &mut c,
        &["HSET", "nr:k", "three", "3", "zero", "0", "four", "4"],
    );
    wait_until("code 3 ends the job failed", WAIT, || {
        state(&mut c, "nr:k", "three").as_deref() == Some("failed")
    });
    wait_until("code 0 ends the job exited", WAIT, || {
        state(&mut c, "nr:k", "zero").as_deref() == Some("exited")
    });
    wait_until("code 4 is restarted", WAIT, || {
        job(&mut c, "nr:k", "four").and_then(|j| get_int(&j, "runs")) >= Some(3)
    });
    // No new run of either, after later changes have been handled.
    ok(&mut c, &["HSET", "nr:other", "g", "3"]);
    wait_until("the other job failed too", WAIT, || {
        state(&mut c, "nr:other", "g").as_deref() == Some("failed")
    });
    for (field, code, st) in [("three", 3, "failed"), ("zero", 0, "exited")] {
        let j = job(&mut c, "nr:k", field).unwrap();
        assert_eq!(get_str(&j, "state"), st, "{j:?}");
        assert_eq!(get_int(&j, "runs"), Some(1), "{j:?}");
        assert_eq!(get_int(&j, "last_exit"), Some(code), "{j:?}");
        assert_eq!(get_int(&j, "pid"), None, "{j:?}");
        assert!(events_of(&mut c, "backoff", "nr:k", Some(field)).is_empty());
        let why = (code == 3).then_some("exit code 3 is in no-restart-exit-codes");
        let error = j.get("error").expect("an error field");
        let error = (*error != redis::Value::Nil).then(|| get_str(&j, "error"));
        assert_eq!(error.as_deref(), why, "{j:?}");
    }
    let failed = events_of(&mut c, "failed", "nr:k", Some("three"));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        field_of(&failed[0], "error"),
        "exit code 3 is in no-restart-exit-codes"
    );
    assert!(events_of(&mut c, "failed", "nr:k", Some("zero")).is_empty());
    assert!(job_log(&mut c, "nr:k", "three").contains(&"exiting 3".to_string()));
}

#[test]
fn an_exit_code_in_no_restart_exit_codes_dead_letters_a_stream_entry_at_once() {
    let toml = stream_handler(
        "coded",
        r#"echo "exiting $2"; exit "$2""#,
        &["{field:code}"],
        "backoff-initial-ms = 10\nno-restart-exit-codes = [3]",
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "nq", "coded", &["MAX-ATTEMPTS", "3"]);
    let three = xadd(&mut c, "nq", &[("code", "3")]);
    let four = xadd(&mut c, "nq", &[("code", "4")]);
    let zero = xadd(&mut c, "nq", &[("code", "0")]);
    wait_drained(&mut c, "nq");
    let dead: HashMap<String, Event> = stream_entries(&mut c, "nq:dead")
        .into_iter()
        .map(|e| (e["id"].clone(), e))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let d = &dead[&three];
    assert_eq!(d["attempts"], "1", "{d:?}");
    assert_eq!(d["last_exit"], "3");
    assert_eq!(
        d["error"],
        "exit code 3, in no-restart-exit-codes: not retried"
    );
    assert!(d["output"].contains("exiting 3"), "{d:?}");
    let d = &dead[&four];
    assert_eq!(
        d["attempts"], "3",
        "a code not in the list is retried: {d:?}"
    );
    assert_eq!(d["error"], "exit code 4");
    // The last entry's acked event comes in the hold after its XACK; every earlier
    // event is in the stream once it is.
    wait_until("the acked event of the last entry", WAIT, || {
        entry_events(&mut c, "acked", "nq")
            .iter()
            .any(|e| e["id"] == zero)
    });
    let backoff = entry_events(&mut c, "backoff", "nq");
    assert!(!backoff.iter().any(|e| e["id"] == three), "{backoff:?}");
}

#[test]
fn no_restart_exit_codes_are_refused_for_a_pool_and_out_of_range() {
    let pool = "[handler.p]\ncommand = [\"/bin/cat\"]\npool = 2\nno-restart-exit-codes = [3]\n";
    let log = Server::start_expect_failure(pool);
    assert!(
        log.contains("handler 'p' is a pool (pool = 2): no-restart-exit-codes does not apply"),
        "{log}"
    );
    let range = "[handler.h]\ncommand = [\"/bin/true\"]\nno-restart-exit-codes = [256]\n";
    let log = Server::start_expect_failure(range);
    assert!(
        log.contains("handler 'h' has 256 in no-restart-exit-codes: an exit code is 0 to 255"),
        "{log}"
    );
}
