//! Stream watches: every entry added to a watched stream is a job, run at least once
//! through a consumer group, acknowledged on success, retried with backoff and
//! dead-lettered when it keeps failing, and claimed back after a crash or failover.
//! The handlers record what they ran in files; the tests compare those with the
//! stream, the group (XINFO/XPENDING) and the module's own view.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// A handler `name` running `/bin/sh -c script TAG {id} args...`, with `$D` set to `dir`.
fn handler(name: &str, dir: &Path, script: &str, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
    format!(
        "[handler.{name}]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"{args}]\nenv = {{ D = \"{}\" }}\n{extra}\n",
        dir.display()
    )
}

/// Appends each entry's id to `$D/done`.
fn recorder(dir: &Path, extra: &str) -> String {
    handler("rec", dir, r#"echo "$1" >> "$D/done""#, &[], extra)
}

/// `recorder`, half a second per entry: a run can be caught running.
fn slow_recorder(dir: &Path) -> String {
    handler("rec", dir, r#"sleep 0.5; echo "$1" >> "$D/done""#, &[], "")
}

/// PAUSE, then wait until the `running` entry's process and every job are gone.
fn pause_and_wait(c: &mut redis::Connection, running: &Map) {
    ok(c, &["STREAMWATCH.PAUSE"]);
    wait_gone("stopped run", &[get_int(running, "pid").unwrap() as u32]);
    wait_until("no job while paused", WAIT, || jobs(c).is_empty());
}

fn counter(c: &mut redis::Connection, pattern: &str, name: &str) -> i64 {
    get_int(&watch_map(c, pattern), name).unwrap_or(-1)
}

#[test]
fn backlog_and_new_entries_each_run_exactly_once() {
    let dir = TempDir::new();
    let s = Server::builder(&recorder(dir.path(), ""))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    // 500 entries are there before the watch, 1,500 come after.
    let mut added = xadd_many(&mut c, "jobs", 0, 500);
    watch_stream_opts(&mut c, "jobs", "rec", &["CONCURRENCY", "4"]);
    for i in 0..3 {
        added.extend(xadd_many(&mut c, "jobs", 500 + i * 500, 500));
    }
    wait_drained(&mut c, "jobs");
    let mut done = lines(&dir.path().join("done"));
    assert_eq!(done.len(), 2000, "every entry ran exactly once");
    done.sort();
    added.sort();
    assert_eq!(done, added);
    // Progress is the group's own state, and the module reports it.
    let g = group_info(&mut c, "jobs", "streamwatch");
    assert_eq!(g.get("pending").map(String::as_str), Some("0"));
    wait_eq("WATCHES acked", WAIT, 2000, || {
        counter(&mut c, "jobs", "acked")
    });
    wait_eq("WATCHES pending", WAIT, 0, || {
        counter(&mut c, "jobs", "pending")
    });
    let w = watch_map(&mut c, "jobs");
    assert_eq!(get_str(&w, "type"), "stream");
    assert_eq!(get_int(&w, "lag"), Some(0));
    assert_eq!(get_int(&w, "retried"), Some(0));
    assert_eq!(get_int(&w, "dead-lettered"), Some(0));
    let o = to_map(&w["options"]);
    assert_eq!(get_str(&o, "group"), "streamwatch");
    assert_eq!(get_int(&o, "concurrency"), Some(4));
    assert_eq!(get_int(&o, "max-attempts"), Some(5));
    let acked = events(&mut c)
        .into_iter()
        .filter(|e| e["event"] == "acked" && e["key"] == "jobs")
        .count();
    assert!(acked > 0, "acked events are written");
}

#[test]
fn concurrency_one_runs_entries_in_stream_order() {
    let dir = TempDir::new();
    let toml = format!(
        "{}[[watch]]\npattern = \"ord:*\"\nhandler = \"rec\"\ntype = \"stream\"\n",
        recorder(dir.path(), "")
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let mut added = Vec::new();
    for i in 0..10 {
        added.extend(xadd_many(&mut c, "ord:a", i * 5, 5));
    }
    wait_drained(&mut c, "ord:a");
    assert_eq!(lines(&dir.path().join("done")), added);
}

#[test]
fn concurrency_four_runs_four_at_once() {
    let dir = TempDir::new();
    let script =
        r#"echo "$(date +%s%N) 1" >> "$D/spans"; sleep 0.4; echo "$(date +%s%N) -1" >> "$D/spans""#;
    let s = Server::builder(&handler("slow", dir.path(), script, &[], ""))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    xadd_many(&mut c, "par", 0, 12);
    watch_stream_opts(&mut c, "par", "slow", &["CONCURRENCY", "4"]);
    // JOBS shows the entries in flight, never more than CONCURRENCY.
    let in_flight = wait_for("entries in flight", WAIT, || {
        let j = jobs_filtered(&mut c, &["KEY", "par"]);
        (!j.is_empty()).then_some(j)
    });
    assert!(in_flight.len() <= 4, "{in_flight:?}");
    for j in &in_flight {
        assert!(j.contains_key("id") && !j.contains_key("field"), "{j:?}");
        assert_eq!(get_str(j, "watch"), "par");
    }
    wait_drained(&mut c, "par");
    // Sweep the start (+1) and end (-1) marks: the most runs alive at one time.
    let mut marks: Vec<(u128, i32)> = lines(&dir.path().join("spans"))
        .iter()
        .map(|l| {
            let (t, d) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), d.parse().unwrap())
        })
        .collect();
    assert_eq!(marks.len(), 24);
    marks.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in marks {
        now += d;
        most = most.max(now);
    }
    assert!((2..=4).contains(&most), "runs overlapped {most} at most");
}

#[test]
fn failing_entries_are_retried_then_dead_lettered() {
    let dir = TempDir::new();
    let script = r#"case "$2" in
        ok) exit 0 ;;
        once) [ -e "$D/m.$1" ] && exit 0; touch "$D/m.$1"; exit 1 ;;
        *) echo "boom $1"; exit 3 ;;
    esac"#;
    let toml = handler(
        "flaky",
        dir.path(),
        script,
        &["{field:mode}"],
        "backoff-initial-ms = 10",
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "dq*", "flaky", &["MAX-ATTEMPTS", "3"]);
    xadd(&mut c, "dq1", &[("mode", "ok")]);
    xadd(&mut c, "dq1", &[("mode", "once")]);
    let bad = xadd(&mut c, "dq1", &[("mode", "bad"), ("extra", "x y")]);
    wait_drained(&mut c, "dq1");
    // The dead-letter stream has the entry's fields plus why it failed.
    let dead = wait_for("dead-lettered entry", WAIT, || {
        stream_entries(&mut c, "dq1:dead").pop()
    });
    assert_eq!(dead["mode"], "bad");
    assert_eq!(dead["extra"], "x y");
    assert_eq!(dead["id"], bad);
    assert_eq!(dead["attempts"], "3");
    assert_eq!(dead["error"], "exit code 3");
    assert_eq!(dead["last_exit"], "3");
    // And the evidence: its last output lines, and who failed it.
    assert!(dead["output"].ends_with(&format!("boom {bad}")), "{dead:?}");
    assert_eq!(dead["watch"], "dq*");
    assert_eq!(dead["group"], "streamwatch");
    assert_eq!(dead["handler"], "flaky");
    assert_eq!(stream_entries(&mut c, "dq1:dead").len(), 1);
    wait_eq("WATCHES counters", WAIT, (2, 3, 1), || {
        (
            counter(&mut c, "dq*", "acked"),
            counter(&mut c, "dq*", "retried"),
            counter(&mut c, "dq*", "dead-lettered"),
        )
    });
    let of = |c: &mut redis::Connection, ev: &str| {
        events(c)
            .into_iter()
            .filter(|e| e["event"] == ev && e["key"] == "dq1")
            .collect::<Vec<_>>()
    };
    wait_eq("dead-lettered event", WAIT, 1, || {
        of(&mut c, "dead-lettered").len()
    });
    assert_eq!(of(&mut c, "dead-lettered")[0]["id"], bad);
    assert_eq!(of(&mut c, "backoff").len(), 3);
    assert_eq!(of(&mut c, "acked").len(), 2);
    // The dead-letter stream matches the pattern but is never a queue itself.
    assert!(group_info(&mut c, "dq1:dead", "streamwatch").is_empty());
}

#[test]
fn a_run_past_timeout_fails() {
    let dir = TempDir::new();
    let toml = handler(
        "slow",
        dir.path(),
        "sleep 30",
        &[],
        "timeout-ms = 300\nstop-grace-ms = 1000",
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "to",
        "slow",
        &["MAX-ATTEMPTS", "1", "DEADLETTER", "to-failed"],
    );
    let id = xadd(&mut c, "to", &[("a", "1")]);
    let dead = wait_for("timed-out entry dead-lettered", WAIT, || {
        stream_entries(&mut c, "to-failed").pop()
    });
    assert_eq!(dead["id"], id);
    assert_eq!(dead["error"], "timed out after 300 ms");
    assert_eq!(dead["last_exit"], "-15", "stopped with the stop signal");
    wait_drained(&mut c, "to");
}

#[test]
fn entry_reaches_the_handler_as_json_and_placeholders() {
    let dir = TempDir::new();
    let script = r#"cat > "$D/in.$1"; printf %s "$2" > "$D/arg.$1"; printf %s "$STREAMWATCH_ID $STREAMWATCH_KEY $STREAMWATCH_DB" > "$D/env.$1""#;
    let toml = handler("show", dir.path(), script, &["{field:url}"], "");
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn_db(2);
    watch_stream_opts(&mut c, "j", "show", &[]);
    let url = "a b;$(touch x)\"q`\n";
    let id = xadd(&mut c, "j", &[("url", url), ("n", "1")]);
    wait_drained(&mut c, "j");
    let read = |name: &str| std::fs::read(dir.path().join(format!("{name}.{id}"))).unwrap();
    assert_eq!(
        String::from_utf8(read("in")).unwrap(),
        "{\"url\":\"a b;$(touch x)\\\"q`\\n\",\"n\":\"1\"}\n"
    );
    assert_eq!(read("arg"), url.as_bytes());
    assert_eq!(read("env"), format!("{id} j 2").as_bytes());
    assert!(
        !dir.path().join("x").exists(),
        "nothing ran through a shell"
    );
}

#[test]
fn kill9_mid_run_then_restart_loses_nothing() {
    let dir = TempDir::new();
    let toml = handler(
        "rec",
        dir.path(),
        r#"sleep 0.05; echo "$1" >> "$D/done""#,
        &[],
        "",
    );
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let added = {
        let mut s = Server::builder(&toml)
            .dir(dir.clone())
            .redis_args(&args)
            .start();
        let mut c = s.conn();
        watch_stream_opts(&mut c, "crash", "rec", &["CONCURRENCY", "2"]);
        let added = xadd_many(&mut c, "crash", 0, 60);
        wait_until("some entries done", WAIT, || {
            lines(&dir.path().join("done")).len() >= 10
        });
        s.kill9();
        added
    };
    let done_before = lines(&dir.path().join("done")).len();
    assert!(
        done_before < 60,
        "the crash came mid-way ({done_before} done)"
    );
    let s = Server::builder(&toml)
        .dir(dir.clone())
        .redis_args(&args)
        .start();
    let mut c = s.conn();
    wait_drained(&mut c, "crash");
    let done: BTreeSet<String> = lines(&dir.path().join("done")).into_iter().collect();
    let added: BTreeSet<String> = added.into_iter().collect();
    assert_eq!(done, added, "every entry ran at least once");
    assert!(stream_entries(&mut c, "crash:dead").is_empty());
}

#[test]
fn entries_added_while_paused_run_after_resume() {
    let dir = TempDir::new();
    let s = Server::builder(&slow_recorder(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "pq", "rec", &[]);
    let a = xadd(&mut c, "pq", &[("n", "a")]);
    let running = wait_for("first entry running", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "pq", "STATE", "running"]).pop()
    });
    assert_eq!(get_str(&running, "id"), a);
    // PAUSE stops the run; its entry stays pending in the group.
    pause_and_wait(&mut c, &running);
    let b = xadd(&mut c, "pq", &[("n", "b")]);
    let d = xadd(&mut c, "pq", &[("n", "c")]);
    assert!(lines(&dir.path().join("done")).is_empty());
    let g = group_info(&mut c, "pq", "streamwatch");
    assert_eq!(g.get("pending").map(String::as_str), Some("1"), "{g:?}");
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    wait_drained(&mut c, "pq");
    assert_eq!(lines(&dir.path().join("done")), vec![a, b, d]);
}

/// An entry read ahead (pending for the module, not started) is not lost and does not
/// run twice when the queue stops: PAUSE drops it, RESUME claims it back with the
/// stopped one, and every entry runs once, in stream order (CONCURRENCY 1).
#[test]
fn entries_read_ahead_are_claimed_back_after_pause() {
    let dir = TempDir::new();
    let s = Server::builder(&slow_recorder(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| xadd(&mut c, "ra", &[("n", n)]))
        .collect();
    watch_stream_opts(&mut c, "ra", "rec", &[]);
    let running = wait_for("first entry running", WAIT, || {
        jobs_filtered(&mut c, &["KEY", "ra", "STATE", "running"]).pop()
    });
    assert_eq!(get_str(&running, "id"), ids[0]);
    // One runs, one more is read ahead: two pending, one job.
    let g = group_info(&mut c, "ra", "streamwatch");
    assert_eq!(g.get("pending").map(String::as_str), Some("2"), "{g:?}");
    assert_eq!(jobs(&mut c).len(), 1);
    pause_and_wait(&mut c, &running);
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    wait_drained(&mut c, "ra");
    assert_eq!(lines(&dir.path().join("done")), ids);
}

#[test]
fn replica_runs_nothing_and_promotion_claims_pending_entries() {
    let out = TempDir::new();
    let script = r#"[ "$2" = slow ] && sleep 2; echo "$0 $1" >> "$D/done""#;
    let toml = format!(
        "{}[[watch]]\npattern = \"rq\"\nhandler = \"h\"\ntype = \"stream\"\n",
        handler("h", out.path(), script, &["{field:mode}"], "")
    );
    let mut p = Server::start(&toml);
    let r = Server::start(&toml);
    let (mut pc, mut rc) = (p.conn(), r.conn());
    replicate(&r, &p);
    // Each entry has the field the handler names (one without it would not run).
    let added: Vec<String> = (0..20)
        .map(|i| xadd(&mut pc, "rq", &[("mode", "fast"), ("n", &i.to_string())]))
        .collect();
    wait_drained(&mut pc, "rq");
    wait_drained(&mut rc, "rq");
    let done = lines(&out.path().join("done"));
    assert_eq!(done.len(), 20);
    for (line, id) in done.iter().zip(&added) {
        assert_eq!(line, &format!("{} {id}", p.tag()), "run by the primary");
    }
    // An entry in flight on the primary when it dies is run by the promoted replica.
    let slow = xadd(&mut pc, "rq", &[("mode", "slow")]);
    wait_until("slow entry pending on the replica too", WAIT, || {
        group_info(&mut rc, "rq", "streamwatch")
            .get("pending")
            .map(String::as_str)
            == Some("1")
    });
    p.kill9();
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    wait_drained(&mut rc, "rq");
    let done = lines(&out.path().join("done"));
    assert_eq!(
        done.last(),
        Some(&format!("{} {slow}", r.tag())),
        "{done:?}"
    );
}

#[test]
fn stream_options_are_checked() {
    let s = Server::start(&handler("w", Path::new("/tmp"), "true", &[], ""));
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    // A bad stream option: the error names it.
    for (opt, value) in [
        ("CONCURRENCY", "0"),
        ("MAX-ATTEMPTS", "-1"),
        ("GROUP", ""),
        ("ONCHANGE", "ignore"),
    ] {
        let e = err(
            &mut c,
            &[w, "s", "HANDLER", "w", "TYPE", "stream", opt, value],
        );
        assert!(e.contains(opt), "{e}");
    }
    let e = err(&mut c, &[w, "s", "HANDLER", "w", "DEADLETTER", "d"]);
    assert!(e.contains("DEADLETTER") && e.contains("stream"), "{e}");
    let e = err(&mut c, &[w, "s", "HANDLER", "w", "TYPE", "list"]);
    assert!(e.contains("TYPE"), "{e}");
    // A stream watch with every option is stored with them.
    watch_stream_opts(
        &mut c,
        "s",
        "w",
        &[
            "GROUP",
            "g",
            "CONCURRENCY",
            "3",
            "MAX-ATTEMPTS",
            "2",
            "DEADLETTER",
            "s-dead",
        ],
    );
    let o = to_map(&watch_map(&mut c, "s")["options"]);
    assert_eq!(get_str(&o, "group"), "g");
    assert_eq!(get_int(&o, "concurrency"), Some(3));
    assert_eq!(get_int(&o, "max-attempts"), Some(2));
    assert_eq!(get_str(&o, "deadletter"), "s-dead");
    let stored = vstr(&ok(&mut c, &["HGET", "streamwatch:watches", "s"]));
    assert!(stored.contains("concurrency = 3"), "{stored}");
    // In the config file, a bad option refuses the load naming the line.
    let bad = format!(
        "{}[[watch]]\npattern = \"x\"\nhandler = \"w\"\ntype = \"stream\"\nconcurrency = 0\n",
        long_handler("w", "")
    );
    let log = Server::start_expect_failure(&bad);
    assert!(
        log.contains("concurrency must be a positive integer"),
        "{log}"
    );
}

/// The server's memory with the module's: Redis's `used_memory` plus what the module
/// holds outside it (`streamwatch_memory`, the system allocator's).
fn used_memory(c: &mut redis::Connection) -> i64 {
    let module: i64 = info(c, "streamwatch")["streamwatch_memory"]
        .parse()
        .unwrap();
    info(c, "memory")["used_memory"].parse::<i64>().unwrap() + module
}

#[test]
fn a_million_entry_backlog_is_read_only_as_fast_as_it_runs() {
    let dir = TempDir::new();
    let toml = handler("slow", dir.path(), "sleep 60", &[], "");
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    for chunk in 0..100 {
        xadd_many(&mut c, "big", chunk * 10_000, 10_000);
    }
    assert_eq!(vint(&ok(&mut c, &["XLEN", "big"])), Some(1_000_000));
    let before = used_memory(&mut c);
    watch_stream_opts(&mut c, "big", "slow", &["CONCURRENCY", "8"]);
    wait_until("8 entries running", WAIT, || {
        jobs_filtered(&mut c, &["STATE", "running"]).len() == 8
    });
    // Only what runs is read, and as many more ahead: 16 entries pending, the rest
    // still waits in the stream.
    wait_until("8 more entries read ahead", WAIT, || {
        group_info(&mut c, "big", "streamwatch")
            .get("pending")
            .is_some_and(|p| p == "16")
    });
    wait_eq("lag reported", WAIT, 1_000_000 - 16, || {
        counter(&mut c, "big", "lag")
    });
    let grown = used_memory(&mut c) - before;
    assert!(
        grown < 2 * 1024 * 1024,
        "memory grew by {grown} bytes with a 1M backlog"
    );
    assert_eq!(jobs(&mut c).len(), 8);
}

#[test]
fn start_dollar_skips_the_backlog_and_an_id_starts_after_it() {
    let dir = TempDir::new();
    let s = Server::builder(&recorder(dir.path(), ""))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    // START $: the 5 entries already there never run, the 3 added after do.
    xadd_many(&mut c, "news", 0, 5);
    watch_stream_opts(&mut c, "news", "rec", &["START", "$"]);
    wait_until("the group exists", WAIT, || {
        !group_info(&mut c, "news", "streamwatch").is_empty()
    });
    let new = xadd_many(&mut c, "news", 5, 3);
    wait_drained(&mut c, "news");
    assert_eq!(lines(&dir.path().join("done")), new);
    let o = to_map(&watch_map(&mut c, "news")["options"]);
    assert_eq!(get_str(&o, "start"), "$");
    let stored = vstr(&ok(&mut c, &["HGET", "streamwatch:watches", "news"]));
    assert!(stored.contains("start = \"$\""), "{stored}");
    // START <id>: the entries after that id run.
    let old = xadd_many(&mut c, "later", 0, 6);
    watch_stream_opts(&mut c, "later", "rec", &["START", &old[2]]);
    wait_drained(&mut c, "later");
    let done = lines(&dir.path().join("done"));
    assert_eq!(done[3..], old[3..]);
    // The default is 0: the whole backlog.
    let o = to_map(&watch_map(&mut c, "later")["options"]);
    assert_eq!(get_str(&o, "start"), old[2]);
    watch_stream_opts(&mut c, "all", "rec", &[]);
    let o = to_map(&watch_map(&mut c, "all")["options"]);
    assert_eq!(get_str(&o, "start"), "0");
}

#[test]
fn a_bad_start_is_an_error_naming_start() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    for value in ["x", "1-2-3", "-", "1-", "+", "18446744073709551616", ""] {
        let e = err(
            &mut c,
            &[w, "s", "HANDLER", "w", "TYPE", "stream", "START", value],
        );
        assert!(
            e.starts_with("ERR START must be 0, $ or a stream entry id"),
            "{value}: {e}"
        );
    }
    let e = err(&mut c, &[w, "s", "HANDLER", "w", "START", "$"]);
    assert!(e.contains("START applies only to TYPE stream"), "{e}");
    let bad = format!(
        "{}[[watch]]\npattern = \"x\"\nhandler = \"w\"\ntype = \"stream\"\nstart = \"later\"\n",
        long_handler("w", "")
    );
    let log = Server::start_expect_failure(&bad);
    assert!(log.contains("start must be 0, \"$\""), "{log}");
}

#[test]
fn ack_delete_removes_acked_and_dead_lettered_entries_and_keep_leaves_them() {
    let dir = TempDir::new();
    let script = r#"[ "$2" = ok ] && exit 0; echo "boom $1"; exit 3"#;
    let toml = handler("fl", dir.path(), script, &["{field:mode}"], "");
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let xlen = |c: &mut redis::Connection, key: &str| vint(&ok(c, &["XLEN", key])).unwrap();
    // ACK delete: the entry that succeeds and the one dead-lettered both leave the stream.
    let opts = ["MAX-ATTEMPTS", "1", "ACK", "delete"];
    watch_stream_opts(&mut c, "gone", "fl", &opts);
    xadd(&mut c, "gone", &[("mode", "ok")]);
    let bad = xadd(&mut c, "gone", &[("mode", "bad")]);
    let dead = wait_for("dead-lettered entry", WAIT, || {
        stream_entries(&mut c, "gone:dead").pop()
    });
    assert_eq!(dead["id"], bad);
    assert_eq!(dead["mode"], "bad");
    wait_eq("XLEN gone", WAIT, 0, || xlen(&mut c, "gone"));
    wait_eq("WATCHES counters", WAIT, (1, 1), || {
        (
            counter(&mut c, "gone", "acked"),
            counter(&mut c, "gone", "dead-lettered"),
        )
    });
    let g = group_info(&mut c, "gone", "streamwatch");
    assert_eq!(g.get("pending").map(String::as_str), Some("0"), "{g:?}");
    assert_eq!(stream_entries(&mut c, "gone:dead").len(), 1);
    let o = to_map(&watch_map(&mut c, "gone")["options"]);
    assert_eq!(get_str(&o, "ack"), "delete");
    let stored = vstr(&ok(&mut c, &["HGET", "streamwatch:watches", "gone"]));
    assert!(stored.contains("ack = \"delete\""), "{stored}");
    // The default, keep: both entries stay in the stream.
    watch_stream_opts(&mut c, "kept", "fl", &["MAX-ATTEMPTS", "1"]);
    xadd(&mut c, "kept", &[("mode", "ok")]);
    let bad = xadd(&mut c, "kept", &[("mode", "bad")]);
    wait_drained(&mut c, "kept");
    let dead = wait_for("dead-lettered entry", WAIT, || {
        stream_entries(&mut c, "kept:dead").pop()
    });
    assert_eq!(dead["id"], bad);
    assert_eq!(xlen(&mut c, "kept"), 2);
    let o = to_map(&watch_map(&mut c, "kept")["options"]);
    assert_eq!(get_str(&o, "ack"), "keep");
    let stored = vstr(&ok(&mut c, &["HGET", "streamwatch:watches", "kept"]));
    assert!(!stored.contains("ack"), "{stored}");
}

#[test]
fn a_bad_ack_is_an_error_naming_ack() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    for value in ["drop", "", "deleted", "1"] {
        let e = err(
            &mut c,
            &[w, "s", "HANDLER", "w", "TYPE", "stream", "ACK", value],
        );
        assert_eq!(e, format!("ERR ACK must be keep or delete, got '{value}'"));
    }
    let e = err(&mut c, &[w, "s", "HANDLER", "w", "ACK", "delete"]);
    assert!(e.contains("ACK applies only to TYPE stream"), "{e}");
    let bad = format!(
        "{}[[watch]]\npattern = \"x\"\nhandler = \"w\"\ntype = \"stream\"\nack = \"drop\"\n",
        long_handler("w", "")
    );
    let log = Server::start_expect_failure(&bad);
    assert!(log.contains("ack must be \"keep\" or \"delete\""), "{log}");
}

#[test]
fn a_second_watch_on_the_same_streams_and_group_is_refused() {
    let dir = TempDir::new();
    let toml = format!("{}{}", recorder(dir.path(), ""), long_handler("w", ""));
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    watch_stream_opts(&mut c, "q:*", "rec", &[]);
    for (pattern, extra) in [
        ("q:1", vec![]),
        ("*:1", vec![]),
        ("q:[0-9]", vec![]),
        ("q:1", vec!["DB", "ALL"]),
        ("*", vec!["GROUP", "streamwatch"]),
    ] {
        let mut args = vec![w, pattern, "HANDLER", "rec", "TYPE", "stream"];
        args.extend(extra);
        let e = err(&mut c, &args);
        assert!(
            e.contains(&format!("watch '{pattern}'")) && e.contains("watch 'q:*'"),
            "{pattern}: {e}"
        );
        assert!(e.contains("'streamwatch'") && e.ends_with("(GROUP)"), "{e}");
    }
    // Not refused: the same pattern replaced, another group, other keys, another
    // database, a hash watch.
    watch_stream_opts(&mut c, "q:*", "rec", &["CONCURRENCY", "2", "REPLACE"]);
    watch_stream_opts(&mut c, "q:1", "rec", &["GROUP", "audit"]);
    watch_stream_opts(&mut c, "r:*", "rec", &[]);
    watch_stream_opts(&mut c, "q:2", "rec", &["DB", "1"]);
    ok(&mut c, &[w, "q:3", "HANDLER", "w"]);
    // Two groups on one stream: each entry runs once per group.
    let id = xadd(&mut c, "q:1", &[("n", "1")]);
    wait_drained(&mut c, "q:1");
    wait_until("run once per group", WAIT, || {
        drained(&mut c, "q:1", "audit") && lines(&dir.path().join("done")).len() == 2
    });
    assert_eq!(lines(&dir.path().join("done")), vec![id.clone(), id]);
    // The config file refuses such a pair, naming both.
    let bad = format!(
        "{}{}type = \"stream\"\n{}type = \"stream\"\n",
        handler("w", dir.path(), "true", &[], ""),
        watch_toml("jobs:*", "w", None),
        watch_toml("jobs:new", "w", None)
    );
    let log = Server::start_expect_failure(&bad);
    assert!(
        log.contains("watch 'jobs:new' would consume the same streams as watch 'jobs:*'"),
        "{log}"
    );
}

#[test]
fn a_stored_watch_sharing_a_group_runs_nothing_twice() {
    let dir = TempDir::new();
    let s = Server::builder(&recorder(dir.path(), ""))
        .dir(dir.clone())
        .start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "t:*", "rec", &[]);
    // A store edited by hand (or older than the check) holds a rival watch.
    let rival = "handler = \"rec\"\ntype = \"stream\"\ndb = 0\nonchange = \"restart\"\ngroup = \"streamwatch\"\n";
    ok(&mut c, &["HSET", "streamwatch:watches", "t:1", rival]);
    wait_until("the rival is a watch", WAIT, || {
        parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]))
            .iter()
            .any(|m| get_str(m, "pattern") == "t:1")
    });
    let added = xadd_many(&mut c, "t:1", 0, 5);
    wait_drained(&mut c, "t:1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        lines(&dir.path().join("done")),
        added,
        "each entry ran once"
    );
    let refused = wait_for("a duplicate-group event", WAIT, || {
        events(&mut c)
            .into_iter()
            .find(|e| e.get("event").map(String::as_str) == Some("duplicate-group"))
    });
    assert_eq!(refused["watch"], "t:1");
    assert_eq!(refused["other"], "t:*");
    assert_eq!(refused["key"], "t:1");
    assert_eq!(refused["group"], "streamwatch");
    assert!(
        s.log().contains("watch 't:1' does not run stream 't:1'"),
        "{}",
        s.log()
    );
}
