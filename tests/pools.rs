//! Worker pools (`pool = N`): stream entries run on long-lived workers, one JSON line
//! per entry on their stdin, one reply line per entry on their fd 3. What must hold is
//! what holds for a process per entry (at least once, retried, dead-lettered, claimed
//! back after a crash, a helper's death or a failover; stopped by PAUSE and UNWATCH),
//! with the workers reused, replaced when they fail and recycled after `max-requests`.
//!
//! The workers here are small shell loops: each records `id pid attempt` in `$D/done`
//! and behaves as the entry's `mode` field says (crash, hang, garble its reply, fail,
//! print, take its time).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// The pool worker: reads entries, acts on their `mode`, answers on fd 3; ends at the
/// end of its input (unless `$AFTER` says what to do then).
const WORKER: &str = r#"
while IFS= read -r line; do
  id=${line#*\"id\":\"}; id=${id%%\"*}
  attempt=${line#*\"attempt\":}; attempt=${attempt%%,*}
  mode=
  case "$line" in *'"mode":"'*) mode=${line#*\"mode\":\"}; mode=${mode%%\"*};; esac
  echo "$id $$ $attempt" >> "$D/done"
  case "$mode/$attempt" in
    crash/1) exit 3;;
    crashslow/1) sleep 0.5; exit 3;;
    answerexit/1) sleep 0.5; printf '{"id":"%s","ok":true}\n' "$id" >&3; exit 0;;
    latin1/*) printf '{"id":"%s","ok":true,"note":"caf\351"}\n' "$id" >&3; continue;;
    stubborn/1) trap '' TERM; sleep 1; printf '{"id":"%s","ok":true}\n' "$id" >&3; continue;;
    graceful/1) trap 'q=1' TERM; sleep 2; printf '{"id":"%s","ok":true}\n' "$id" >&3; exit 0;;
    failonce/1) printf '{"id":"%s","ok":false,"error":"not yet"}\n' "$id" >&3; continue;;
    busy/*) touch "$D/in.$id"; sleep 0.2; rm "$D/in.$id";;
    quit/1) exit 0;;
    hang/1) sleep 1000;;
    bad/*) echo 'this is not JSON' >&3; continue;;
    fail/*) printf '{"id":"%s","ok":false,"error":"it said no"}\n' "$id" >&3; continue;;
    print/*) echo "to stdout $id"; echo "to stderr $id" >&2;;
    slow/*) sleep 1;;
    printslow/*) echo "to stdout $id"; sleep 1;;
  esac
  printf '{"id":"%s","ok":true,"result":{"n":1}}\n' "$id" >&3
done
$AFTER
"#;

/// A pool handler `pw` of `size` workers running `WORKER`, with `$D` set to `dir`.
fn pool_handler(dir: &Path, size: u32, extra: &str) -> String {
    format!(
        "[handler.pw]\ncommand = [\"/bin/sh\", \"-c\", '''{WORKER}''', \"{TAG}\"]\nenv = {{ D = \"{}\" }}\npool = {size}\nbackoff-initial-ms = 50\nbackoff-max-ms = 200\n{extra}\n",
        dir.display()
    )
}

/// A server (in `dir`) with the pool handler `pw` of `size` workers.
fn pool_server(dir: &std::sync::Arc<TempDir>, size: u32, extra: &str) -> Server {
    Server::builder(&pool_handler(dir.path(), size, extra))
        .dir(dir.clone())
        .start()
}

/// `(id, worker pid, attempt)` per line of `$D/done`.
fn done(dir: &Path) -> Vec<(String, u32, u32)> {
    lines(&dir.join("done"))
        .iter()
        .map(|l| {
            let mut it = l.split(' ');
            let id = it.next().unwrap_or_default().to_string();
            let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let attempt = it.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            (id, pid, attempt)
        })
        .collect()
}

/// The attempts with which entry `id` ran, in order (from `done`).
fn attempts(ran: &[(String, u32, u32)], id: &str) -> Vec<u32> {
    ran.iter().filter(|r| r.0 == id).map(|r| r.2).collect()
}

fn pool(c: &mut redis::Connection) -> Map {
    parse_maps(&ok(c, &["STREAMWATCH.POOLS"]))
        .into_iter()
        .find(|m| get_str(m, "handler") == "pw")
        .expect("the pool is listed")
}

fn stat(c: &mut redis::Connection, name: &str) -> i64 {
    get_int(&pool(c), name).unwrap_or(-1)
}

fn events_named(
    c: &mut redis::Connection,
    name: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    stream_entries(c, "streamwatch:events")
        .into_iter()
        .filter(|e| e.get("event").map(String::as_str) == Some(name))
        .collect()
}

#[test]
fn entries_run_on_reused_workers_and_are_acknowledged() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 2, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "pq", "pw", &["CONCURRENCY", "4"]);
    let added = xadd_many(&mut c, "pq", 0, 50);
    wait_drained(&mut c, "pq");
    let ran = done(dir.path());
    let ids: BTreeSet<String> = ran.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, added.iter().cloned().collect(), "every entry ran");
    assert_eq!(ran.len(), 50, "each once");
    let pids: BTreeSet<u32> = ran.iter().map(|(_, pid, _)| *pid).collect();
    assert!(pids.len() <= 2, "at most the pool's two workers: {pids:?}");
    let p = pool(&mut c);
    assert_eq!(get_int(&p, "size"), Some(2));
    assert_eq!(get_int(&p, "done"), Some(50));
    assert_eq!(get_int(&p, "restarts"), Some(0));
    assert_eq!(get_int(&p, "workers"), Some(pids.len() as i64));
    let listed: BTreeSet<u32> = to_array(&p["pids"])
        .iter()
        .map(|v| vint(v).unwrap_or(0) as u32)
        .collect();
    assert_eq!(listed, pids, "POOLS lists the workers' pids");
    let w = watch_map(&mut c, "pq");
    assert_eq!(get_int(&w, "acked"), Some(50));
    assert_eq!(events_named(&mut c, "worker-started").len(), pids.len());
    assert!(stream_entries(&mut c, "pq:dead").is_empty());
}

#[test]
fn an_entry_in_a_worker_shows_the_workers_pid() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "sq", "pw", &[]);
    let id = xadd(&mut c, "sq", &[("mode", "slow")]);
    let running = wait_for("the entry running in its worker", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "sq", "STATE", "running"]).pop()
    });
    assert_eq!(get_str(&running, "id"), id);
    let pid = get_int(&running, "pid").expect("pid") as u32;
    let p = pool(&mut c);
    assert_eq!(get_int(&p, "busy"), Some(1));
    assert_eq!(
        to_array(&p["pids"])
            .iter()
            .map(|v| vint(v).unwrap_or(0) as u32)
            .collect::<Vec<_>>(),
        [pid]
    );
    wait_drained(&mut c, "sq");
    assert_eq!(done(dir.path())[0].1, pid);
}

#[test]
fn a_worker_crash_fails_the_attempt_and_the_worker_is_replaced() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "cq", "pw", &[]);
    let id = xadd(&mut c, "cq", &[("mode", "crash")]);
    xadd_many(&mut c, "cq", 0, 3);
    wait_drained(&mut c, "cq");
    let ran = done(dir.path());
    let of_crash: Vec<_> = ran.iter().filter(|r| r.0 == id).collect();
    assert_eq!(of_crash.len(), 2, "crashed once, then ran again: {ran:?}");
    assert_ne!(of_crash[0].1, of_crash[1].1, "by a new worker");
    assert_eq!(of_crash[1].2, 2, "as attempt 2");
    assert!(stat(&mut c, "restarts") >= 1);
    let exited = events_named(&mut c, "exited");
    assert!(
        exited
            .iter()
            .any(|e| e.get("id") == Some(&id) && e.get("code").map(String::as_str) == Some("3")),
        "{exited:?}"
    );
    assert!(!events_named(&mut c, "worker-exited").is_empty());
}

#[test]
fn a_worker_past_timeout_is_stopped_and_the_entry_retried() {
    let dir = TempDir::new();
    let s = Server::builder(&pool_handler(
        dir.path(),
        1,
        "timeout-ms = 500\nstop-grace-ms = 200",
    ))
    .dir(dir.clone())
    .start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "tq", "pw", &[]);
    let id = xadd(&mut c, "tq", &[("mode", "hang")]);
    wait_drained(&mut c, "tq");
    let ran = done(dir.path());
    assert_eq!(attempts(&ran, &id).len(), 2, "{ran:?}");
    let exited = events_named(&mut c, "exited");
    assert!(
        exited.iter().any(|e| e
            .get("error")
            .is_some_and(|x| x.starts_with("timed out after 500 ms"))),
        "{exited:?}"
    );
    wait_until("no hung worker left", WAIT, || s.tagged_procs().len() <= 1);
}

#[test]
fn a_malformed_reply_fails_the_attempt_and_replaces_the_worker() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "bq", "pw", &["MAX-ATTEMPTS", "2"]);
    let bad = xadd(&mut c, "bq", &[("mode", "bad")]);
    let fine = xadd(&mut c, "bq", &[("n", "1")]);
    wait_drained(&mut c, "bq");
    let dead = stream_entries(&mut c, "bq:dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], bad);
    assert!(
        dead[0]["error"].starts_with("malformed reply from the pool worker"),
        "{dead:?}"
    );
    let ran = done(dir.path());
    let pids: BTreeSet<u32> = ran.iter().map(|r| r.1).collect();
    assert_eq!(pids.len(), 3, "each bad reply cost its worker: {ran:?}");
    assert!(ran.iter().any(|r| r.0 == fine));
}

#[test]
fn an_error_reply_fails_the_attempt_but_keeps_the_worker() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "eq", "pw", &["MAX-ATTEMPTS", "2"]);
    let no = xadd(&mut c, "eq", &[("mode", "fail")]);
    wait_drained(&mut c, "eq");
    let dead = stream_entries(&mut c, "eq:dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], no);
    assert_eq!(dead[0]["error"], "it said no");
    let pids: BTreeSet<u32> = done(dir.path()).iter().map(|r| r.1).collect();
    assert_eq!(pids.len(), 1, "the worker stays");
    assert_eq!(stat(&mut c, "restarts"), 0);
    assert_eq!(stat(&mut c, "failed"), 2);
}

#[test]
fn what_a_worker_prints_is_its_log_not_a_reply() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "oq", "pw", &[]);
    for _ in 0..5 {
        xadd(&mut c, "oq", &[("mode", "print")]);
    }
    wait_drained(&mut c, "oq");
    assert_eq!(stat(&mut c, "done"), 5);
    assert_eq!(stat(&mut c, "restarts"), 0);
    assert!(stream_entries(&mut c, "oq:dead").is_empty());
}

#[test]
fn max_requests_recycles_a_worker() {
    // With CONCURRENCY 4 the worker is also given its next entry while busy: never
    // one past its last.
    for concurrency in ["1", "4"] {
        let dir = TempDir::new();
        let s = pool_server(&dir, 1, "max-requests = 3");
        let mut c = s.conn();
        watch_stream_opts(&mut c, "mq", "pw", &["CONCURRENCY", concurrency]);
        xadd_many(&mut c, "mq", 0, 10);
        wait_drained(&mut c, "mq");
        let ran = done(dir.path());
        assert_eq!(ran.len(), 10);
        let mut per_pid = std::collections::BTreeMap::<u32, usize>::new();
        for r in &ran {
            *per_pid.entry(r.1).or_default() += 1;
        }
        assert_eq!(per_pid.len(), 4, "3 + 3 + 3 + 1: {per_pid:?}");
        assert!(per_pid.values().all(|&n| n <= 3));
        assert!(stream_entries(&mut c, "mq:dead").is_empty());
        assert_eq!(stat(&mut c, "restarts"), 0, "concurrency {concurrency}");
    }
}

/// A worker is given one entry at a time, even when the module has its next entry
/// ready (the helper holds it until the worker answers): this worker looks for more
/// on its stdin before it answers, and must find nothing.
#[test]
fn a_worker_finds_no_second_entry_on_its_stdin_before_it_answers() {
    let dir = TempDir::new();
    let script = r#"
import json, os, select, sys
buf = b""
out = os.fdopen(3, "w")
while True:
    while b"\n" not in buf:
        chunk = os.read(0, 65536)
        if not chunk:
            sys.exit(0)
        buf += chunk
    line, buf = buf.split(b"\n", 1)
    e = json.loads(line)
    more = bool(buf) or bool(select.select([0], [], [], 0.2)[0])
    with open(os.environ["D"] + "/seen", "a") as f:
        f.write("%s %d\n" % (e["id"], more))
    out.write(json.dumps({"id": e["id"], "ok": True}) + "\n")
    out.flush()
"#;
    let toml = format!(
        "[handler.py]\ncommand = [\"python3\", \"-c\", '''{script}''', \"{TAG}\"]\nenv = {{ D = \"{}\" }}\npool = 1\n",
        dir.path().display()
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "oq", "py", &["CONCURRENCY", "4"]);
    let added = xadd_many(&mut c, "oq", 0, 6);
    wait_drained(&mut c, "oq");
    let seen: BTreeSet<String> = lines(&dir.path().join("seen")).into_iter().collect();
    let want: BTreeSet<String> = added.iter().map(|id| format!("{id} 0")).collect();
    assert_eq!(seen, want, "one entry at a time");
}

/// A worker that ends while it holds a next entry (not given to it yet): that entry
/// never ran, so it runs on another worker as the same attempt.
#[test]
fn the_next_entry_of_a_worker_that_crashes_runs_elsewhere_as_the_same_attempt() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "nq", "pw", &["CONCURRENCY", "2"]);
    let crash = xadd(&mut c, "nq", &[("mode", "crashslow")]);
    let next = xadd(&mut c, "nq", &[("mode", "none")]);
    // The second entry waits in the busy worker's hands, not running.
    let waiting = wait_for("the next entry given to the busy worker", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "nq"])
            .into_iter()
            .find(|j| get_str(j, "id") == next)
    });
    assert_eq!(get_str(&waiting, "state"), "starting");
    assert_eq!(get_int(&waiting, "pid"), None);
    wait_drained(&mut c, "nq");
    let ran = done(dir.path());
    let of = |id: &str| {
        ran.iter()
            .filter(|r| r.0 == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&crash).len(), 2, "crashed once, then ran again: {ran:?}");
    let next_ran = of(&next);
    assert_eq!(next_ran.len(), 1, "{ran:?}");
    assert_eq!(next_ran[0].2, 1, "as attempt 1: {ran:?}");
    assert_ne!(next_ran[0].1, of(&crash)[0].1, "by the new worker");
}

/// With CONCURRENCY 1 entries run in order, retries included: no entry waits in a
/// worker behind another (it would run before the other's retry).
#[test]
fn concurrency_1_keeps_the_order_through_a_retry() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 2, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "o1", "pw", &[]);
    let first = xadd(&mut c, "o1", &[("mode", "failonce")]);
    let rest = xadd_many(&mut c, "o1", 0, 3);
    wait_drained(&mut c, "o1");
    let order: Vec<String> = done(dir.path()).into_iter().map(|r| r.0).collect();
    let want = [vec![first.clone(), first], rest].concat();
    assert_eq!(order, want);
}

/// CONCURRENCY bounds the entries running at once on a pool bigger than it, with
/// entries also waiting in the workers' hands.
#[test]
fn a_pool_runs_no_more_than_concurrency_entries_of_a_stream() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 4, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "bq", "pw", &["CONCURRENCY", "2"]);
    let ids: Vec<String> = (0..10)
        .map(|_| xadd(&mut c, "bq", &[("mode", "busy")]))
        .collect();
    let mut most = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while done(dir.path()).len() < ids.len() || count_in(dir.path()) > 0 {
        assert!(std::time::Instant::now() < deadline, "not drained");
        most = most.max(count_in(dir.path()));
        let running = jobs_filtered(&mut c, &["KEY", "bq", "STATE", "running"]).len();
        assert!(running <= 2, "{running} running");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(most <= 2, "{most} entries in workers at once");
    assert!(most >= 1);
    wait_drained(&mut c, "bq");
}

/// How many entries the workers are in (`busy` mode) now.
fn count_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("in."))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn pause_stops_the_workers_and_resume_runs_what_was_left() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 2, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "rq", "pw", &["CONCURRENCY", "2"]);
    let slow = xadd(&mut c, "rq", &[("mode", "slow")]);
    wait_until("a worker busy", WAIT, || stat(&mut c, "busy") == 1);
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    wait_until("no worker while paused", WAIT, || {
        stat(&mut c, "workers") == 0 && s.tagged_procs().is_empty()
    });
    let more = xadd_many(&mut c, "rq", 0, 5);
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    wait_drained(&mut c, "rq");
    let ran: BTreeSet<String> = done(dir.path()).into_iter().map(|r| r.0).collect();
    assert!(ran.contains(&slow));
    assert!(more.iter().all(|id| ran.contains(id)));
    assert_eq!(stat(&mut c, "restarts"), 0, "a pause is no failure");
}

#[test]
fn unwatch_while_busy_stops_the_worker() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "uq", "pw", &[]);
    xadd(&mut c, "uq", &[("mode", "slow")]);
    wait_until("the worker busy", WAIT, || stat(&mut c, "busy") == 1);
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.UNWATCH", "uq"])), Some(1));
    wait_until("the worker gone", WAIT, || s.tagged_procs().is_empty());
    let g = group_info(&mut c, "uq", "streamwatch");
    assert_eq!(
        g.get("pending").map(String::as_str),
        Some("1"),
        "left pending: {g:?}"
    );
}

#[test]
fn kill9_of_the_server_mid_entry_loses_nothing() {
    let dir = TempDir::new();
    let toml = pool_handler(dir.path(), 2, "");
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let added = {
        let mut s = Server::builder(&toml)
            .dir(dir.clone())
            .redis_args(&args)
            .start();
        let mut c = s.conn();
        watch_stream_opts(&mut c, "kq", "pw", &["CONCURRENCY", "2"]);
        let mut added = Vec::new();
        for i in 0..6 {
            added.push(xadd(
                &mut c,
                "kq",
                &[("mode", "slow"), ("n", &i.to_string())],
            ));
        }
        wait_until("an entry done", WAIT, || !done(dir.path()).is_empty());
        s.kill9();
        added
    };
    let s = Server::builder(&toml)
        .dir(dir.clone())
        .redis_args(&args)
        .start();
    let mut c = s.conn();
    wait_drained(&mut c, "kq");
    let ran: BTreeSet<String> = done(dir.path()).into_iter().map(|r| r.0).collect();
    assert_eq!(
        ran,
        added.into_iter().collect(),
        "every entry ran at least once"
    );
    assert!(stream_entries(&mut c, "kq:dead").is_empty());
}

#[test]
fn killing_the_helper_loses_no_entry() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 2, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "hq", "pw", &["CONCURRENCY", "2"]);
    let mut added = Vec::new();
    for i in 0..4 {
        added.push(xadd(
            &mut c,
            "hq",
            &[("mode", "slow"), ("n", &i.to_string())],
        ));
    }
    wait_until("both workers busy", WAIT, || stat(&mut c, "busy") == 2);
    let helper = s.helper().expect("a helper");
    unsafe { libc::kill(helper as i32, libc::SIGKILL) };
    wait_drained(&mut c, "hq");
    let ran: BTreeSet<String> = done(dir.path()).into_iter().map(|r| r.0).collect();
    assert_eq!(ran, added.into_iter().collect());
    assert!(stream_entries(&mut c, "hq:dead").is_empty());
}

#[test]
fn a_promoted_replica_runs_the_pending_entries_on_its_pool() {
    let out = TempDir::new();
    let toml = format!(
        "{}[[watch]]\npattern = \"fq\"\nhandler = \"pw\"\ntype = \"stream\"\n",
        pool_handler(out.path(), 1, "")
    );
    let mut p = Server::start(&toml);
    let r = Server::start(&toml);
    let (mut pc, mut rc) = (p.conn(), r.conn());
    replicate(&r, &p);
    assert_eq!(stat(&mut rc, "workers"), 0, "a replica starts no worker");
    let slow = xadd(&mut pc, "fq", &[("mode", "slow")]);
    wait_until("pending on the replica too", WAIT, || {
        group_info(&mut rc, "fq", "streamwatch")
            .get("pending")
            .map(String::as_str)
            == Some("1")
    });
    p.kill9();
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    wait_drained(&mut rc, "fq");
    let ran = done(out.path());
    assert_eq!(ran.last().map(|r| r.0.clone()), Some(slow));
    assert_eq!(stat(&mut rc, "done"), 1);
}

#[test]
fn a_watch_command_cannot_give_a_pool_a_hash() {
    let s = Server::start("[handler.p]\ncommand = [\"/bin/cat\"]\npool = 2\n");
    let mut c = s.conn();
    let e = run(&mut c, &["STREAMWATCH.WATCH", "h", "HANDLER", "p"]).unwrap_err();
    assert!(e.to_string().contains("stream watches only"), "{e}");
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "q", "HANDLER", "p", "TYPE", "stream"],
    );
}

/// The Python worker of `clients/python` (the README's), run for real: jobs, their
/// results, an exception failing one job without ending the loop.
#[test]
fn a_python_worker_using_the_client_module() {
    let dir = TempDir::new();
    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let script = r#"
import os
from streamwatch import jobs
for job in jobs():
    with job:
        with open(os.environ["D"] + "/done", "a") as f:
            f.write("%s %d %d\n" % (job.id, os.getpid(), job.attempt))
        if job.fields.get("mode") == "raise":
            raise ValueError("bad input")
        job.ok({"sum": sum(range(1000))})
"#;
    let toml = format!(
        "[handler.py]\ncommand = [\"python3\", \"-c\", '''{script}''', \"{TAG}\"]\nenv = {{ D = \"{}\", PYTHONPATH = \"{clients}\" }}\npool = 2\n",
        dir.path().display()
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "py",
        "py",
        &["CONCURRENCY", "2", "MAX-ATTEMPTS", "1"],
    );
    let added = xadd_many(&mut c, "py", 0, 30);
    let bad = xadd(&mut c, "py", &[("mode", "raise")]);
    wait_drained(&mut c, "py");
    let ran = done(dir.path());
    let ids: BTreeSet<String> = ran.iter().map(|r| r.0.clone()).collect();
    assert!(added.iter().all(|id| ids.contains(id)), "{ran:?}");
    let dead = stream_entries(&mut c, "py:dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], bad);
    assert_eq!(dead[0]["error"], "ValueError: bad input");
    // The traceback the client printed is in the dead-letter entry.
    assert!(dead[0]["output"].contains("Traceback"), "{dead:?}");
    assert!(
        dead[0]["output"].ends_with("ValueError: bad input"),
        "{dead:?}"
    );
    let p = parse_maps(&ok(&mut c, &["STREAMWATCH.POOLS"]))
        .pop()
        .expect("pool");
    assert_eq!(get_int(&p, "done"), Some(30));
    assert_eq!(
        get_int(&p, "restarts"),
        Some(0),
        "the exception did not cost the worker"
    );
}

/// The Rust worker of `examples/pool_worker.rs` (built with the tests).
#[test]
fn a_rust_worker_from_the_examples() {
    let worker = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/release/examples/pool_worker"
    );
    let toml = format!("[handler.rs]\ncommand = [\"{worker}\", \"{TAG}\"]\npool = 2\n");
    let s = Server::start(&toml);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "rs", "rs", &["CONCURRENCY", "4"]);
    xadd_many(&mut c, "rs", 0, 200);
    wait_drained(&mut c, "rs");
    let p = parse_maps(&ok(&mut c, &["STREAMWATCH.POOLS"]))
        .pop()
        .expect("pool");
    assert_eq!(get_int(&p, "done"), Some(200));
    assert_eq!(get_int(&p, "restarts"), Some(0));
}

/// Workers of a pool that no watch uses any more finish (their stdin is closed).
#[test]
fn idle_workers_finish_when_no_watch_uses_their_pool() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 2, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "iq", "pw", &["CONCURRENCY", "2"]);
    xadd_many(&mut c, "iq", 0, 10);
    wait_drained(&mut c, "iq");
    assert!(stat(&mut c, "workers") >= 1);
    ok(&mut c, &["STREAMWATCH.UNWATCH", "iq"]);
    wait_until("the idle workers gone", WAIT, || {
        stat(&mut c, "workers") == 0 && s.tagged_procs().is_empty()
    });
    assert_eq!(
        stat(&mut c, "restarts"),
        0,
        "finishing unused is no failure"
    );
}

/// A worker that exits 0 while it has an entry has not answered: the attempt fails.
#[test]
fn a_worker_that_exits_0_without_answering_fails_its_entry() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "zq", "pw", &[]);
    let id = xadd(&mut c, "zq", &[("mode", "quit")]);
    wait_drained(&mut c, "zq");
    let ran: Vec<_> = done(dir.path()).into_iter().filter(|r| r.0 == id).collect();
    assert_eq!(ran.len(), 2, "run again after the worker quit: {ran:?}");
    let exited = events_named(&mut c, "exited");
    assert!(
        exited.iter().any(|e| e.get("error").map(String::as_str)
            == Some("the pool worker exited (code 0) before answering")),
        "{exited:?}"
    );
}

/// What a worker prints while it has an entry is that entry's log, and replies never
/// cost anyone's output (they once made the module drop every job's output).
#[test]
fn a_workers_output_is_its_entrys_log() {
    let dir = TempDir::new();
    let toml = format!(
        "{}{}",
        pool_handler(dir.path(), 1, ""),
        long_handler("w", "")
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "lq", "pw", &[]);
    xadd_many(&mut c, "lq", 0, 20);
    wait_drained(&mut c, "lq");
    let id = xadd(&mut c, "lq", &[("mode", "printslow")]);
    let log = wait_for("the entry's log", WAIT, || {
        let j = job(&mut c, "lq", &id)?;
        let log: Vec<String> = to_array(&j["log"]).iter().map(vstr).collect();
        log.contains(&format!("to stdout {id}")).then_some(log)
    });
    assert_eq!(log, [format!("to stdout {id}")]);
    ok(&mut c, &["STREAMWATCH.WATCH", "lh", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "lh", "f", "v"]);
    wait_until("a hash job's log after pool replies", WAIT, || {
        job_log(&mut c, "lh", "f")
            .iter()
            .any(|l| l.starts_with("start"))
    });
    let status = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(
        get_int(&to_map(&status["counters"]), "output_dropped"),
        Some(0)
    );
}

/// An entry too long for a worker (or for the helper, for a process per entry) fails
/// its attempts with a reason; the helper and every other job are not disturbed.
#[test]
fn an_entry_too_long_fails_without_harming_the_helper() {
    let dir = TempDir::new();
    let toml = format!(
        "{}{}",
        pool_handler(dir.path(), 1, ""),
        long_handler("w", "")
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "bh", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "bh", "f", "v"]);
    let worker = running_pid(&mut c, "bh", "f");
    let helper = s.helper().expect("a helper");
    watch_stream_opts(&mut c, "big", "pw", &["MAX-ATTEMPTS", "1"]);
    let huge = "x".repeat(40 << 20);
    let id = xadd(&mut c, "big", &[("f", &huge)]);
    let fine = xadd(&mut c, "big", &[("n", "1")]);
    wait_drained(&mut c, "big");
    let dead = stream_entries(&mut c, "big:dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], id);
    assert!(
        dead[0]["error"].contains("as a JSON line; a pool worker takes at most"),
        "{}",
        dead[0]["error"]
    );
    assert!(done(dir.path()).iter().any(|r| r.0 == fine));
    assert_eq!(s.helper(), Some(helper), "the helper was never restarted");
    assert_eq!(
        running_pid(&mut c, "bh", "f"),
        worker,
        "the hash job was never disturbed"
    );
}

/// A recycled worker that does not finish when its stdin closes is stopped after the
/// grace: there are never more workers than the pool's size.
#[test]
fn a_recycled_worker_that_lingers_is_stopped() {
    let dir = TempDir::new();
    let extra = "max-requests = 1\nstop-grace-ms = 200";
    let toml = pool_handler(dir.path(), 2, extra)
        .replace("env = { D = ", "env = { AFTER = \"sleep 1000\", D = ");
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "gq", "pw", &["CONCURRENCY", "2"]);
    xadd_many(&mut c, "gq", 0, 8);
    while !drained(&mut c, "gq", "streamwatch") {
        let workers = stat(&mut c, "workers");
        assert!(workers <= 2, "{workers} workers in a pool of 2");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let p = pool(&mut c); // one reply: a worker may end between two
    let (recycled, workers) = (get_int(&p, "recycled"), get_int(&p, "workers"));
    assert_eq!(recycled.zip(workers).map(|(r, w)| r + w), Some(8), "{p:?}");
    wait_until("the lingering workers stopped", WAIT, || {
        s.tagged_procs().len() <= 2
    });
}

/// The module and the helper read a reply line with the same reader (`src/reply.rs`):
/// an answer with a field the reader skips unchecked (bytes that are not UTF-8 here) is
/// an answer to both, so the entry held for the worker is given to it.
#[test]
fn an_answer_with_a_non_utf8_extra_field_does_not_wedge_the_worker() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "uq", "pw", &[]);
    let first = xadd(&mut c, "uq", &[("mode", "latin1")]);
    let rest = xadd_many(&mut c, "uq", 0, 2);
    wait_drained(&mut c, "uq");
    let order: Vec<String> = done(dir.path()).into_iter().map(|r| r.0).collect();
    assert_eq!(order, [vec![first], rest].concat());
}

/// A worker that answers its entry and exits (it was told to stop, or decided to)
/// never had its held next entry: that entry must not lose an attempt.
#[test]
fn the_next_entry_of_a_worker_that_exits_after_answering_keeps_its_attempt() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "xq",
        "pw",
        &["CONCURRENCY", "2", "MAX-ATTEMPTS", "1"],
    );
    let first = xadd(&mut c, "xq", &[("mode", "answerexit")]);
    let next = xadd(&mut c, "xq", &[("mode", "none")]);
    wait_drained(&mut c, "xq");
    let ran = done(dir.path());
    assert!(ran.iter().any(|r| r.0 == first), "{ran:?}");
    assert_eq!(
        attempts(&ran, &next),
        [1],
        "the next entry runs once, as attempt 1: {ran:?}"
    );
    assert!(
        stream_entries(&mut c, "xq:dead").is_empty(),
        "dead-lettered unrun"
    );
}

/// An entry times out; its worker, stopped, finishes it gracefully and exits. The
/// timeout is that entry's: the next entry held for the worker must not fail for it.
#[test]
fn a_timeout_does_not_fail_the_next_entry_held_for_the_worker() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "timeout-ms = 300\nstop-grace-ms = 5000");
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "tq",
        "pw",
        &["CONCURRENCY", "2", "MAX-ATTEMPTS", "1"],
    );
    let _slow = xadd(&mut c, "tq", &[("mode", "graceful")]);
    let next = xadd(&mut c, "tq", &[("mode", "none")]);
    wait_drained(&mut c, "tq");
    let ran = done(dir.path());
    let dead = stream_entries(&mut c, "tq:dead");
    assert!(
        !dead.iter().any(|e| e.get("id") == Some(&next)),
        "the next entry, never run, dead-lettered: {dead:?} (ran {ran:?})"
    );
    assert!(ran.iter().any(|r| r.0 == next), "{ran:?}");
}

/// PAUSE stops the workers; one that still finishes its entry in its stop grace must
/// not be given the next entry held for it (it would run while paused). Before the
/// helper held entries, a stopping worker was given nothing more.
#[test]
fn a_worker_stopped_by_pause_is_not_given_its_held_next_entry() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "stop-grace-ms = 4000");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "hq", "pw", &["CONCURRENCY", "2"]);
    let first = xadd(&mut c, "hq", &[("mode", "stubborn")]);
    wait_until("the first entry in its worker", WAIT, || {
        done(dir.path()).iter().any(|r| r.0 == first)
    });
    let next = xadd(&mut c, "hq", &[("mode", "none")]);
    wait_for("the next entry held for the busy worker", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "hq"])
            .into_iter()
            .find(|j| get_str(j, "id") == next && get_str(j, "state") == "starting")
    });
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let ran = done(dir.path());
    assert!(
        !ran.iter().any(|r| r.0 == next),
        "the held entry ran while paused: {ran:?}"
    );
}

/// Review 2: with CONCURRENCY 1 (the default) the next entry waits in its queue, not in
/// the worker; when a worker answers and exits at once (as `answerexit` does), the
/// module gives that waiting entry to the worker it believes idle, and the helper,
/// which has reaped it already, drops the `Feed` silently (unknown run). The worker's
/// exit then fails an entry it never saw: with MAX-ATTEMPTS 1 it is dead-lettered
/// unrun. (The CONCURRENCY 2 case, where the entry is a held `next`, is the test
/// above and passes.)
#[test]
fn an_entry_given_to_a_worker_that_already_exited_keeps_its_attempt() {
    let dir = TempDir::new();
    let s = pool_server(&dir, 1, "");
    let mut c = s.conn();
    watch_stream_opts(&mut c, "eq", "pw", &["MAX-ATTEMPTS", "1"]);
    let first = xadd(&mut c, "eq", &[("mode", "answerexit")]);
    wait_until("the first entry in its worker", WAIT, || {
        done(dir.path()).iter().any(|r| r.0 == first)
    });
    let next = xadd(&mut c, "eq", &[("mode", "none")]);
    wait_drained(&mut c, "eq");
    let ran = done(dir.path());
    let dead = stream_entries(&mut c, "eq:dead");
    assert!(
        !dead.iter().any(|e| e.get("id") == Some(&next)),
        "dead-lettered without ever running: {dead:?} (ran {ran:?})"
    );
    assert_eq!(attempts(&ran, &next), [1], "{ran:?}");
}
