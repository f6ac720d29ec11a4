//! `STREAMWATCH.RELOAD` (issue 19): the config file is read again while the server
//! runs. The jobs of a handler whose definition changed restart (at most `reload-batch`
//! at a time), untouched jobs keep their pids, watches added to or removed from the
//! file follow, and a bad file changes nothing and says where it is bad.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Rewrites the server's config file (as an operator edits it) with `toml`.
fn rewrite(s: &Server, toml: &str) {
    std::fs::write(s.config_path(), toml.replace(TAG, s.tag())).expect("write config");
}

fn reload(c: &mut redis::Connection) -> Map {
    to_map(&ok(c, &["STREAMWATCH.RELOAD"]))
}

fn names(m: &Map, k: &str) -> Vec<String> {
    to_array(&m[k]).iter().map(vstr).collect()
}

/// Two hash handlers: `a` (its workers print `a1` first) and `b`.
fn two_handlers(a_word: &str, a_extra: &str) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        sh_handler(
            "a",
            &format!("echo {a_word}; {LONG_SCRIPT}"),
            &format!("stop-grace-ms = 500\n{a_extra}")
        ),
        long_handler("b", "stop-grace-ms = 500"),
        watch_toml("ra:*", "a", None),
        watch_toml("rb:*", "b", None),
    )
}

/// The pids of the running jobs of `key`, by field.
fn pids(c: &mut redis::Connection, key: &str, fields: &[&str]) -> BTreeMap<String, u32> {
    fields
        .iter()
        .map(|f| (f.to_string(), running_pid(c, key, f)))
        .collect()
}

#[test]
fn a_changed_handler_restarts_its_jobs_and_untouched_jobs_keep_their_pids() {
    let toml = two_handlers("a1", "");
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f1", "x", "f2", "y"]);
    ok(&mut c, &["HSET", "rb:k", "g1", "x", "g2", "y"]);
    let a_before = pids(&mut c, "ra:k", &["f1", "f2"]);
    let b_before = pids(&mut c, "rb:k", &["g1", "g2"]);

    // Only the `a` handler's script changes.
    rewrite(&s, &two_handlers("a2", ""));
    let r = reload(&mut c);
    assert_eq!(names(&r, "handlers_changed"), vec!["a"], "{r:?}");
    assert!(names(&r, "handlers_added").is_empty(), "{r:?}");
    assert!(names(&r, "watches_added").is_empty(), "{r:?}");
    assert_eq!(get_int(&r, "jobs_restarting"), Some(2), "{r:?}");

    for (f, old) in &a_before {
        let new = wait_for(&format!("ra:k/{f} restarted"), WAIT, || {
            let pid = running_pid(&mut c, "ra:k", f);
            (pid != *old).then_some(pid)
        });
        let argv = cmdline(new);
        assert!(
            String::from_utf8_lossy(&argv[2]).starts_with("echo a2;"),
            "the new run has the new command: {argv:?}"
        );
        wait_until("the new run's output", WAIT, || {
            job_log(&mut c, "ra:k", f).iter().any(|l| l == "a2")
        });
    }
    assert_eq!(
        pids(&mut c, "rb:k", &["g1", "g2"]),
        b_before,
        "b's jobs untouched"
    );
    for pid in b_before.values() {
        assert!(pid_alive(*pid));
    }
    // The restarts are restarts, not failures.
    for f in ["f1", "f2"] {
        let j = job(&mut c, "ra:k", f).expect("job");
        assert_eq!(get_int(&j, "failures"), Some(0), "{j:?}");
    }

    // The same file again: nothing changes.
    let r = reload(&mut c);
    assert!(names(&r, "handlers_changed").is_empty(), "{r:?}");
    assert_eq!(get_int(&r, "jobs_restarting"), Some(0), "{r:?}");
}

#[test]
fn a_bad_file_changes_nothing_and_the_error_names_line_and_key() {
    let toml = two_handlers("a1", "");
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f", "x"]);
    let before = running_pid(&mut c, "ra:k", "f");

    // A changed handler with an unknown key further down: nothing of it applies.
    let bad = format!(
        "{}\n[handler.c]\ncommand = [\"/bin/true\"]\nbogus-key = 1\n",
        two_handlers("a2", "")
    );
    rewrite(&s, &bad);
    let e = err(&mut c, &["STREAMWATCH.RELOAD"]);
    let path = s.config_path().display().to_string();
    assert!(e.starts_with("ERR "), "{e}");
    assert!(e.contains(&path), "names the file: {e}");
    assert!(e.contains("line "), "names the line: {e}");
    assert!(e.contains("bogus-key"), "names the key: {e}");
    assert!(e.contains("nothing changed"), "{e}");

    // Not TOML at all.
    rewrite(&s, "[handler.a\ncommand = 1\n");
    let e = err(&mut c, &["STREAMWATCH.RELOAD"]);
    assert!(e.contains("line 1"), "{e}");

    assert_eq!(
        running_pid(&mut c, "ra:k", "f"),
        before,
        "the job kept running"
    );
    let handlers: Vec<String> = parse_maps(&ok(&mut c, &["STREAMWATCH.HANDLERS"]))
        .iter()
        .map(|h| get_str(h, "name"))
        .collect();
    assert_eq!(handlers, vec!["a", "b"], "the handlers are the old ones");
    // The old definition still applies to new jobs.
    ok(&mut c, &["HSET", "ra:k", "g", "x"]);
    let pid = running_pid(&mut c, "ra:k", "g");
    assert!(String::from_utf8_lossy(&cmdline(pid)[2]).starts_with("echo a1;"));
}

#[test]
fn watches_added_and_removed_in_the_file_follow() {
    let toml = two_handlers("a1", "");
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f", "x"]);
    ok(&mut c, &["HSET", "rb:k", "g", "x"]);
    ok(&mut c, &["HSET", "rc:k", "h", "x"]);
    let a = running_pid(&mut c, "ra:k", "f");
    let b = running_pid(&mut c, "rb:k", "g");

    // rb:* goes, rc:* comes; ra:* stays as it was.
    let next = format!(
        "{}\n{}\n{}\n{}",
        sh_handler(
            "a",
            &format!("echo a1; {LONG_SCRIPT}"),
            "stop-grace-ms = 500\n"
        ),
        long_handler("b", "stop-grace-ms = 500"),
        watch_toml("ra:*", "a", None),
        watch_toml("rc:*", "b", None),
    );
    rewrite(&s, &next);
    let r = reload(&mut c);
    assert_eq!(names(&r, "watches_added"), vec!["rc:*"], "{r:?}");
    assert_eq!(names(&r, "watches_removed"), vec!["rb:*"], "{r:?}");
    assert!(names(&r, "handlers_changed").is_empty(), "{r:?}");

    running_pid(&mut c, "rc:k", "h");
    wait_gone("rb:k's worker", &[b]);
    wait_until("rb:k has no job", WAIT, || {
        job(&mut c, "rb:k", "g").is_none()
    });
    assert_eq!(running_pid(&mut c, "ra:k", "f"), a, "ra:k untouched");
    let patterns: Vec<String> = parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"]))
        .iter()
        .map(|w| get_str(w, "pattern"))
        .collect();
    assert_eq!(patterns, vec!["ra:*", "rc:*"]);
}

#[test]
fn reload_batch_restarts_one_job_at_a_time() {
    // A worker that takes a while to stop, so two restarts at once would overlap.
    let slow = |word: &str| {
        format!(
            "{}\n{}",
            sh_handler(
                "a",
                &format!(
                    r#"echo "start $3 {word}"; trap 'sleep 0.3; exit 0' TERM; while :; do sleep 1; done"#
                ),
                "stop-grace-ms = 3000"
            ),
            watch_toml("ra:*", "a", None)
        )
    };
    let s = Server::builder(&slow("one"))
        .module_arg("reload-batch", "1")
        .start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f1", "x", "f2", "y", "f3", "z"]);
    let before = pids(&mut c, "ra:k", &["f1", "f2", "f3"]);
    let from = events(&mut c).len();

    rewrite(&s, &slow("two"));
    let r = reload(&mut c);
    assert_eq!(get_int(&r, "jobs_restarting"), Some(3), "{r:?}");
    for (f, old) in &before {
        wait_until(&format!("ra:k/{f} restarted"), WAIT, || {
            running_pid(&mut c, "ra:k", f) != *old
        });
    }
    // In the events: each job's old run ends and its new one starts before the next
    // job's old run ends.
    let seq: Vec<(String, String)> = events(&mut c)[from..]
        .iter()
        .filter(|e| e.get("key").map(String::as_str) == Some("ra:k"))
        .map(|e| (e["event"].clone(), e["field"].clone()))
        .collect();
    let ends: Vec<usize> = (0..seq.len()).filter(|&i| seq[i].0 == "exited").collect();
    assert_eq!(ends.len(), 3, "{seq:?}");
    for pair in ends.windows(2) {
        let field = &seq[pair[0]].1;
        let restarted = seq[pair[0]..pair[1]]
            .iter()
            .any(|(e, f)| e == "started" && f == field);
        assert!(
            restarted,
            "{field} was running again before the next stopped: {seq:?}"
        );
    }
    assert_eq!(
        ok_str(&mut c, &["CONFIG", "GET", "streamwatch.reload-batch"]),
        "1"
    );
}

fn ok_str(c: &mut redis::Connection, args: &[&str]) -> String {
    to_array(&ok(c, args)).get(1).map(vstr).unwrap_or_default()
}

#[test]
fn a_pool_turns_over_to_the_new_definition_and_keeps_serving() {
    let dir = TempDir::new();
    let pool = |word: &str| {
        let script = format!(
            r#"while IFS= read -r line; do id=${{line#*\"id\":\"}}; id=${{id%%\"*}}; echo "$id {word} $$" >> {}/done; printf '{{"id":"%s","ok":true}}\n' "$id" >&3; done"#,
            dir.path().display()
        );
        format!(
            "[handler.pw]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\"]\npool = 2\n\n[[watch]]\npattern = \"rq\"\nhandler = \"pw\"\ntype = \"stream\"\n"
        )
    };
    let s = Server::start(&pool("old"));
    let mut c = s.conn();
    let first = xadd(&mut c, "rq", &[("n", "1")]);
    wait_drained(&mut c, "rq");
    let done = dir.path().join("done");
    assert!(lines(&done)
        .iter()
        .any(|l| l.starts_with(&format!("{first} old"))));

    rewrite(&s, &pool("new"));
    let r = reload(&mut c);
    assert_eq!(names(&r, "handlers_changed"), vec!["pw"], "{r:?}");
    let id = xadd(&mut c, "rq", &[("n", "2")]);
    wait_drained(&mut c, "rq");
    wait_until(
        "the entry after the reload ran on a new worker",
        WAIT,
        || {
            lines(&done)
                .iter()
                .any(|l| l.starts_with(&format!("{id} new")))
        },
    );
}

#[test]
fn a_file_that_drops_a_handler_a_command_watch_uses_is_refused() {
    let toml = two_handlers("a1", "");
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.WATCH", "rx:*", "HANDLER", "b"]);
    ok(&mut c, &["HSET", "rx:k", "f", "x"]);
    let pid = running_pid(&mut c, "rx:k", "f");

    // `b` is gone from the file.
    let next = format!(
        "{}\n{}",
        sh_handler(
            "a",
            &format!("echo a1; {LONG_SCRIPT}"),
            "stop-grace-ms = 500\n"
        ),
        watch_toml("ra:*", "a", None),
    );
    rewrite(&s, &next);
    let e = err(&mut c, &["STREAMWATCH.RELOAD"]);
    assert!(e.contains("'b'") && e.contains("'rx:*'"), "{e}");
    assert!(e.contains("nothing changed"), "{e}");
    assert_eq!(running_pid(&mut c, "rx:k", "f"), pid);
    assert_eq!(
        parse_maps(&ok(&mut c, &["STREAMWATCH.WATCHES"])).len(),
        3,
        "the watches are the old ones"
    );

    // Arguments are refused by name.
    let e = err(&mut c, &["STREAMWATCH.RELOAD", "now"]);
    assert!(e.starts_with("ERR"), "{e}");
}

#[test]
fn a_paused_watch_stays_paused_across_a_reload_and_resumes_with_the_new_handler() {
    let s = Server::start(&two_handlers("a1", ""));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f", "x"]);
    let old = running_pid(&mut c, "ra:k", "f");
    ok(&mut c, &["STREAMWATCH.PAUSE", "ra:*"]);
    wait_gone("the paused watch's worker", &[old]);

    rewrite(&s, &two_handlers("a2", ""));
    let r = reload(&mut c);
    assert_eq!(names(&r, "handlers_changed"), vec!["a"], "{r:?}");
    ok(&mut c, &["HSET", "ra:k", "g", "y"]);
    let w = watch_map(&mut c, "ra:*");
    assert_eq!(vint(&w["paused"]), Some(1), "{w:?}");
    assert!(
        job(&mut c, "ra:k", "g").is_none(),
        "nothing runs while paused"
    );

    ok(&mut c, &["STREAMWATCH.RESUME", "ra:*"]);
    for f in ["f", "g"] {
        let pid = running_pid(&mut c, "ra:k", f);
        assert!(String::from_utf8_lossy(&cmdline(pid)[2]).starts_with("echo a2;"));
    }
}

#[test]
fn a_reload_during_a_rollout_leaves_every_job_on_the_newest_definition() {
    // Many jobs restarting at once (reload-batch 0), and a second RELOAD while the
    // first one's new runs are starting: a job whose run was started from the middle
    // definition must restart again (it once stayed on it for good).
    const N: usize = 300;
    let file = |word: &str| {
        format!(
            "{}\n{}",
            sh_handler(
                "a",
                &format!("echo {word}; trap 'exit 0' TERM; sleep 100000 & wait"),
                "stop-grace-ms = 2000"
            ),
            watch_toml("ra:*", "a", None)
        )
    };
    let word_of = |pid: u32| {
        let argv = cmdline(pid);
        let script = argv.get(2).map(|a| String::from_utf8_lossy(a).into_owned());
        script.and_then(|s| s.split(';').next().map(str::to_string))
    };
    let s = Server::start(&file("w1"));
    let mut c = s.conn();
    let mut hset = vec!["HSET".to_string(), "ra:k".to_string()];
    for i in 0..N {
        hset.push(format!("f{i:04}"));
        hset.push("v".into());
    }
    let hset: Vec<&str> = hset.iter().map(String::as_str).collect();
    ok(&mut c, &hset);
    let running = |c: &mut redis::Connection| -> Vec<u32> {
        jobs_filtered(c, &["KEY", "ra:k", "STATE", "running", "COUNT", "100000"])
            .iter()
            .filter_map(|j| get_int(j, "pid").map(|p| p as u32))
            .collect()
    };
    wait_until("every job running", WAIT, || running(&mut c).len() == N);

    rewrite(&s, &file("w2"));
    reload(&mut c);
    wait_until("a first job running the second definition", WAIT, || {
        running(&mut c)
            .iter()
            .any(|&p| word_of(p).as_deref() == Some("echo w2"))
    });
    rewrite(&s, &file("w3"));
    reload(&mut c);
    wait_until("every job running the third definition", WAIT, || {
        let pids = running(&mut c);
        pids.len() == N
            && pids
                .iter()
                .all(|&p| word_of(p).as_deref() == Some("echo w3"))
    });
}

#[test]
fn a_config_path_that_is_not_a_regular_file_is_refused_at_once() {
    let toml = two_handlers("a1", "");
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ra:k", "f", "x"]);
    let pid = running_pid(&mut c, "ra:k", "f");
    // A FIFO with no writer at the path: reading it would never end.
    let path = s.config_path().to_path_buf();
    std::fs::remove_file(&path).unwrap();
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    let e = err(&mut c, &["STREAMWATCH.RELOAD"]);
    assert!(
        e.contains("not a regular file") && e.contains("nothing changed"),
        "{e}"
    );
    // The supervisor still answers and still starts jobs.
    ok(&mut c, &["HSET", "ra:k", "g", "y"]);
    running_pid(&mut c, "ra:k", "g");
    assert_eq!(running_pid(&mut c, "ra:k", "f"), pid);
    std::fs::remove_file(&path).unwrap();
    rewrite(&s, &toml);
}

/// A stream handler `q` on stream `rq`: per entry, a run that notes `run ID` in
/// `dir/runs` and waits for `dir/go` (then exits 0); or, as a pool of 1, a worker that
/// notes `pool ID` and answers ok at once.
fn per_entry_or_pool(dir: &Path, pool: bool) -> String {
    let d = dir.display();
    let handler = if pool {
        let script = format!(
            r#"while IFS= read -r line; do id=${{line#*\"id\":\"}}; id=${{id%%\"*}}; echo "pool $id" >> {d}/runs; printf '{{"id":"%s","ok":true}}\n' "$id" >&3; done"#
        );
        format!(
            "[handler.q]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\"]\npool = 1\n"
        )
    } else {
        let script = format!(
            r#"echo "run $STREAMWATCH_ID" >> {d}/runs; while [ ! -e {d}/go ]; do sleep 0.05; done"#
        );
        format!("[handler.q]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\"]\n")
    };
    format!("{handler}\n[[watch]]\npattern = \"rq\"\nhandler = \"q\"\ntype = \"stream\"\n")
}

/// A server whose per-entry handler `q` has a run of entry `id` going (it waits for
/// `$dir/go`), when the file turns `q` into a pool and is reloaded; with the run's pid.
fn switched_to_a_pool_mid_run(dir: &Path) -> (Server, redis::Connection, String, u32) {
    let runs = dir.join("runs");
    let s = Server::start(&per_entry_or_pool(dir, false));
    let mut c = s.conn();
    let id = xadd(&mut c, "rq", &[("n", "1")]);
    wait_until("the entry's run started", WAIT, || {
        lines(&runs).contains(&format!("run {id}"))
    });
    let pid = wait_for("the entry's run pid", WAIT, || {
        let j = to_map(&ok(&mut c, &["STREAMWATCH.JOB", "rq", &id]));
        get_int(&j, "pid").map(|p| p as u32)
    });
    rewrite(&s, &per_entry_or_pool(dir, true));
    let r = reload(&mut c);
    assert_eq!(names(&r, "handlers_changed"), vec!["q"], "{r:?}");
    (s, c, id, pid)
}

#[test]
fn a_per_entry_run_in_flight_when_its_handler_becomes_a_pool_is_judged_as_a_run() {
    let dir = TempDir::new();
    let runs = dir.path().join("runs");
    let (_s, mut c, id, _) = switched_to_a_pool_mid_run(dir.path());
    // The run that was going on finishes, exit 0: the entry is done, once. (Its end
    // was once taken for a pool worker's death: a failed attempt, run again.)
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "rq");
    let next = xadd(&mut c, "rq", &[("n", "2")]);
    wait_drained(&mut c, "rq");
    assert_eq!(
        lines(&runs),
        vec![format!("run {id}"), format!("pool {next}")],
        "the first entry ran once, the next one on the pool"
    );
}

#[test]
fn a_per_entry_run_in_flight_when_its_handler_becomes_a_pool_stops_on_pause() {
    let dir = TempDir::new();
    let runs = dir.path().join("runs");
    let (_s, mut c, id, pid) = switched_to_a_pool_mid_run(dir.path());
    ok(&mut c, &["STREAMWATCH.PAUSE", "rq"]);
    // Stopped as a run (it was once sent to a pool worker it never was).
    wait_gone("the paused watch's run", &[pid]);
    ok(&mut c, &["STREAMWATCH.RESUME", "rq"]);
    wait_drained(&mut c, "rq");
    assert_eq!(lines(&runs).last(), Some(&format!("pool {id}")));
}
