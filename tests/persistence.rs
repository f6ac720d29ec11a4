//! Watches made with STREAMWATCH.WATCH are data: they survive DEBUG RELOAD, a restart
//! from RDB or from AOF (with and without the RDB preamble), reach replicas by
//! replication and full resync, and the RDB still loads on a server without the module.
//! Config-file watches are never written to the store.

mod common;

use common::*;

const STORE: &str = "streamwatch:watches";

/// (pattern, handler, db, source) of every watch, sorted.
fn watches(c: &mut redis::Connection) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = parse_maps(&ok(c, &["STREAMWATCH.WATCHES"]))
        .iter()
        .map(|w| {
            (
                get_str(w, "pattern"),
                get_str(w, "handler"),
                get_str(w, "db"),
                get_str(w, "source"),
            )
        })
        .collect();
    v.sort();
    v
}

fn w(pattern: &str, handler: &str, db: &str, source: &str) -> (String, String, String, String) {
    (pattern.into(), handler.into(), db.into(), source.into())
}

/// A config with handlers `w` and `w2` and a config watch on `cfg:*`.
fn config() -> String {
    format!(
        "{}\n{}\n{}",
        long_handler("w", ""),
        long_handler("w2", ""),
        watch_toml("cfg:*", "w", None)
    )
}

/// Two command watches (one in db 3), one removed again, and data for all of them.
fn make_watches(s: &Server) {
    let mut c = s.conn();
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "p:*", "HANDLER", "w", "DB", "3"],
    );
    ok(
        &mut c,
        &[
            "STREAMWATCH.WATCH",
            "q:*",
            "HANDLER",
            "w2",
            "ONCHANGE",
            "ignore",
        ],
    );
    ok(&mut c, &["STREAMWATCH.WATCH", "gone:*", "HANDLER", "w"]);
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.UNWATCH", "gone:*"])),
        Some(0)
    );
    ok(&mut s.conn_db(3), &["HSET", "p:a", "f", "1"]);
    ok(&mut c, &["HSET", "q:a", "g", "2", "h", "3"]);
    ok(&mut c, &["HSET", "cfg:a", "x", "4"]);
    ok(&mut c, &["HSET", "gone:a", "y", "5"]);
    assert_workers(s, &mut c, &expected());
}

fn expected() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("p:a", "f", "1"),
        ("q:a", "g", "2"),
        ("q:a", "h", "3"),
        ("cfg:a", "x", "4"),
    ]
}

fn expected_watches() -> Vec<(String, String, String, String)> {
    vec![
        w("cfg:*", "w", "0", "config"),
        w("p:*", "w", "3", "command"),
        w("q:*", "w2", "0", "command"),
    ]
}

/// The restored server has the same watches and runs the same jobs.
fn assert_restored(s: &Server) {
    let mut c = s.conn();
    assert_eq!(watches(&mut c), expected_watches());
    let ws = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]));
    let q = ws.iter().find(|m| get_str(m, "pattern") == "q:*").unwrap();
    assert_eq!(
        get_str(&to_map(q.get("options").unwrap()), "onchange"),
        "ignore"
    );
    assert_workers(s, &mut c, &expected());
}

#[test]
fn watches_survive_debug_reload_without_restarting_jobs() {
    let s = Server::start(&config());
    make_watches(&s);
    let mut c = s.conn();
    let pids = job_pids(&mut c);
    ok(&mut c, &["DEBUG", "RELOAD"]);
    assert_restored(&s);
    // Same data, same watches: nothing had to restart.
    assert_eq!(job_pids(&mut c), pids);
}

#[test]
fn watches_survive_restart_from_rdb() {
    let dir = TempDir::new();
    {
        let s = Server::builder(&config()).dir(dir.clone()).start();
        make_watches(&s);
        ok(&mut s.conn(), &["SAVE"]);
    }
    let s = Server::builder(&config()).dir(dir.clone()).start();
    assert_restored(&s);
}

fn aof_round_trip(preamble: &str) {
    let dir = TempDir::new();
    let args = [
        "--appendonly",
        "yes",
        "--aof-use-rdb-preamble",
        preamble,
        "--appendfsync",
        "always",
    ];
    {
        let mut s = Server::builder(&config())
            .dir(dir.clone())
            .redis_args(&args)
            .start();
        let mut c = s.conn();
        // Part of the history goes through an AOF rewrite, part is appended after it.
        make_watches(&s);
        ok(&mut c, &["BGREWRITEAOF"]);
        wait_until("AOF rewrite done", WAIT, || {
            let i = info(&mut c, "persistence");
            i.get("aof_rewrite_in_progress").map(String::as_str) == Some("0")
                && i.get("aof_rewrite_scheduled").map(String::as_str) == Some("0")
                && i.get("aof_last_bgrewrite_status").map(String::as_str) == Some("ok")
        });
        let w = "STREAMWATCH.WATCH";
        ok(&mut c, &[w, "q:*", "HANDLER", "w", "REPLACE"]);
        ok(
            &mut c,
            &[w, "q:*", "HANDLER", "w2", "ONCHANGE", "ignore", "REPLACE"],
        );
        ok(&mut c, &[w, "tmp:*", "HANDLER", "w"]);
        ok(&mut c, &["STREAMWATCH.UNWATCH", "tmp:*"]);
        assert_workers(&s, &mut c, &expected());
        drop(c);
        s.stop();
    }
    let s = Server::builder(&config())
        .dir(dir.clone())
        .redis_args(&args)
        .start();
    assert_restored(&s);
}

#[test]
fn watches_survive_restart_from_aof_with_rdb_preamble() {
    aof_round_trip("yes");
}

#[test]
fn watches_survive_restart_from_aof_without_rdb_preamble() {
    aof_round_trip("no");
}

#[test]
fn config_watches_are_not_stored() {
    let s = Server::start(&config());
    make_watches(&s);
    let mut c = s.conn();
    let mut stored: Vec<String> = to_array(&ok(&mut c, &["HKEYS", STORE]))
        .iter()
        .map(vstr)
        .collect();
    stored.sort();
    assert_eq!(stored, ["p:*", "q:*"]);
    // The store itself is never treated as a watched hash, even by a catch-all watch.
    ok(&mut c, &["STREAMWATCH.WATCH", "*", "HANDLER", "w2"]);
    wait_until("catch-all watch reconciled", WAIT, || {
        jobs_filtered(&mut c, &["WATCH", "*"]).len() == 4
    });
    assert!(jobs_filtered(&mut c, &["KEY", STORE]).is_empty());
}

#[test]
fn rdb_written_with_the_module_loads_without_it() {
    let dir = TempDir::new();
    {
        let s = Server::builder(&config()).dir(dir.clone()).start();
        make_watches(&s);
        ok(&mut s.conn(), &["SAVE"]);
    }
    let plain = Server::builder("")
        .dir(dir.clone())
        .without_module()
        .start();
    let mut c = plain.conn();
    assert_eq!(vstr(&ok(&mut c, &["HGET", "q:a", "h"])), "3");
    assert_eq!(vint(&ok(&mut c, &["HLEN", STORE])), Some(2));
    assert!(plain.log().contains("DB loaded from disk"));
}

#[test]
fn watches_replicate_incrementally_and_by_full_resync() {
    let p = Server::start(&config());
    let r = Server::start(&config());
    make_watches(&p);
    let mut rc = r.conn();
    // Full resync: the replica gets the store with the data.
    ok(&mut rc, &["REPLICAOF", "127.0.0.1", &p.port.to_string()]);
    wait_until("replica has the watches", WAIT, || {
        watches(&mut rc) == expected_watches()
    });
    // Incremental: later WATCH/UNWATCH follow.
    let mut pc = p.conn();
    ok(&mut pc, &["STREAMWATCH.UNWATCH", "q:*"]);
    ok(&mut pc, &["STREAMWATCH.WATCH", "n:*", "HANDLER", "w"]);
    ok(&mut pc, &["HSET", "n:a", "k", "6"]);
    let now = vec![
        w("cfg:*", "w", "0", "config"),
        w("n:*", "w", "0", "command"),
        w("p:*", "w", "3", "command"),
    ];
    wait_until("replica follows WATCH/UNWATCH", WAIT, || {
        watches(&mut rc) == now
    });
    assert!(jobs(&mut rc).is_empty(), "a replica runs no job");
    assert!(r.tagged_procs().is_empty());
    // A replica refuses to change watches itself.
    let e = run(&mut rc, &["STREAMWATCH.WATCH", "x:*", "HANDLER", "w"]).unwrap_err();
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e}");

    // Promoted, it runs the replicated watches' jobs.
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    assert_workers(
        &r,
        &mut rc,
        &[("p:a", "f", "1"), ("cfg:a", "x", "4"), ("n:a", "k", "6")],
    );
}

#[test]
fn flushall_removes_command_watches_with_the_data() {
    let s = Server::start(&config());
    make_watches(&s);
    let mut c = s.conn();
    ok(&mut c, &["FLUSHALL"]);
    assert_eq!(watches(&mut c), vec![w("cfg:*", "w", "0", "config")]);
    assert_workers(&s, &mut c, &[]);
}

#[test]
fn a_bad_stored_watch_is_skipped_with_a_log_line() {
    let s = Server::start(&config());
    let mut c = s.conn();
    ok(
        &mut c,
        &[
            "HSET",
            STORE,
            "bad:*",
            "handler = \"nope\"\ntype = \"hash\"\ndb = 0\nonchange = \"restart\"\n",
        ],
    );
    ok(&mut c, &["HSET", STORE, "junk:*", "not toml"]);
    ok(&mut c, &["STREAMWATCH.WATCH", "good:*", "HANDLER", "w"]);
    assert_eq!(
        watches(&mut c),
        vec![
            w("cfg:*", "w", "0", "config"),
            w("good:*", "w", "0", "command")
        ]
    );
    let log = s.log();
    assert!(
        log.contains("stored watch 'bad:*' is ignored: unknown handler 'nope'"),
        "{log}"
    );
    assert!(log.contains("stored watch 'junk:*' is ignored"), "{log}");
}
