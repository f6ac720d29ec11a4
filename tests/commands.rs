//! The STREAMWATCH.* commands and `INFO streamwatch`: reply shapes from
//! docs/CONTRACT.md, WATCH/UNWATCH/REPLACE/ONCHANGE/DB behaviour, JOBS filters,
//! STATUS counters, RECONCILE, and an `ERR ...` naming the argument for every
//! bad-argument form (the server must stay up after each).

mod common;

use common::*;
use std::collections::BTreeSet;

fn config_two_handlers() -> String {
    format!(
        "{}\n{}\n{}",
        long_handler("w", ""),
        long_handler("w2", ""),
        watch_toml("cfg:*", "w", None)
    )
}

fn find<'a>(maps: &'a [Map], key: &str, value: &str) -> &'a Map {
    maps.iter()
        .find(|m| m.get(key).map(vstr).as_deref() == Some(value))
        .unwrap_or_else(|| panic!("no entry with {key}={value} in {maps:?}"))
}

/// The keys of a `STREAMWATCH.JOBS` entry, in order.
const JOB_KEYS: [&str; 11] = [
    "watch",
    "db",
    "key",
    "field",
    "state",
    "pid",
    "started_ms",
    "uptime_ms",
    "runs",
    "failures",
    "last_exit",
];

/// Assert the error names one of `words` (case-sensitive keyword match).
fn assert_names(c: &mut redis::Connection, args: &[&str], words: &[&str]) {
    let e = err(c, args);
    assert!(
        words.iter().any(|w| e.contains(w)),
        "{args:?}: error {e:?} does not name any of {words:?}"
    );
}

const ARITY: &str = "wrong number of arguments";

#[test]
fn watches_lists_config_and_command_watches() {
    let s = Server::start(&config_two_handlers());
    let mut c = s.conn();
    assert_eq!(
        ok(
            &mut c,
            &[
                "STREAMWATCH.WATCH",
                "cmd:*",
                "HANDLER",
                "w2",
                "DB",
                "1",
                "ONCHANGE",
                "ignore"
            ]
        ),
        Value::Okay
    );
    ok(&mut c, &["HSET", "cfg:a", "f", "1", "g", "2"]);
    assert_workers(&s, &mut c, &[("cfg:a", "f", "1"), ("cfg:a", "g", "2")]);

    let ws = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]));
    assert_eq!(ws.len(), 2, "{ws:?}");
    let cfg = find(&ws, "pattern", "cfg:*");
    assert_eq!(get_str(cfg, "handler"), "w");
    assert_eq!(get_str(cfg, "type"), "hash");
    assert_eq!(get_str(cfg, "db"), "0");
    assert_eq!(get_str(cfg, "source"), "config");
    assert_eq!(get_int(cfg, "jobs"), Some(2));
    let cmd = find(&ws, "pattern", "cmd:*");
    assert_eq!(get_str(cmd, "handler"), "w2");
    assert_eq!(get_str(cmd, "db"), "1");
    assert_eq!(get_str(cmd, "source"), "command");
    assert_eq!(get_int(cmd, "jobs"), Some(0));
    let opts = to_map(cmd.get("options").expect("options"));
    assert_eq!(get_str(&opts, "onchange"), "ignore");
}

#[test]
fn watch_db_all_is_reported() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "all:*", "HANDLER", "w", "DB", "ALL"],
    );
    let ws = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]));
    assert_eq!(get_str(find(&ws, "pattern", "all:*"), "db"), "all");
}

#[test]
fn handlers_lists_config_handlers_with_options() {
    let toml = format!(
        "{}\n{}",
        long_handler("w", ""),
        sh_handler(
            "full",
            "exit 0",
            "env = { A = \"{value}\" }\ncwd = \"/tmp\"\nrestart = \"on-failure\"\nbackoff-initial-ms = 11\nbackoff-max-ms = 222\nstable-after-ms = 3333\nmax-failures = 4\nstop-signal = \"INT\"\nstop-grace-ms = 555\ntimeout-ms = 66\nlog-lines = 7\nheartbeat-ms = 77\nno-restart-exit-codes = [3, 64]"
        )
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    let hs = parse_maps(&ok(&mut c, &["STREAMWATCH.HANDLERS"]));
    let names: BTreeSet<String> = hs.iter().map(|h| get_str(h, "name")).collect();
    assert_eq!(
        names,
        ["full".to_string(), "w".to_string()].into_iter().collect()
    );
    let w = find(&hs, "name", "w");
    for k in [
        "command",
        "env",
        "cwd",
        "restart",
        "backoff-initial-ms",
        "backoff-max-ms",
        "stable-after-ms",
        "max-failures",
        "stop-signal",
        "stop-grace-ms",
        "timeout-ms",
        "log-lines",
    ]
    .into_iter()
    .chain("pool max-requests nice oom-score-adj memory-max cpu-max".split(' '))
    .chain("limit-as limit-nofile limit-cpu limit-nproc limit-core".split(' '))
    .chain(["heartbeat-ms", "no-restart-exit-codes"])
    {
        assert!(w.contains_key(k), "HANDLERS entry lacks {k}: {w:?}");
    }
    let cmd: Vec<String> = to_array(w.get("command").unwrap())
        .iter()
        .map(vstr)
        .collect();
    assert_eq!(cmd[0], "/bin/sh");
    assert_eq!(cmd[1], "-c");
    assert_eq!(cmd[2], LONG_SCRIPT);
    assert_eq!(&cmd[4..], ["{key}", "{field}", "{value}"]);
    assert_eq!(w.get("cwd"), Some(&Value::Nil));

    let f = find(&hs, "name", "full");
    assert_eq!(get_str(f, "restart"), "on-failure");
    assert_eq!(get_int(f, "backoff-initial-ms"), Some(11));
    assert_eq!(get_int(f, "backoff-max-ms"), Some(222));
    assert_eq!(get_int(f, "stable-after-ms"), Some(3333));
    assert_eq!(get_int(f, "max-failures"), Some(4));
    assert_eq!(get_str(f, "stop-signal"), "INT");
    assert_eq!(get_int(f, "stop-grace-ms"), Some(555));
    assert_eq!(get_int(f, "timeout-ms"), Some(66));
    assert_eq!(get_int(f, "log-lines"), Some(7));
    assert_eq!(get_int(f, "heartbeat-ms"), Some(77));
    let codes: Vec<Option<i64>> = to_array(&f["no-restart-exit-codes"])
        .iter()
        .map(vint)
        .collect();
    assert_eq!(codes, [Some(3), Some(64)]);
    assert_eq!(get_int(w, "heartbeat-ms"), Some(0), "off by default");
    assert!(to_array(&w["no-restart-exit-codes"]).is_empty());
    assert_eq!(get_str(f, "cwd"), "/tmp");
    let env = to_map(f.get("env").unwrap());
    assert_eq!(get_str(&env, "A"), "{value}");
}

#[test]
fn unwatch_stops_jobs_and_returns_count() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "u:*", "HANDLER", "w"]);
    ok(&mut c, &["STREAMWATCH.WATCH", "keep:*", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "u:a", "f1", "1", "f2", "2"]);
    ok(&mut c, &["HSET", "keep:a", "k", "1"]);
    assert_workers(
        &s,
        &mut c,
        &[("u:a", "f1", "1"), ("u:a", "f2", "2"), ("keep:a", "k", "1")],
    );
    let pids = [
        running_pid(&mut c, "u:a", "f1"),
        running_pid(&mut c, "u:a", "f2"),
    ];
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.UNWATCH", "u:*"])), Some(2));
    wait_gone("unwatched workers gone", &pids);
    assert_workers(&s, &mut c, &[("keep:a", "k", "1")]);
    let ws = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]));
    assert_eq!(ws.len(), 1);
    assert_names(&mut c, &["STREAMWATCH.UNWATCH", "u:*"], &["u:*", "pattern"]);
    // No longer watched.
    ok(&mut c, &["HSET", "u:a", "f3", "3"]);
    ok(&mut c, &["HSET", "keep:a", "k", "2"]);
    assert_workers(&s, &mut c, &[("keep:a", "k", "2")]);
}

#[test]
fn watch_existing_pattern_needs_replace() {
    let s = Server::start(&config_two_handlers());
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "r:*", "HANDLER", "w"]);
    ok(&mut c, &["HSET", "r:a", "f", "1"]);
    let pid1 = running_pid(&mut c, "r:a", "f");
    assert_eq!(get_str(&job(&mut c, "r:a", "f").unwrap(), "handler"), "w");
    assert_names(
        &mut c,
        &["STREAMWATCH.WATCH", "r:*", "HANDLER", "w2"],
        &["already exists"],
    );
    // Unchanged by the failed attempt.
    assert_eq!(running_pid(&mut c, "r:a", "f"), pid1);
    assert_eq!(
        ok(
            &mut c,
            &["STREAMWATCH.WATCH", "r:*", "HANDLER", "w2", "REPLACE"]
        ),
        Value::Okay
    );
    let ws = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]));
    assert_eq!(get_str(find(&ws, "pattern", "r:*"), "handler"), "w2");
    wait_until("job now runs under handler w2", WAIT, || {
        job(&mut c, "r:a", "f")
            .is_some_and(|j| get_str(&j, "handler") == "w2" && get_str(&j, "state") == "running")
    });
    assert_workers(&s, &mut c, &[("r:a", "f", "1")]);
    wait_gone("run of the replaced watch gone", &[pid1]);
}

#[test]
fn onchange_ignore_keeps_the_running_worker() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    ok(
        &mut c,
        &[
            "STREAMWATCH.WATCH",
            "ig:*",
            "HANDLER",
            "w",
            "ONCHANGE",
            "ignore",
        ],
    );
    ok(&mut c, &["HSET", "ig:a", "f", "1"]);
    let pid = running_pid(&mut c, "ig:a", "f");
    ok(&mut c, &["HSET", "ig:a", "f", "2"]);
    ok(&mut c, &["HSET", "ig:probe", "p", "1"]);
    running_pid(&mut c, "ig:probe", "p");
    assert_eq!(running_pid(&mut c, "ig:a", "f"), pid);
    assert_eq!(worker_argv(pid).unwrap().2, "1");
    // Removing the field still stops it.
    ok(&mut c, &["HDEL", "ig:a", "f"]);
    wait_gone("worker gone after HDEL", &[pid]);
}

#[test]
fn watch_db_defaults_to_selected_db() {
    let s = Server::start(&long_handler("w", ""));
    let mut c2 = s.conn_db(2);
    let mut c0 = s.conn();
    ok(&mut c2, &["STREAMWATCH.WATCH", "d:*", "HANDLER", "w"]);
    let ws = parse_maps(&ok(&mut c0, &["STREAMWATCH.WATCHES"]));
    assert_eq!(get_str(find(&ws, "pattern", "d:*"), "db"), "2");
    ok(&mut c0, &["HSET", "d:zero", "f", "1"]);
    ok(&mut c2, &["HSET", "d:two", "f", "2"]);
    assert_workers(&s, &mut c0, &[("d:two", "f", "2")]);
    assert_eq!(get_int(&jobs(&mut c0)[0], "db"), Some(2));
}

#[test]
fn jobs_reply_shape_order_and_filters() {
    let s = Server::start(&config_two_handlers());
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w2"]);
    ok(&mut c, &["HSET", "cfg:b", "y", "1", "x", "2"]);
    ok(&mut c, &["HSET", "cfg:a", "z", "3"]);
    ok(&mut c, &["HSET", "cmd:a", "q", "4"]);
    assert_workers(
        &s,
        &mut c,
        &[
            ("cfg:b", "y", "1"),
            ("cfg:b", "x", "2"),
            ("cfg:a", "z", "3"),
            ("cmd:a", "q", "4"),
        ],
    );
    let raw = ok(&mut c, &["STREAMWATCH.JOBS"]);
    let first = &to_array(&raw)[0];
    assert_eq!(map_keys(first), JOB_KEYS);
    let all = parse_maps(&raw);
    let order: Vec<(String, String, String)> = all
        .iter()
        .map(|j| (get_str(j, "watch"), get_str(j, "key"), get_str(j, "field")))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "JOBS not sorted by (watch, db, key, field)");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for j in &all {
        assert_eq!(get_int(j, "db"), Some(0));
        let started = get_int(j, "started_ms").expect("started_ms");
        assert!((started - now_ms).abs() < 120_000, "{j:?}");
        assert!(get_int(j, "uptime_ms").unwrap() >= 0);
        assert_eq!(get_int(j, "runs"), Some(1));
        assert_eq!(get_int(j, "failures"), Some(0));
        assert_eq!(get_int(j, "last_exit"), None);
    }

    let by_watch = jobs_filtered(&mut c, &["WATCH", "cmd:*"]);
    assert_eq!(by_watch.len(), 1);
    assert_eq!(get_str(&by_watch[0], "key"), "cmd:a");
    let by_key = jobs_filtered(&mut c, &["KEY", "cfg:b"]);
    assert_eq!(by_key.len(), 2);
    assert!(by_key.iter().all(|j| get_str(j, "key") == "cfg:b"));
    assert_eq!(jobs_filtered(&mut c, &["STATE", "running"]).len(), 4);
    assert_eq!(jobs_filtered(&mut c, &["STATE", "failed"]).len(), 0);
    assert_eq!(jobs_filtered(&mut c, &["COUNT", "2"]).len(), 2);
    assert_eq!(
        jobs_filtered(&mut c, &["WATCH", "cfg:*", "KEY", "cfg:b", "COUNT", "1"]).len(),
        1
    );
    assert!(jobs_filtered(&mut c, &["KEY", "nope"]).is_empty());
}

#[test]
fn job_reply_has_job_fields_plus_handler_value_log() {
    let s = Server::start(&simple_config("jb:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "jb:a", "f", "hello"]);
    let pid = running_pid(&mut c, "jb:a", "f");
    wait_until("worker output captured", WAIT, || {
        job_log(&mut c, "jb:a", "f") == vec!["start hello"]
    });
    let raw = ok(&mut c, &["STREAMWATCH.JOB", "jb:a", "f"]);
    let keys = map_keys(&raw);
    for k in JOB_KEYS
        .iter()
        .copied()
        .chain(["handler", "value", "error", "log"])
    {
        assert!(keys.contains(&k.to_string()), "JOB lacks {k}: {keys:?}");
    }
    let j = to_map(&raw);
    assert_eq!(get_str(&j, "watch"), "jb:*");
    assert_eq!(get_str(&j, "handler"), "w");
    assert_eq!(get_str(&j, "value"), "hello");
    assert_eq!(get_int(&j, "pid"), Some(pid as i64));
    assert_eq!(j["error"], Value::Nil, "a run that has not failed");
    assert_eq!(ok(&mut c, &["STREAMWATCH.JOB", "jb:a", "nope"]), Value::Nil);
    assert_eq!(ok(&mut c, &["STREAMWATCH.JOB", "jb:none", "f"]), Value::Nil);
    assert_eq!(
        ok(&mut c, &["STREAMWATCH.JOB", "jb:a", "f", "DB", "5"]),
        Value::Nil
    );
}

#[test]
fn status_and_info_report_counts() {
    let toml = format!(
        "{}\n{}\n{}\n{}",
        long_handler("w", ""),
        sh_handler("once", "exit 0", "restart = \"never\""),
        watch_toml("st:*", "w", None),
        watch_toml("once:*", "once", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "st:a", "f1", "1", "f2", "2"]);
    ok(&mut c, &["HSET", "once:a", "x", "1"]);
    assert_workers(&s, &mut c, &[("st:a", "f1", "1"), ("st:a", "f2", "2")]);
    wait_until("one-shot job exited", WAIT, || {
        job(&mut c, "once:a", "x").is_some_and(|j| get_str(&j, "state") == "exited")
    });
    // The counts are published at the end of the supervisor's turn.
    wait_eq("published counts", WAIT, (Some(2), Some(1)), || {
        let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
        let by_state = to_map(st.get("jobs").expect("jobs"));
        (get_int(&by_state, "running"), get_int(&by_state, "exited"))
    });

    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert!(!get_str(&st, "version").is_empty());
    assert_eq!(get_str(&st, "role"), "primary");
    assert_eq!(get_int(&st, "paused"), Some(0));
    assert_eq!(get_int(&st, "watches"), Some(2));
    assert_eq!(get_int(&st, "jobs_over_limit"), Some(0));
    let by_state = to_map(st.get("jobs").expect("jobs"));
    for state in [
        "starting", "running", "backoff", "stopping", "exited", "failed",
    ] {
        assert!(by_state.contains_key(state), "no {state} in {by_state:?}");
    }
    assert_eq!(get_int(&by_state, "running"), Some(2));
    assert_eq!(get_int(&by_state, "exited"), Some(1));
    assert_eq!(get_int(&by_state, "failed"), Some(0));
    let counters = to_map(st.get("counters").expect("counters"));
    assert!(
        get_int(&counters, "runs_started").unwrap() >= 3,
        "{counters:?}"
    );
    assert!(get_int(&counters, "exits").unwrap() >= 1, "{counters:?}");
    assert!(
        get_int(&counters, "reconciles").unwrap() >= 1,
        "{counters:?}"
    );
    assert!(get_int(&counters, "events").unwrap() >= 1, "{counters:?}");
    assert_eq!(get_int(&counters, "failures"), Some(0), "{counters:?}");
    assert_eq!(
        get_int(&counters, "events_dropped"),
        Some(0),
        "{counters:?}"
    );

    let inf = info(&mut c, "streamwatch");
    let g = |k: &str| {
        inf.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("INFO streamwatch lacks {k}: {inf:?}"))
    };
    assert_eq!(g("streamwatch_role"), "primary");
    assert_eq!(g("streamwatch_paused"), "0");
    assert_eq!(g("streamwatch_watches"), "2");
    assert_eq!(g("streamwatch_jobs"), "3");
    assert_eq!(g("streamwatch_jobs_running"), "2");
    assert!(g("streamwatch_runs_started").parse::<i64>().unwrap() >= 3);
    assert!(g("streamwatch_exits").parse::<i64>().unwrap() >= 1);
    assert_eq!(g("streamwatch_failures"), "0");
    assert!(g("streamwatch_events").parse::<i64>().unwrap() >= 1);
    assert_eq!(g("streamwatch_events_dropped"), "0");

    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(1));
    assert_eq!(
        info(&mut c, "streamwatch")
            .get("streamwatch_paused")
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn reconcile_in_steady_state_changes_nothing() {
    let s = Server::start(&simple_config("rc:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "rc:a", "f", "1", "g", "2"]);
    assert_workers(&s, &mut c, &[("rc:a", "f", "1"), ("rc:a", "g", "2")]);
    let pids = job_pids(&mut c);
    let reconciles = |c: &mut redis::Connection| {
        let st = to_map(&ok(c, &["STREAMWATCH.STATUS"]));
        get_int(&to_map(st.get("counters").unwrap()), "reconciles").unwrap()
    };
    let before = reconciles(&mut c);
    let r = to_map(&ok(&mut c, &["STREAMWATCH.RECONCILE"]));
    assert_eq!(get_int(&r, "started"), Some(0), "{r:?}");
    assert_eq!(get_int(&r, "stopped"), Some(0), "{r:?}");
    assert_eq!(get_int(&r, "restarted"), Some(0), "{r:?}");
    let after = reconciles(&mut c);
    assert_eq!(after, before + 1);
    assert_eq!(job_pids(&mut c), pids);
    assert_workers(&s, &mut c, &[("rc:a", "f", "1"), ("rc:a", "g", "2")]);
}

#[test]
fn max_jobs_limits_running_jobs_and_reports_the_rest() {
    let s = Server::builder(&simple_config("mj:*"))
        .module_arg("max-jobs", "3")
        .start();
    let mut c = s.conn();
    ok(
        &mut c,
        &[
            "HSET", "mj:a", "f1", "1", "f2", "2", "f3", "3", "f4", "4", "f5", "5",
        ],
    );
    wait_until("3 running, 2 over the limit", WAIT, || {
        let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
        let running = get_int(&to_map(st.get("jobs").unwrap()), "running");
        running == Some(3) && get_int(&st, "jobs_over_limit") == Some(2)
    });
    assert_eq!(running_set(&mut c).len(), 3);
    assert_eq!(s.tagged_procs().len(), 3);
    assert_eq!(
        vstr(&to_array(&ok(&mut c, &["CONFIG", "GET", "streamwatch.max-jobs"]))[1]),
        "3"
    );
}

// ---------------------------------------------------------------------------
// Bad arguments
// ---------------------------------------------------------------------------

#[test]
fn watch_bad_arguments_are_errors_naming_the_argument() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    assert_names(&mut c, &[w], &[ARITY]);
    assert_names(&mut c, &[w, "cams"], &[ARITY, "HANDLER"]);
    assert_names(&mut c, &[w, "cams", "HANDLER"], &[ARITY, "HANDLER"]);
    assert_names(&mut c, &[w, "cams", "HANDLER", "nope"], &["HANDLER"]);
    assert_names(&mut c, &[w, "cams", "HANDLER", "nope"], &["nope"]);
    assert_names(&mut c, &[w, "cams", "FOO", "bar"], &["FOO"]);
    assert_names(&mut c, &[w, "cams", "HANDLER", "h", "FOO"], &["FOO"]);
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "TYPE", "list"],
        &["TYPE"],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "TYPE"],
        &["TYPE", ARITY],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "TYPE", "zset"],
        &["TYPE"],
    );
    assert_names(&mut c, &[w, "cams", "HANDLER", "h", "DB", "x"], &["DB"]);
    assert_names(&mut c, &[w, "cams", "HANDLER", "h", "DB", "-1"], &["DB"]);
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "DB", "100000"],
        &["DB"],
    );
    assert_names(&mut c, &[w, "cams", "HANDLER", "h", "DB"], &["DB", ARITY]);
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "ONCHANGE", "maybe"],
        &["ONCHANGE"],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "ONCHANGE"],
        &["ONCHANGE", ARITY],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "GROUP"],
        &["GROUP", ARITY],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "CONCURRENCY", "abc"],
        &["CONCURRENCY"],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "CONCURRENCY", "-1"],
        &["CONCURRENCY"],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "MAX-ATTEMPTS", "abc"],
        &["MAX-ATTEMPTS"],
    );
    assert_names(
        &mut c,
        &[w, "cams", "HANDLER", "h", "DEADLETTER"],
        &["DEADLETTER", ARITY],
    );
    // Nothing was created by any failed attempt, and the server is fine.
    assert!(to_array(&ok(&mut c, &["STREAMWATCH.WATCHES"])).is_empty());
    ok(&mut c, &["PING"]);
}

#[test]
fn unwatch_bad_arguments_are_errors() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    assert_names(&mut c, &["STREAMWATCH.UNWATCH"], &[ARITY]);
    assert_names(&mut c, &["STREAMWATCH.UNWATCH", "nope"], &["pattern"]);
    assert_names(&mut c, &["STREAMWATCH.UNWATCH", "nope"], &["nope"]);
    assert_names(&mut c, &["STREAMWATCH.UNWATCH", "a", "b"], &[ARITY, "b"]);
    ok(&mut c, &["PING"]);
}

#[test]
fn jobs_bad_arguments_are_errors_naming_the_argument() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    let j = "STREAMWATCH.JOBS";
    assert_names(&mut c, &[j, "COUNT", "-1"], &["COUNT"]);
    assert_names(&mut c, &[j, "COUNT", "0"], &["COUNT"]);
    assert_names(&mut c, &[j, "COUNT", "abc"], &["COUNT"]);
    assert_names(&mut c, &[j, "COUNT"], &["COUNT", ARITY]);
    assert_names(&mut c, &[j, "STATE", "nope"], &["STATE"]);
    assert_names(&mut c, &[j, "STATE"], &["STATE", ARITY]);
    assert_names(&mut c, &[j, "WATCH"], &["WATCH", ARITY]);
    assert_names(&mut c, &[j, "KEY"], &["KEY", ARITY]);
    assert_names(&mut c, &[j, "FOO", "1"], &["FOO"]);
    ok(&mut c, &["PING"]);
}

#[test]
fn job_and_restart_bad_arguments_are_errors_naming_the_argument() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    for cmd in ["STREAMWATCH.JOB", "STREAMWATCH.RESTART"] {
        assert_names(&mut c, &[cmd], &[ARITY]);
        assert_names(&mut c, &[cmd, "k"], &[ARITY, "field"]);
        assert_names(&mut c, &[cmd, "k", "f", "DB", "x"], &["DB"]);
        assert_names(&mut c, &[cmd, "k", "f", "DB", "-1"], &["DB"]);
        assert_names(&mut c, &[cmd, "k", "f", "DB"], &["DB", ARITY]);
        assert_names(&mut c, &[cmd, "k", "f", "FOO", "1"], &["FOO"]);
    }
    ok(&mut c, &["PING"]);
}

#[test]
fn argumentless_commands_reject_extra_arguments() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    for cmd in [
        "STREAMWATCH.RECONCILE",
        "STREAMWATCH.STATUS",
        "STREAMWATCH.WATCHES",
        "STREAMWATCH.HANDLERS",
    ] {
        err(&mut c, &[cmd, "extra"]);
    }
    // PAUSE and RESUME take one optional pattern (see tests/pause.rs).
    for cmd in ["STREAMWATCH.PAUSE", "STREAMWATCH.RESUME"] {
        err(&mut c, &[cmd, "extra", "more"]);
    }
    ok(&mut c, &["PING"]);
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(0));
}

#[test]
fn module_unload_is_refused_and_the_server_keeps_running() {
    let s = Server::builder(&simple_config("mu:*"))
        .redis_args(&["--enable-module-command", "yes"])
        .start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "mu:a", "f", "1"]);
    assert_workers(&s, &mut c, &[("mu:a", "f", "1")]);
    let e = run(&mut c, &["MODULE", "UNLOAD", "streamwatch"]).unwrap_err();
    assert!(e.to_string().contains("Error unloading module"), "{e}");
    assert!(s.log().contains("streamwatch cannot be unloaded"));
    ok(&mut c, &["HSET", "mu:a", "f", "2"]);
    assert_workers(&s, &mut c, &[("mu:a", "f", "2")]);
}

#[test]
fn events_go_to_db_0_whatever_db_the_job_is_in() {
    let s = Server::start(&format!(
        "{}\n{}",
        long_handler("w", ""),
        watch_toml("d5:*", "w", Some("5"))
    ));
    let mut c5 = s.conn_db(5);
    ok(&mut c5, &["HSET", "d5:a", "f", "1"]);
    let mut c = s.conn();
    assert_workers(&s, &mut c, &[("d5:a", "f", "1")]);
    wait_until("started event in db 0", WAIT, || {
        !events_of(&mut c, "started", "d5:a", Some("f")).is_empty()
    });
    assert_eq!(
        vint(&ok(&mut c5, &["EXISTS", "streamwatch:events"])),
        Some(0)
    );
}

/// An ACL user that may read job status but not change watches. Every server: by
/// command; where modules can add ACL categories (Valkey): `+@streamwatch -@admin`.
/// (tests/acl.rs has the rest: keys, the watches key, Redis 7.0's missing categories.)
#[test]
fn acl_user_can_read_status_but_not_change_watches() {
    let s = Server::start(&simple_config("acl:*"));
    let mut admin = s.conn();
    ok(&mut admin, &["HSET", "acl:k", "f", "1"]);
    assert_workers(&s, &mut admin, &[("acl:k", "f", "1")]);
    let by_command = [
        "+streamwatch.jobs",
        "+streamwatch.job",
        "+streamwatch.watches",
        "+streamwatch.handlers",
        "+streamwatch.status",
        "+info",
    ];
    let mut users = vec![("viewer", by_command.to_vec())];
    if run(&mut admin, &["ACL", "CAT", "streamwatch"]).is_ok() {
        users.push(("viewer2", vec!["+@streamwatch", "-@admin"]));
    }
    for (user, rules) in users {
        let mut args = vec!["ACL", "SETUSER", user, "on", ">pw", "~*"];
        args.extend(rules);
        ok(&mut admin, &args);
        let mut c = s.conn();
        ok(&mut c, &["AUTH", user, "pw"]);
        assert_eq!(jobs(&mut c).len(), 1, "{user} reads jobs");
        assert!(job(&mut c, "acl:k", "f").is_some());
        ok(&mut c, &["STREAMWATCH.STATUS"]);
        for cmd in [
            &["STREAMWATCH.WATCH", "x:*", "HANDLER", "w"][..],
            &["STREAMWATCH.UNWATCH", "acl:*"],
            &["STREAMWATCH.PAUSE"],
            &["STREAMWATCH.RESUME"],
            &["STREAMWATCH.RECONCILE"],
            &["STREAMWATCH.RESTART", "acl:k", "f"],
        ] {
            let e = run(&mut c, cmd).unwrap_err();
            assert_eq!(e.code(), Some("NOPERM"), "{user} {cmd:?}: {e}");
        }
    }
    assert_workers(&s, &mut admin, &[("acl:k", "f", "1")]);
}

/// A 100,000-field HSET with `max-jobs 50`: 50 run, the rest are counted, the server
/// keeps answering, and removing the key clears it all.
#[test]
fn max_jobs_caps_a_100000_field_hset() {
    let s = Server::builder(&format!(
        "[handler.bare]\ncommand = [\"/bin/sleep\", \"1000\"]\nstop-grace-ms = 100\n\n{}",
        watch_toml("big", "bare", None)
    ))
    .module_arg("max-jobs", "50")
    .start();
    let mut c = s.conn();
    let mut hset = redis::cmd("HSET");
    hset.arg("big");
    for i in 0..100_000 {
        hset.arg(format!("f{i}")).arg("v");
    }
    let added: i64 = hset.query(&mut c).unwrap();
    assert_eq!(added, 100_000);
    let counts = |c: &mut redis::Connection| {
        let st = to_map(&ok(c, &["STREAMWATCH.STATUS"]));
        (
            get_int(&to_map(st.get("jobs").unwrap()), "running"),
            get_int(&st, "jobs_over_limit"),
        )
    };
    wait_until("50 running, the rest counted", WAIT, || {
        counts(&mut c) == (Some(50), Some(99_950))
    });
    assert_eq!(ok(&mut c, &["PING"]), Value::SimpleString("PONG".into()));
    ok(&mut c, &["DEL", "big"]);
    wait_until("all gone", WAIT, || {
        counts(&mut c) == (Some(0), Some(0)) && jobs(&mut c).is_empty()
    });
    wait_until("no worker process left", WAIT, || {
        !s.descendants()
            .iter()
            .any(|d| d.cmdline.first().map(String::as_str) == Some("/bin/sleep"))
    });
}

/// A bug that panics, in a command or on the supervisor thread, costs an error reply
/// or a log line, never the server. Needs the `panic-test` build that `make test`
/// makes (STREAMWATCH_PANIC_MODULE).
#[test]
fn a_panic_never_reaches_redis() {
    let module = std::env::var("STREAMWATCH_PANIC_MODULE")
        .expect("run through `make test`: STREAMWATCH_PANIC_MODULE names the panic-test build");
    let s = Server::builder(&simple_config("pt:*"))
        .module_path(module.into())
        .start();
    let mut c = s.conn();
    let e = err(&mut c, &["STREAMWATCH.STATUS", "PANIC"]);
    assert!(e.contains("panic-test: a bug in a command"), "{e}");
    assert_eq!(ok(&mut c, &["PING"]), Value::SimpleString("PONG".into()));

    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "panic-test:*", "HANDLER", "w"],
    );
    ok(&mut c, &["HSET", "panic-test:supervisor", "f", "1"]);
    wait_until("the supervisor's panic is logged", WAIT, || {
        s.log().contains("panic-test: a bug in the supervisor")
    });
    // The supervisor thread lives on.
    ok(&mut c, &["HSET", "pt:a", "f", "1"]);
    assert_workers(&s, &mut c, &[("pt:a", "f", "1")]);
}

/// Hostile values in every option slot of every command: huge and negative numbers,
/// non-UTF-8 bytes, empty strings. Each is an `ERR` that names the option (or, where the
/// value is a free-form name, a clean reply), and the server stays up.
#[test]
fn hostile_option_values_are_errors_naming_the_option() {
    // `h` for hash watches, `s` (no hash placeholder) for stream watches.
    let stream = format!("[handler.s]\ncommand = [\"/bin/true\", \"{TAG}\", \"{{id}}\"]\n");
    let s = Server::start(&format!("{}{stream}", long_handler("h", "")));
    let mut c = s.conn();
    let hostile: [&[u8]; 5] = [
        b"99999999999999999999999",
        b"-5",
        b"\xff\xfe\x00",
        b"",
        b"0",
    ];
    let w = "STREAMWATCH.WATCH";
    // (command prefix, option) where the option takes a number or a keyword.
    let slots: &[(&[&str], &str)] = &[
        (&[w, "p", "HANDLER", "h"], "DB"),
        (&[w, "p", "HANDLER", "h"], "TYPE"),
        (&[w, "p", "HANDLER", "h"], "ONCHANGE"),
        (&[w, "p", "HANDLER", "s", "TYPE", "stream"], "CONCURRENCY"),
        (&[w, "p", "HANDLER", "s", "TYPE", "stream"], "MAX-ATTEMPTS"),
        (&[w, "p", "HANDLER", "s", "TYPE", "stream"], "GROUP"),
        (&[w, "p", "HANDLER", "s", "TYPE", "stream"], "DEADLETTER"),
        (&[w, "p"], "HANDLER"),
        (&["STREAMWATCH.JOBS"], "COUNT"),
        (&["STREAMWATCH.JOBS"], "STATE"),
        (&["STREAMWATCH.JOB", "k", "f"], "DB"),
        (&["STREAMWATCH.RESTART", "k", "f"], "DB"),
    ];
    for (prefix, opt) in slots {
        for value in hostile {
            let mut cmd = redis::cmd(prefix[0]);
            for a in &prefix[1..] {
                cmd.arg(*a);
            }
            cmd.arg(*opt).arg(value);
            match cmd.query::<redis::Value>(&mut c) {
                Ok(v) => {
                    // Only a valid value may pass: "0" for DB, a UTF-8 name for GROUP
                    // or DEADLETTER. Undo a watch it made.
                    let valid = value == b"0" && *opt == "DB"
                        || matches!(*opt, "GROUP" | "DEADLETTER")
                            && !value.is_empty()
                            && std::str::from_utf8(value).is_ok();
                    assert!(valid, "{prefix:?} {opt} {value:?} was accepted: {v:?}");
                    let _ = run(&mut c, &["STREAMWATCH.UNWATCH", "p"]);
                }
                Err(e) => {
                    assert_eq!(e.code(), Some("ERR"), "{prefix:?} {opt} {value:?}: {e:?}");
                    let text = e.detail().unwrap_or_default().to_string();
                    assert!(
                        text.contains(opt) || *opt == "HANDLER" && text.contains("handler"),
                        "{prefix:?} {opt} {value:?}: error {text:?} does not name {opt}"
                    );
                }
            }
        }
    }
    // Positional arguments: non-UTF-8 and empty patterns, keys and fields.
    for value in hostile {
        let r: redis::RedisResult<redis::Value> =
            redis::cmd("STREAMWATCH.UNWATCH").arg(value).query(&mut c);
        assert!(r.is_err(), "UNWATCH {value:?}");
        let r: redis::RedisResult<redis::Value> = redis::cmd("STREAMWATCH.JOB")
            .arg(value)
            .arg(value)
            .query(&mut c);
        assert_eq!(r.ok(), Some(redis::Value::Nil), "JOB {value:?}");
    }
    assert_eq!(ok(&mut c, &["PING"]), Value::SimpleString("PONG".into()));
}

/// The flags Redis reports for each command: readers are `readonly`; what changes what
/// runs is `admin`; WATCH and UNWATCH also write the watches store (WATCH `denyoom`).
#[test]
fn command_flags_match_what_each_command_does() {
    let s = Server::start(&long_handler("h", ""));
    let mut c = s.conn();
    let flags_of = |c: &mut redis::Connection, name: &str| -> Vec<String> {
        let info = to_array(&ok(c, &["COMMAND", "INFO", name]));
        let entry = to_array(&info[0]);
        to_array(&entry[2]).iter().map(vstr).collect()
    };
    let expect: [(&str, &[&str]); 11] = [
        ("streamwatch.watch", &["admin", "write", "denyoom"]),
        ("streamwatch.unwatch", &["admin", "write"]),
        ("streamwatch.restart", &["admin"]),
        ("streamwatch.pause", &["admin"]),
        ("streamwatch.resume", &["admin"]),
        ("streamwatch.reconcile", &["admin"]),
        ("streamwatch.watches", &["readonly"]),
        ("streamwatch.handlers", &["readonly"]),
        ("streamwatch.jobs", &["readonly"]),
        ("streamwatch.job", &["readonly"]),
        ("streamwatch.status", &["readonly"]),
    ];
    for (name, want) in expect {
        let got = flags_of(&mut c, name);
        for f in want {
            assert!(got.iter().any(|g| g == f), "{name}: {f} not in {got:?}");
        }
        let writes = got.iter().any(|g| g == "write");
        assert_eq!(writes, want.contains(&"write"), "{name}: {got:?}");
        let admin = got.iter().any(|g| g == "admin");
        assert_eq!(admin, want.contains(&"admin"), "{name}: {got:?}");
    }
    // While the server refuses writes (no replica for `min-replicas-to-write`), an
    // operator can still pause and resume jobs; WATCH, which writes, is refused.
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let e = run(&mut c, &["STREAMWATCH.WATCH", "x:*", "HANDLER", "h"]).unwrap_err();
    assert_eq!(e.code(), Some("NOREPLICAS"), "{e}");
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
}
