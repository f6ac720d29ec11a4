//! A run's spawn request, its end, and the helper's restart delays, by tables.

use super::*;
use crate::config::Restart;
use std::time::Duration;

fn handler(command: &[&str], env: &[(&str, &str)], cwd: Option<&str>) -> Handler {
    Handler {
        name: "h".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        program_as_written: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: cwd.map(str::to_string),
        restart: Restart::Always,
        backoff_initial: Duration::from_millis(250),
        backoff_max: Duration::from_millis(1000),
        stable_after: Duration::from_secs(10),
        max_failures: 0,
        stop_signal: 15,
        stop_signal_name: "TERM".into(),
        stop_grace: Duration::from_millis(1500),
        timeout: Duration::ZERO,
        log_lines: None,
        pool: 0,
        max_requests: 0,
        heartbeat: Duration::ZERO,
        no_restart_exit_codes: Vec::new(),
        limits: Default::default(),
    }
}

fn bytes(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    v.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn the_request_of_a_run() {
    // (command, handler env, vars, STREAMWATCH_* env, stdin) -> (argv, env)
    type Row<'a> = (
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a [u8])],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
    );
    let table: [Row; 5] = [
        // A hash job: key, field, value, db; in argv and in the handler's env.
        (
            &["run", "{key}/{field}", "--v={value}", "{db}", "{nope}"],
            &[("V", "{value}"), ("PLAIN", "x")],
            &[
                ("{key}", b"k"),
                ("{field}", b"f"),
                ("{value}", b"val"),
                ("{db}", b"0"),
            ],
            &[
                ("STREAMWATCH_KEY", "k"),
                ("STREAMWATCH_DB", "0"),
                ("STREAMWATCH_FIELD", "f"),
            ],
            None,
            &["run", "k/f", "--v=val", "0", "{nope}"],
            &[
                ("V", "val"),
                ("PLAIN", "x"),
                ("STREAMWATCH_KEY", "k"),
                ("STREAMWATCH_DB", "0"),
                ("STREAMWATCH_FIELD", "f"),
            ],
        ),
        // A stream entry: key, id, db and its fields; stdin is passed on.
        (
            &["w", "{id}", "{field:a}"],
            &[("A", "{field:a}-{key}")],
            &[
                ("{key}", b"s"),
                ("{id}", b"1-0"),
                ("{db}", b"2"),
                ("{field:a}", b"1"),
            ],
            &[
                ("STREAMWATCH_KEY", "s"),
                ("STREAMWATCH_DB", "2"),
                ("STREAMWATCH_ID", "1-0"),
            ],
            Some("{\"a\":\"1\"}"),
            &["w", "1-0", "1"],
            &[
                ("A", "1-s"),
                ("STREAMWATCH_KEY", "s"),
                ("STREAMWATCH_DB", "2"),
                ("STREAMWATCH_ID", "1-0"),
            ],
        ),
        // A value holding a placeholder is not expanded again.
        (
            &["{value}"],
            &[],
            &[("{value}", b"{key}"), ("{key}", b"k")],
            &[],
            None,
            &["{key}"],
            &[],
        ),
        // No handler env: only the STREAMWATCH_* variables.
        (
            &["x"],
            &[],
            &[],
            &[("STREAMWATCH_KEY", "k")],
            None,
            &["x"],
            &[("STREAMWATCH_KEY", "k")],
        ),
        // The handler's own variable of the same name wins (a URL with a password).
        (
            &["x"],
            &[("STREAMWATCH_REDIS_URL", "redis://:pw@h:1/{db}")],
            &[("{db}", b"2")],
            &[
                ("STREAMWATCH_KEY", "k"),
                ("STREAMWATCH_REDIS_URL", "redis://127.0.0.1:6379/2"),
            ],
            None,
            &["x"],
            &[
                ("STREAMWATCH_REDIS_URL", "redis://:pw@h:1/2"),
                ("STREAMWATCH_KEY", "k"),
            ],
        ),
    ];
    for (i, (command, env, vars, extra, stdin, argv_out, env_out)) in table.into_iter().enumerate()
    {
        let h = handler(command, env, Some("/tmp"));
        let stdin = stdin.map(|s| s.as_bytes().to_vec());
        let got = spawn_request(&h, 7 + i as u64, vars, pairs(extra), stdin.clone());
        let want = Request::Spawn {
            run: 7 + i as u64,
            argv: bytes(argv_out),
            program: None,
            env: pairs(env_out),
            cwd: Some(b"/tmp".to_vec()),
            stdin,
            stop_signal: 15,
            stop_grace_ms: 1500,
            keep_stdin: false,
            replies: false,
            limits: crate::protocol::Limits {
                oom_score_adj: Some(1000),
                ..Default::default()
            },
        };
        assert_eq!(got, Ok(want), "row {i}");
    }
}

#[test]
fn a_missing_entry_field_is_a_spawn_error_naming_it() {
    let h = handler(&["w", "{field:url}"], &[("N", "{field:name}")], None);
    let vars: &[(&str, &[u8])] = &[("{key}", b"q"), ("{field:url}", b"u")];
    assert_eq!(
        spawn_request(&h, 1, vars, Vec::new(), None),
        Err("the entry has no field 'name' (the handler's placeholder {field:name})".into())
    );
}

#[test]
fn no_cwd_stays_none() {
    let h = handler(&["x"], &[], None);
    match spawn_request(&h, 1, &[], Vec::new(), None) {
        Ok(Request::Spawn { cwd, .. }) => assert_eq!(cwd, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_cannot_be_spawned_says_why() {
    let nul: &[u8] = b"a\0b";
    // (command, handler env, STREAMWATCH_* env) -> the reason
    type Row<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], Env, &'a str);
    type Env = Vec<(Vec<u8>, Vec<u8>)>;
    let table: [Row; 3] = [
        (
            &["run", "{value}"],
            &[],
            Vec::new(),
            "argument 1 contains a NUL byte, which no argv can carry",
        ),
        (
            &["run"],
            &[("V", "{value}")],
            Vec::new(),
            "environment variable V contains a NUL byte, which no environment can carry",
        ),
        (
            &["run"],
            &[],
            vec![(b"STREAMWATCH_KEY".to_vec(), nul.to_vec())],
            "environment variable STREAMWATCH_KEY contains a NUL byte, which no environment can carry",
        ),
    ];
    for (command, env, extra, why) in table {
        let h = handler(command, env, None);
        let got = spawn_request(&h, 1, &[("{value}", nul)], extra, None);
        assert_eq!(got, Err(why.to_string()));
    }
}

#[test]
fn helper_restarts_wait_longer_after_each_failure_in_a_row() {
    let ms = |n| helper_delay(n).as_millis();
    let table = [
        (1, 0),
        (2, 200),
        (3, 300),
        (10, 1000),
        (50, 5000),
        (1000, 5000),
    ];
    for (failures, want) in table {
        assert_eq!(ms(failures), want, "after {failures} failures");
    }
}

#[test]
fn what_a_run_end_means() {
    let run = Run::new(1);
    let t = Some(Duration::from_millis(50));
    // (end, timed out) -> (exit, error, event, fields)
    type Row = (
        End,
        Option<Duration>,
        Option<i64>,
        Option<&'static str>,
        &'static str,
        &'static [&'static str],
    );
    let table: [Row; 5] = [
        (
            End::Status(0),
            None,
            Some(0),
            None,
            "exited",
            &["pid", "code"],
        ),
        (
            End::Status(3 << 8),
            None,
            Some(3),
            Some("exit code 3"),
            "exited",
            &["pid", "code"],
        ),
        (
            End::Status(9),
            None,
            Some(-9),
            Some("killed by signal 9"),
            "exited",
            &["pid", "signal"],
        ),
        (
            End::Status(0),
            t,
            Some(0),
            Some("timed out after 50 ms"),
            "exited",
            &["pid", "code"],
        ),
        (
            End::SpawnError("no".into()),
            None,
            None,
            Some("no"),
            "spawn-error",
            &[],
        ),
    ];
    for (i, (end, timed_out, exit, error, event, fields)) in table.into_iter().enumerate() {
        let e = run_end(&run, end, timed_out);
        assert_eq!(e.exit, exit, "row {i}");
        assert_eq!(e.error.as_deref(), error, "row {i}");
        assert_eq!(e.event, event, "row {i}");
        let names: Vec<&str> = e.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, fields, "row {i}");
    }
    assert_eq!(exit_number(7 << 8), 7);
    assert_eq!(exit_number(9), -9);
}
