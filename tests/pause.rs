//! `STREAMWATCH.PAUSE pattern` / `RESUME pattern`: one watch (config-file or command)
//! paused while the others run. Its hash jobs stop and changes to its keys are ignored;
//! a paused stream watch reads nothing, and the entries it was running stay pending and
//! run again on resume. The paused state is data (`streamwatch:paused`), so it survives
//! a restart (RDB, AOF), `DEBUG RELOAD` and a failover to a replica.
//!
//! "Nothing happened" is never judged by waiting a while: a watch that is not paused,
//! changed after the paused one, is the barrier (the supervisor handles changes in
//! order), and `STREAMWATCH.RECONCILE` answers only after everything sent before it.

mod common;

use common::*;
use std::path::Path;

const PAUSED_KEY: &str = "streamwatch:paused";

/// Handler `w` (hash, long-running), config watch `cfg:*`, and `s` (stream: appends
/// `<key> <id>` to `$D/done`; while `$D/hold` exists it first appends it to
/// `$D/started` and waits for `$D/hold` to go).
fn config(dir: &Path) -> String {
    let script = r#"if [ -e "$D/hold" ]; then echo "$2 $1" >> "$D/started"; while [ -e "$D/hold" ]; do sleep 0.05; done; fi; echo "$2 $1" >> "$D/done""#;
    format!(
        "{}\n{}\n[handler.s]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\", \"{{key}}\"]\nenv = {{ D = \"{}\" }}\n",
        long_handler("w", ""),
        watch_toml("cfg:*", "w", None),
        dir.display()
    )
}

fn start(dir: &std::sync::Arc<TempDir>) -> Server {
    Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start()
}

fn paused(c: &mut redis::Connection, pattern: &str) -> i64 {
    get_int(&watch_map(c, pattern), "paused").expect("paused is 0 or 1")
}

/// `paused`/`resumed` events about one watch.
fn watch_events(c: &mut redis::Connection, event: &str, pattern: &str) -> usize {
    events(c)
        .iter()
        .filter(|e| e.get("event").map(String::as_str) == Some(event))
        .filter(|e| e.get("watch").map(String::as_str) == Some(pattern))
        .count()
}

/// Returns once the supervisor has handled everything sent before.
fn barrier(c: &mut redis::Connection) {
    ok(c, &["STREAMWATCH.RECONCILE"]);
}

#[test]
fn pausing_one_watch_stops_only_its_jobs_until_resumed() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "cfg:a", "f", "1"]);
    ok(&mut c, &["HSET", "cmd:a", "g", "1"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1"), ("cmd:a", "g", "1")]);
    assert_eq!(paused(&mut c, "cmd:*"), 0);

    // A command watch.
    ok(&mut c, &["STREAMWATCH.PAUSE", "cmd:*"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1")]);
    assert_eq!(paused(&mut c, "cmd:*"), 1);
    assert_eq!(paused(&mut c, "cfg:*"), 0);
    assert_eq!(get_int(&watch_map(&mut c, "cmd:*"), "jobs"), Some(0));
    // Its keys' changes are ignored; the other watch, changed after them, runs.
    ok(&mut c, &["HSET", "cmd:a", "g", "2", "g2", "2"]);
    ok(&mut c, &["HSET", "cmd:b", "h", "3"]);
    ok(&mut c, &["HSET", "cfg:a", "f2", "2"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1"), ("cfg:a", "f2", "2")]);
    barrier(&mut c);
    assert!(jobs_filtered(&mut c, &["WATCH", "cmd:*"]).is_empty());
    // Only this watch: the node is not paused.
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(0));
    // Idempotent: a second PAUSE writes no second event.
    ok(&mut c, &["STREAMWATCH.PAUSE", "cmd:*"]);
    wait_eq("one paused event", WAIT, 1, || {
        watch_events(&mut c, "paused", "cmd:*")
    });
    assert_eq!(
        vint(&ok(&mut c, &["HEXISTS", PAUSED_KEY, "cmd:*"])),
        Some(1)
    );

    // A config watch, too; then both resume with what their keys hold now.
    ok(&mut c, &["STREAMWATCH.PAUSE", "cfg:*"]);
    assert_workers(&s, &mut c, &[]);
    ok(&mut c, &["STREAMWATCH.RESUME", "cmd:*"]);
    assert_workers(
        &s,
        &mut c,
        &[
            ("cmd:a", "g", "2"),
            ("cmd:a", "g2", "2"),
            ("cmd:b", "h", "3"),
        ],
    );
    ok(&mut c, &["STREAMWATCH.RESUME", "cfg:*"]);
    ok(&mut c, &["STREAMWATCH.RESUME", "cfg:*"]);
    let all = [
        ("cfg:a", "f", "1"),
        ("cfg:a", "f2", "2"),
        ("cmd:a", "g", "2"),
        ("cmd:a", "g2", "2"),
        ("cmd:b", "h", "3"),
    ];
    assert_workers(&s, &mut c, &all);
    assert_eq!(paused(&mut c, "cfg:*"), 0);
    assert_eq!(vint(&ok(&mut c, &["EXISTS", PAUSED_KEY])), Some(0));
    wait_eq("resumed events", WAIT, (1, 1), || {
        (
            watch_events(&mut c, "resumed", "cmd:*"),
            watch_events(&mut c, "resumed", "cfg:*"),
        )
    });
    // The node-wide pause is the same as before: no watch is marked, all stop.
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    assert_workers(&s, &mut c, &[]);
    assert_eq!(paused(&mut c, "cmd:*"), 0);
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    assert_workers(&s, &mut c, &all);
}

#[test]
fn the_paused_key_is_data_followed_like_the_store() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    // A watch on every key of the module's own names watches neither store.
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "streamwatch:*", "HANDLER", "w"],
    );
    ok(&mut c, &["HSET", "cfg:a", "f", "1"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1")]);
    // Written by hand: the watch pauses, and resumes when the field goes.
    ok(
        &mut c,
        &["HSET", PAUSED_KEY, "cfg:*", "1", "no-such-watch", "1"],
    );
    wait_eq("cfg:* paused", WAIT, 1, || paused(&mut c, "cfg:*"));
    assert_workers(&s, &mut c, &[]);
    ok(&mut c, &["HDEL", PAUSED_KEY, "cfg:*"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1")]);
    barrier(&mut c);
    assert!(jobs_filtered(&mut c, &["KEY", PAUSED_KEY]).is_empty());

    // A field left for a pattern no watch has: a new WATCH of it runs (and drops it).
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "no-such-watch", "HANDLER", "w"],
    );
    assert_eq!(paused(&mut c, "no-such-watch"), 0);
    assert_eq!(
        vint(&ok(&mut c, &["HEXISTS", PAUSED_KEY, "no-such-watch"])),
        Some(0)
    );
    // REPLACE keeps a paused watch paused; UNWATCH takes its paused state with it.
    ok(&mut c, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "cmd:a", "g", "1"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1"), ("cmd:a", "g", "1")]);
    ok(&mut c, &["STREAMWATCH.PAUSE", "cmd:*"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1")]);
    ok(
        &mut c,
        &[
            "STREAMWATCH.WATCH",
            "cmd:*",
            "HANDLER",
            "w",
            "ONCHANGE",
            "ignore",
            "REPLACE",
        ],
    );
    assert_eq!(paused(&mut c, "cmd:*"), 1);
    barrier(&mut c);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1")]);
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.UNWATCH", "cmd:*"])),
        Some(0)
    );
    assert_eq!(
        vint(&ok(&mut c, &["HEXISTS", PAUSED_KEY, "cmd:*"])),
        Some(0)
    );
    ok(&mut c, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1"), ("cmd:a", "g", "1")]);
}

#[test]
fn a_paused_stream_watch_reads_nothing_until_resumed() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    watch_stream(&mut c, "q1", "s", 1);
    watch_stream(&mut c, "q2", "s", 1);
    let first = xadd(&mut c, "q1", &[("n", "0")]);
    wait_drained(&mut c, "q1");
    ok(&mut c, &["STREAMWATCH.PAUSE", "q1"]);
    let later = xadd_many(&mut c, "q1", 1, 3);
    let other = xadd(&mut c, "q2", &[("n", "9")]);
    wait_drained(&mut c, "q2");
    barrier(&mut c);
    let g = group_info(&mut c, "q1", "streamwatch");
    assert_eq!(g.get("last-delivered-id"), Some(&first), "{g:?}");
    assert_eq!(g.get("pending").map(String::as_str), Some("0"));
    let mut done = lines(&dir.path().join("done"));
    done.sort();
    assert_eq!(done, vec![format!("q1 {first}"), format!("q2 {other}")]);
    let w = watch_map(&mut c, "q1");
    assert_eq!(get_int(&w, "paused"), Some(1));
    assert_eq!(get_int(&w, "pending"), Some(-1), "not read while paused");

    ok(&mut c, &["STREAMWATCH.RESUME", "q1"]);
    wait_drained(&mut c, "q1");
    let done = lines(&dir.path().join("done"));
    for id in later.iter().chain([&first]) {
        let line = format!("q1 {id}");
        assert_eq!(
            done.iter().filter(|d| **d == line).count(),
            1,
            "{line}: {done:?}"
        );
    }
}

#[test]
fn a_running_stream_entry_is_stopped_and_runs_again_on_resume() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    watch_stream(&mut c, "q", "s", 1);
    let id = xadd(&mut c, "q", &[("n", "1")]);
    let running = wait_for("entry running", WAIT, || {
        let j = jobs_filtered(&mut c, &["WATCH", "q"]).pop()?;
        (get_str(&j, "state") == "running").then_some(j)
    });
    let pid = get_int(&running, "pid").unwrap() as u32;
    ok(&mut c, &["STREAMWATCH.PAUSE", "q"]);
    wait_gone("stopped run", &[pid]);
    wait_until("no job while paused", WAIT, || {
        jobs_filtered(&mut c, &["WATCH", "q"]).is_empty()
    });
    // Not acknowledged: still pending in the group, as under a node-wide PAUSE.
    let g = group_info(&mut c, "q", "streamwatch");
    assert_eq!(g.get("pending").map(String::as_str), Some("1"), "{g:?}");
    assert!(lines(&dir.path().join("done")).is_empty());

    std::fs::remove_file(&hold).unwrap();
    ok(&mut c, &["STREAMWATCH.RESUME", "q"]);
    wait_drained(&mut c, "q");
    assert_eq!(lines(&dir.path().join("started")), vec![format!("q {id}")]);
    assert_eq!(lines(&dir.path().join("done")), vec![format!("q {id}")]);
}

/// Pauses the config watch `cfg:*` and the command watch `cmd:*`, each with a key;
/// the command watch `on:*` keeps running.
fn pause_two(s: &Server) {
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    ok(&mut c, &["STREAMWATCH.WATCH", "on:*", "HANDLER", "w"]);
    ok(&mut c, &["STREAMWATCH.PAUSE", "cfg:*"]);
    ok(&mut c, &["STREAMWATCH.PAUSE", "cmd:*"]);
    ok(&mut c, &["HSET", "cfg:a", "f", "1"]);
    ok(&mut c, &["HSET", "cmd:a", "g", "1"]);
    ok(&mut c, &["HSET", "on:a", "h", "1"]);
    assert_workers(s, &mut c, &[("on:a", "h", "1")]);
}

/// The two watches are still paused: only `on:*` runs, even after a full reconcile;
/// resuming them starts their jobs.
fn assert_still_paused(s: &Server) {
    let mut c = s.conn();
    assert_workers(s, &mut c, &[("on:a", "h", "1")]);
    assert_eq!(paused(&mut c, "cfg:*"), 1);
    assert_eq!(paused(&mut c, "cmd:*"), 1);
    assert_eq!(paused(&mut c, "on:*"), 0);
    barrier(&mut c);
    assert_workers(s, &mut c, &[("on:a", "h", "1")]);
}

fn resume_two(s: &Server) {
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.RESUME", "cfg:*"]);
    ok(&mut c, &["STREAMWATCH.RESUME", "cmd:*"]);
    assert_workers(
        s,
        &mut c,
        &[("on:a", "h", "1"), ("cfg:a", "f", "1"), ("cmd:a", "g", "1")],
    );
}

#[test]
fn paused_survives_debug_reload_and_a_restart_from_rdb() {
    let dir = TempDir::new();
    {
        let s = start(&dir);
        pause_two(&s);
        let mut c = s.conn();
        let pids = job_pids(&mut c);
        ok(&mut c, &["DEBUG", "RELOAD"]);
        assert_still_paused(&s);
        assert_eq!(job_pids(&mut c), pids, "DEBUG RELOAD restarted nothing");
        ok(&mut c, &["SAVE"]);
    }
    let s = start(&dir);
    assert_still_paused(&s);
    resume_two(&s);
}

#[test]
fn paused_survives_a_restart_from_aof() {
    let dir = TempDir::new();
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    let boot = || {
        Server::builder(&config(dir.path()))
            .dir(dir.clone())
            .redis_args(&aof)
            .start()
    };
    {
        let s = boot();
        pause_two(&s);
    }
    let s = boot();
    assert_still_paused(&s);
    resume_two(&s);
}

#[test]
fn a_promoted_replica_keeps_the_watch_paused() {
    let p = start(&TempDir::new());
    let r = start(&TempDir::new());
    let mut rc = r.conn();
    replicate(&r, &p);
    pause_two(&p);
    wait_until("replica follows the paused watches", WAIT, || {
        parse_maps(&ok(&mut rc, &["STREAMWATCH.WATCHES"]))
            .iter()
            .filter(|w| get_int(w, "paused") == Some(1))
            .count()
            == 2
    });
    let e = err(&mut rc, &["STREAMWATCH.RESUME", "cmd:*"]);
    assert!(e.contains("replica"), "{e}");
    assert!(jobs(&mut rc).is_empty());

    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    assert_still_paused(&r);
    resume_two(&r);
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    for cmd in ["STREAMWATCH.PAUSE", "STREAMWATCH.RESUME"] {
        assert_eq!(
            err(&mut c, &[cmd, "nope:*"]),
            "ERR no watch with pattern 'nope:*' (pattern)"
        );
        let e = err(&mut c, &[cmd, "cfg:*", "extra"]);
        assert!(e.contains("wrong number of arguments"), "{e}");
    }
    // A long pattern is not echoed whole.
    let long = "x".repeat(100_000);
    let e = err(&mut c, &["STREAMWATCH.PAUSE", &long]);
    assert!(
        e.len() < 300 && e.ends_with("...' (pattern)"),
        "{}",
        &e[..100]
    );
    // A script may not write through it (EVAL_RO included).
    for eval in ["EVAL", "EVAL_RO"] {
        let e = err(
            &mut c,
            &[eval, "return redis.call('STREAMWATCH.PAUSE', 'cfg:*')", "0"],
        );
        assert!(e.contains("inside a script"), "{e}");
    }
    assert_eq!(vint(&ok(&mut c, &["EXISTS", PAUSED_KEY])), Some(0));
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(0));

    // The pattern form writes the paused watches key: a user who may not is refused.
    ok(
        &mut c,
        &["ACL", "SETUSER", "app", "on", ">pw", "~app:*", "+@all"],
    );
    let mut app = s.conn();
    ok(&mut app, &["AUTH", "app", "pw"]);
    let e = run(&mut app, &["STREAMWATCH.PAUSE", "cfg:*"]).unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    assert!(e.to_string().contains(PAUSED_KEY), "{e}");
    assert_eq!(paused(&mut c, "cfg:*"), 0);
}

/// A client that may write the paused key fills it with more fields than watches can
/// ever be: it is not read (a re-read per write would hold the main thread), the
/// watches stay as they were, and PAUSE pattern says why it cannot pause.
#[test]
fn a_paused_key_flooded_with_fields_is_not_read() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "cfg:a", "f", "1"]);
    let pid = running_pid(&mut c, "cfg:a", "f");

    let mut args: Vec<String> = vec!["HSET".into(), "flood".into(), "cfg:*".into(), "1".into()];
    for i in 0..10_001 {
        args.push(format!("junk{i}"));
        args.push("1".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&mut c, &args);
    ok(&mut c, &["RENAME", "flood", PAUSED_KEY]);
    ok(&mut c, &["HSET", PAUSED_KEY, "more", "1"]);
    // Ordered after the writes above: the watch was not paused, its job runs on.
    ok(&mut c, &["HSET", "cfg:a", "g", "2"]);
    running_pid(&mut c, "cfg:a", "g");
    assert_eq!(paused(&mut c, "cfg:*"), 0);
    assert_eq!(running_pid(&mut c, "cfg:a", "f"), pid);
    assert!(
        s.log().contains("more than 10000: not read"),
        "the log says why"
    );

    let e = err(&mut c, &["STREAMWATCH.PAUSE", "cfg:*"]);
    assert!(e.contains("more than 10000 fields"), "{e}");
    ok(&mut c, &["DEL", PAUSED_KEY]);
    ok(&mut c, &["STREAMWATCH.PAUSE", "cfg:*"]);
    wait_eq("cfg:* paused", WAIT, 1, || paused(&mut c, "cfg:*"));
}
