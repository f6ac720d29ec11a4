//! `STREAMWATCH.REPLAY key [COUNT n] [DB n]`: dead-lettered entries go back onto their
//! stream, with a new id and `replayed_from` naming the old one, and leave the
//! dead-letter stream in the same step. The first test is the whole story against a
//! real handler (fails, is dead-lettered, the cause is fixed, is replayed, succeeds);
//! the others write dead-letter entries as the module writes them, to test which entries
//! move, where from, how many, and the errors.

mod common;

use common::*;
use std::path::Path;

/// A handler `name` running `/bin/sh -c script TAG {id} {field:url}`, with `$D` = `dir`.
fn handler(name: &str, dir: &Path, script: &str) -> String {
    format!(
        "[handler.{name}]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\", \"{{field:url}}\"]\nenv = {{ D = \"{}\" }}\nbackoff-initial-ms = 10\n",
        dir.display()
    )
}

/// Fails (exit 1) until `$D/fixed` exists, then appends `id url` to `$D/done`.
fn until_fixed(dir: &Path) -> String {
    handler(
        "fix",
        dir,
        r#"[ -e "$D/fixed" ] || { echo "not yet $2"; exit 1; }; echo "$1 $2" >> "$D/done""#,
    )
}

/// Appends `id url` to `$D/done`.
fn recorder(dir: &Path) -> String {
    handler("rec", dir, r#"echo "$1 $2" >> "$D/done""#)
}

fn server(toml: &str, dir: &std::sync::Arc<TempDir>) -> Server {
    Server::builder(toml).dir(dir.clone()).start()
}

/// A stream's entries as (id, fields in order).
fn entries(c: &mut redis::Connection, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    to_array(&ok(c, &["XRANGE", key, "-", "+"]))
        .iter()
        .map(|e| {
            let parts = to_array(e);
            let fields = to_array(&parts[1])
                .chunks(2)
                .map(|kv| (vstr(&kv[0]), vstr(&kv[1])))
                .collect();
            (vstr(&parts[0]), fields)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

/// Adds to `dl` an entry as the module dead-letters one: `own` fields, then the eight.
fn dead_letter(c: &mut redis::Connection, dl: &str, own: &[(&str, &str)], id: &str) -> String {
    let mut fields = own.to_vec();
    fields.extend([
        ("id", id),
        ("attempts", "5"),
        ("error", "exit code 1"),
        ("last_exit", "1"),
        ("output", "boom"),
        ("watch", "q"),
        ("group", "streamwatch"),
        ("handler", "rec"),
    ]);
    xadd(c, dl, &fields)
}

fn replay(c: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut all = vec!["STREAMWATCH.REPLAY"];
    all.extend_from_slice(args);
    vint(&ok(c, &all)).expect("an integer reply")
}

fn xlen(c: &mut redis::Connection, key: &str) -> i64 {
    vint(&ok(c, &["XLEN", key])).unwrap_or(0)
}

#[test]
fn a_dead_lettered_entry_replayed_after_the_fix_runs_again_and_is_acked() {
    let dir = TempDir::new();
    let s = server(&until_fixed(dir.path()), &dir);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "jobs", "fix", &["MAX-ATTEMPTS", "2"]);
    // The entry has a field of its own named `error`, as the module's pairs do.
    let first = xadd(&mut c, "jobs", &[("url", "a"), ("error", "mine")]);
    let dead = wait_for("the entry dead-lettered", WAIT, || {
        entries(&mut c, "jobs:dead").pop()
    });
    assert_eq!(
        dead.1[..3],
        pairs(&[("url", "a"), ("error", "mine"), ("id", &first)])
    );
    assert!(lines(&dir.path().join("done")).is_empty());

    std::fs::write(dir.path().join("fixed"), "").unwrap();
    assert_eq!(replay(&mut c, &["jobs"]), 1);
    // In the same step: gone from the dead-letter stream, a new entry of the stream.
    assert_eq!(xlen(&mut c, "jobs:dead"), 0);
    let all = entries(&mut c, "jobs");
    assert_eq!(all.len(), 2, "{all:?}");
    let (again, fields) = &all[1];
    assert_ne!(again, &first);
    assert_eq!(
        fields,
        &pairs(&[("url", "a"), ("error", "mine"), ("replayed_from", &first)])
    );
    // It runs again, this time successfully, and is acknowledged.
    wait_drained(&mut c, "jobs");
    assert_eq!(lines(&dir.path().join("done")), vec![format!("{again} a")]);
    assert_eq!(xlen(&mut c, "jobs:dead"), 0);
    wait_eq("acked event of the replayed entry", WAIT, 1, || {
        events_of(&mut c, "acked", "jobs", None)
            .iter()
            .filter(|e| e["id"] == *again)
            .count()
    });
    // Nothing left to replay.
    assert_eq!(replay(&mut c, &["jobs"]), 0);
}

#[test]
fn count_bounds_the_entries_moved_oldest_first_default_100() {
    let dir = TempDir::new();
    let s = server(&recorder(dir.path()), &dir);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "q", "rec", &[]);
    // Paused, nothing runs: this test is about what moves.
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    let mut p = redis::pipe();
    for i in 0..1050 {
        let i = i.to_string();
        let mut cmd = redis::cmd("XADD");
        cmd.arg("q:dead").arg("*").arg("url").arg(&i);
        for (f, v) in [
            ("id", format!("1-{i}").as_str()),
            ("attempts", "5"),
            ("error", "e"),
            ("last_exit", "1"),
            ("output", ""),
            ("watch", "q"),
            ("group", "streamwatch"),
            ("handler", "rec"),
        ] {
            cmd.arg(f).arg(v);
        }
        p.add_command(cmd);
    }
    let _: Vec<String> = p.query(&mut c).expect("XADD pipeline");
    assert_eq!(replay(&mut c, &["q", "COUNT", "2"]), 2);
    let moved: Vec<Vec<(String, String)>> = entries(&mut c, "q").into_iter().map(|e| e.1).collect();
    assert_eq!(
        moved,
        vec![
            pairs(&[("url", "0"), ("replayed_from", "1-0")]),
            pairs(&[("url", "1"), ("replayed_from", "1-1")]),
        ]
    );
    assert_eq!(replay(&mut c, &["q"]), 100, "COUNT is 100 by default");
    assert_eq!(replay(&mut c, &["q", "count", "1000"]), 948);
    assert_eq!((xlen(&mut c, "q"), xlen(&mut c, "q:dead")), (1050, 0));
    let order: Vec<String> = entries(&mut c, "q")
        .into_iter()
        .map(|e| e.1[1].1.clone())
        .collect();
    let want: Vec<String> = (0..1050).map(|i| format!("1-{i}")).collect();
    assert_eq!(order, want, "oldest first, each once");
    // Inside MULTI it is one more write of the transaction.
    dead_letter(&mut c, "q:dead", &[("url", "m")], "2-0");
    let r: Vec<i64> = redis::pipe()
        .atomic()
        .cmd("STREAMWATCH.REPLAY")
        .arg("q")
        .query(&mut c)
        .expect("MULTI/EXEC");
    assert_eq!(r, vec![1]);
    assert_eq!((xlen(&mut c, "q"), xlen(&mut c, "q:dead")), (1051, 0));
}

#[test]
fn bad_arguments_and_keys_are_errors_naming_them() {
    let dir = TempDir::new();
    let toml = format!(
        "{}{}[[watch]]\npattern = \"h:*\"\nhandler = \"w\"\n",
        recorder(dir.path()),
        long_handler("w", "")
    );
    let s = server(&toml, &dir);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "q*", "rec", &[]);
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    dead_letter(&mut c, "q1:dead", &[("url", "a")], "1-1");
    for (args, says) in [
        (
            vec!["q1", "COUNT", "0"],
            "COUNT must be an integer from 1 to 1000, got '0'",
        ),
        (
            vec!["q1", "COUNT", "1001"],
            "COUNT must be an integer from 1 to 1000, got '1001'",
        ),
        (vec!["q1", "COUNT", "-1"], "COUNT"),
        (vec!["q1", "COUNT", "many"], "COUNT"),
        (vec!["q1", "COUNT"], "COUNT needs a value"),
        (vec!["q1", "DB", "99"], "DB must be a database number"),
        (vec!["q1", "LIMIT", "3"], "unknown option 'LIMIT'"),
        // No stream watch covers it: another key, a hash watch's key, a dead-letter stream.
        (
            vec!["other"],
            "no stream watch covers 'other' in database 0 (key)",
        ),
        (vec!["h:1"], "no stream watch covers 'h:1'"),
        (vec!["q1:dead"], "no stream watch covers 'q1:dead'"),
        (
            vec!["q1", "DB", "1"],
            "no stream watch covers 'q1' in database 1 (key)",
        ),
    ] {
        let mut all = vec!["STREAMWATCH.REPLAY"];
        all.extend_from_slice(&args);
        let e = err(&mut c, &all);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    let e = err(&mut c, &["STREAMWATCH.REPLAY"]);
    assert!(e.contains("wrong number of arguments"), "{e}");
    // WRONGTYPE: the stream, or its dead-letter stream, holds another type.
    ok(&mut c, &["SET", "q2", "x"]);
    let e = err(&mut c, &["STREAMWATCH.REPLAY", "q2"]);
    assert!(e.contains("'q2' holds a string, not a stream (key)"), "{e}");
    ok(&mut c, &["HSET", "q3:dead", "f", "v"]);
    let e = err(&mut c, &["STREAMWATCH.REPLAY", "q3"]);
    assert!(
        e.contains("the dead-letter stream 'q3:dead' holds a hash, not a stream"),
        "{e}"
    );
    // Nothing moved by any of them; a stream that does not exist yet is created.
    assert_eq!(xlen(&mut c, "q1:dead"), 1);
    assert_eq!(replay(&mut c, &["q1"]), 1);
    assert_eq!(xlen(&mut c, "q1"), 1);
    // No dead-letter stream: nothing to move.
    assert_eq!(replay(&mut c, &["q4"]), 0);
    assert_eq!(vint(&ok(&mut c, &["EXISTS", "q4"])), Some(0));
}

#[test]
fn entries_not_written_by_the_module_stay_in_the_dead_letter_stream() {
    let dir = TempDir::new();
    let s = server(&recorder(dir.path()), &dir);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "q", "rec", &[]);
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    let by_hand = xadd(&mut c, "q:dead", &[("url", "x"), ("error", "typed in")]);
    dead_letter(&mut c, "q:dead", &[("url", "a")], "1-1");
    // The eight names in another order are not the module's either.
    let shuffled = xadd(
        &mut c,
        "q:dead",
        &[
            ("url", "b"),
            ("attempts", "1"),
            ("id", "1-2"),
            ("error", "e"),
            ("last_exit", "1"),
            ("output", ""),
            ("watch", "q"),
            ("group", "streamwatch"),
            ("handler", "rec"),
        ],
    );
    // An entry replayed before and dead-lettered again: its replayed_from is replaced.
    dead_letter(
        &mut c,
        "q:dead",
        &[("url", "c"), ("replayed_from", "1-1")],
        "1-3",
    );
    assert_eq!(replay(&mut c, &["q", "COUNT", "5"]), 2);
    let left: Vec<String> = entries(&mut c, "q:dead").into_iter().map(|e| e.0).collect();
    assert_eq!(left, vec![by_hand, shuffled]);
    let moved: Vec<Vec<(String, String)>> = entries(&mut c, "q").into_iter().map(|e| e.1).collect();
    assert_eq!(
        moved,
        vec![
            pairs(&[("url", "a"), ("replayed_from", "1-1")]),
            pairs(&[("url", "c"), ("replayed_from", "1-3")]),
        ]
    );
    assert_eq!(replay(&mut c, &["q"]), 0);
}

#[test]
fn a_custom_deadletter_and_several_watches_of_one_stream() {
    let dir = TempDir::new();
    let toml = format!("{}{}", until_fixed(dir.path()), recorder(dir.path()));
    let s = server(&toml, &dir);
    let mut c = s.conn();
    watch_stream_opts(
        &mut c,
        "orders",
        "fix",
        &["MAX-ATTEMPTS", "1", "DEADLETTER", "orders-failed"],
    );
    let id = xadd(&mut c, "orders", &[("url", "o1")]);
    wait_until("dead-lettered to orders-failed", WAIT, || {
        xlen(&mut c, "orders-failed") == 1
    });
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    assert_eq!(replay(&mut c, &["orders"]), 1);
    assert_eq!(xlen(&mut c, "orders-failed"), 0);
    wait_drained(&mut c, "orders");
    let done = lines(&dir.path().join("done"));
    assert_eq!(done.len(), 1);
    assert!(
        done[0].ends_with(" o1") && !done[0].starts_with(&id),
        "{done:?}"
    );

    // A second watch of the stream, another group and the default dead-letter stream:
    // REPLAY takes from both, in the order STREAMWATCH.WATCHES lists the watches, COUNT
    // counting them together. Each replayed entry is new to both groups.
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    watch_stream_opts(&mut c, "ord*", "rec", &["GROUP", "audit"]);
    let order: Vec<String> = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]))
        .iter()
        .map(|w| get_str(w, "pattern"))
        .collect();
    assert_eq!(order, vec!["ord*", "orders"]);
    dead_letter(&mut c, "orders-failed", &[("url", "f1")], "1-1");
    dead_letter(&mut c, "orders-failed", &[("url", "f2")], "1-2");
    dead_letter(&mut c, "orders:dead", &[("url", "d1")], "1-3");
    assert_eq!(replay(&mut c, &["orders", "COUNT", "2"]), 2);
    assert_eq!(xlen(&mut c, "orders-failed"), 1);
    assert_eq!(replay(&mut c, &["orders", "COUNT", "2"]), 1);
    assert_eq!(
        (xlen(&mut c, "orders-failed"), xlen(&mut c, "orders:dead")),
        (0, 0)
    );
    let from: Vec<String> = entries(&mut c, "orders")
        .into_iter()
        .skip(2)
        .map(|e| e.1.last().unwrap().1.clone())
        .collect();
    assert_eq!(from, vec!["1-3", "1-1", "1-2"]);

    // A DEADLETTER shared by a pattern watch's streams: entries do not say their
    // stream, so REPLAY refuses rather than guess.
    watch_stream_opts(&mut c, "jobs:*", "rec", &["DEADLETTER", "jobs-failed"]);
    dead_letter(&mut c, "jobs-failed", &[("url", "j")], "1-4");
    let e = err(&mut c, &["STREAMWATCH.REPLAY", "jobs:a"]);
    assert!(
        e.contains(
            "dead-letter stream 'jobs-failed' of 'jobs:a' may also hold entries of other streams"
        ) && e.contains("watch 'jobs:*'"),
        "{e}"
    );
    assert_eq!(xlen(&mut c, "jobs-failed"), 1);
}

#[test]
fn db_option_replays_in_that_database_and_the_client_stays_in_its_own() {
    let dir = TempDir::new();
    let s = server(&recorder(dir.path()), &dir);
    let mut c = s.conn();
    watch_stream_opts(&mut c, "q", "rec", &["DB", "3"]);
    let mut c3 = s.conn_db(3);
    dead_letter(&mut c3, "q:dead", &[("url", "a")], "1-1");
    let e = err(&mut c, &["STREAMWATCH.REPLAY", "q"]);
    assert!(
        e.contains("no stream watch covers 'q' in database 0"),
        "{e}"
    );
    assert_eq!(replay(&mut c, &["q", "DB", "3"]), 1);
    assert_eq!(xlen(&mut c3, "q:dead"), 0);
    wait_drained(&mut c3, "q");
    assert_eq!(lines(&dir.path().join("done")).len(), 1);
    // The connection is still in database 0.
    ok(&mut c, &["SET", "here", "0"]);
    assert_eq!(vint(&ok(&mut c3, &["EXISTS", "here"])), Some(0));
    assert_eq!(xlen(&mut c, "q"), 0);
}

#[test]
fn a_replica_gets_the_same_entries_and_refuses_the_command() {
    let dir = TempDir::new();
    let toml = recorder(dir.path());
    let p = server(&toml, &dir);
    let r = Server::start(&toml);
    let mut pc = p.conn();
    let mut rc = r.conn();
    replicate(&r, &p);
    watch_stream_opts(&mut pc, "q", "rec", &[]);
    ok(&mut pc, &["STREAMWATCH.PAUSE"]);
    dead_letter(&mut pc, "q:dead", &[("url", "a")], "1-1");
    dead_letter(&mut pc, "q:dead", &[("url", "b")], "1-2");
    assert_eq!(replay(&mut pc, &["q"]), 2);
    // The replica has the same ids: the XADDs were replicated with the ids they got.
    let on_primary = entries(&mut pc, "q");
    wait_eq("replica's q", WAIT, on_primary.clone(), || {
        entries(&mut rc, "q")
    });
    wait_eq("replica's q:dead", WAIT, 0, || xlen(&mut rc, "q:dead"));
    let e = run(&mut rc, &["STREAMWATCH.REPLAY", "q"]).unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");
}

#[test]
fn the_dead_letter_stream_needs_read_and_write_permission() {
    let dir = TempDir::new();
    let s = server(&recorder(dir.path()), &dir);
    let mut admin = s.conn();
    watch_stream_opts(&mut admin, "q", "rec", &[]);
    ok(&mut admin, &["STREAMWATCH.PAUSE"]);
    dead_letter(&mut admin, "q:dead", &[("url", "a")], "1-1");
    let user = |name: &str, rules: &[&str]| {
        let mut args = vec!["ACL", "SETUSER", name, "reset", "on", ">pw", "+@all"];
        args.extend_from_slice(rules);
        ok(&mut s.conn(), &args);
        let mut c = s.conn();
        ok(&mut c, &["AUTH", name, "pw"]);
        c
    };
    let refused = |c: &mut redis::Connection, what: &str| {
        let e = run(c, &["STREAMWATCH.REPLAY", "q"]).unwrap_err();
        assert_eq!(e.code(), Some("NOPERM"), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    };
    // The stream only: the server refuses nothing, the module refuses the dead letters.
    refused(&mut user("stream-only", &["~q"]), "q:dead");
    refused(
        &mut user("no-read", &["~q", "%W~q:dead"]),
        "read the dead-letter stream 'q:dead'",
    );
    // The dead letters only: the server refuses the command's key.
    refused(&mut user("dead-only", &["~q:dead"]), "");
    // Like every command that changes what runs, it is @admin and @dangerous (on Redis
    // 7.0, where modules add no categories, streamwatch judges it as if it were), not
    // @write.
    for (name, rules) in [
        ("nodangerous", &["~*", "-@dangerous"][..]),
        ("noadmin", &["~*", "-@admin"]),
        ("readwrite", &["~*", "-@all", "+@read", "+@write"]),
    ] {
        refused(&mut user(name, rules), "streamwatch.replay");
    }
    assert_eq!(xlen(&mut admin, "q:dead"), 1);
    assert_eq!(replay(&mut user("both", &["~q", "~q:dead"]), &["q"]), 1);
}

/// `admin`, `write` (a replica, or a primary without its `min-replicas-to-write`,
/// refuses it) and `denyoom`; its key is argument 1, updated.
#[test]
fn command_flags_and_key() {
    let dir = TempDir::new();
    let s = server(&recorder(dir.path()), &dir);
    let mut c = s.conn();
    let info = to_array(&to_array(&ok(&mut c, &["COMMAND", "INFO", "streamwatch.replay"]))[0]);
    let flags: Vec<String> = to_array(&info[2]).iter().map(vstr).collect();
    for f in ["admin", "write", "denyoom"] {
        assert!(flags.iter().any(|g| g == f), "{f} not in {flags:?}");
    }
    assert_eq!(
        (vint(&info[3]), vint(&info[4]), vint(&info[5])),
        (Some(1), Some(1), Some(1))
    );
    let keys = to_array(&ok(
        &mut c,
        &[
            "COMMAND",
            "GETKEYSANDFLAGS",
            "streamwatch.replay",
            "q",
            "COUNT",
            "5",
        ],
    ));
    let key = to_array(&keys[0]);
    assert_eq!(vstr(&key[0]), "q");
    let key_flags: Vec<String> = to_array(&key[1]).iter().map(vstr).collect();
    assert!(
        key_flags.contains(&"RW".to_string()) && key_flags.contains(&"update".to_string()),
        "{key_flags:?}"
    );
    watch_stream_opts(&mut c, "q", "rec", &[]);
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let e = run(&mut c, &["STREAMWATCH.REPLAY", "q"]).unwrap_err();
    assert_eq!(e.code(), Some("NOREPLICAS"), "{e}");
}

#[test]
fn in_a_cluster_the_dead_letter_stream_must_be_in_the_slot_of_the_stream() {
    let dir = TempDir::new();
    let s = Server::builder(&recorder(dir.path()))
        .dir(dir.clone())
        .redis_args(&["--cluster-enabled", "yes"])
        .start();
    let mut c = s.conn();
    ok(&mut c, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
    wait_until("cluster_state:ok", WAIT, || {
        vstr(&ok(&mut c, &["CLUSTER", "INFO"])).contains("cluster_state:ok")
    });
    watch_stream_opts(&mut c, "*q*", "rec", &[]);
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    dead_letter(&mut c, "{q}:dead", &[("url", "a")], "1-1");
    assert_eq!(replay(&mut c, &["{q}"]), 1);
    // `q` and `q:dead` hash to different slots (both on this node, still refused).
    dead_letter(&mut c, "q:dead", &[("url", "b")], "1-2");
    let e = err(&mut c, &["STREAMWATCH.REPLAY", "q"]);
    assert!(
        e.contains("the dead-letter stream 'q:dead' is in another hash slot than 'q'")
            && e.contains("hash tag"),
        "{e}"
    );
    assert_eq!(xlen(&mut c, "q:dead"), 1);
}
