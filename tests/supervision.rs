//! Supervision of worker processes: restart policies and backoff, exact exit
//! statuses (also while Redis has a fork child), stop signals and grace, process
//! groups, no zombies or leaked processes, PAUSE/RESUME, RESTART, captured output,
//! the lifecycle event stream, and byte-exact arguments (no shell involved).

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(handler: &str, script: &str, extra: &str, pattern: &str) -> String {
    format!(
        "{}\n{}",
        sh_handler(handler, script, extra),
        watch_toml(pattern, handler, None)
    )
}

fn state(c: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    job(c, key, field).map(|j| get_str(&j, "state"))
}

fn codes(evs: &[HashMap<String, String>]) -> Vec<String> {
    evs.iter()
        .map(|e| e.get("code").cloned().unwrap_or_else(|| format!("{e:?}")))
        .collect()
}

fn is_sigkill(s: Option<&String>) -> bool {
    matches!(s.map(String::as_str), Some("9" | "KILL" | "SIGKILL"))
}

#[test]
fn restart_always_crashing_worker_fails_after_max_failures() {
    let s = Server::start(&cfg(
        "crash",
        "exit 3",
        "restart = \"always\"\nbackoff-initial-ms = 50\nmax-failures = 3",
        "cr:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "cr:k", "f", "v"]);
    wait_until("job reaches state failed", WAIT, || {
        state(&mut c, "cr:k", "f").as_deref() == Some("failed")
    });
    let j = job(&mut c, "cr:k", "f").unwrap();
    assert_eq!(get_int(&j, "failures"), Some(3), "{j:?}");
    assert_eq!(get_int(&j, "runs"), Some(3), "{j:?}");
    assert_eq!(get_int(&j, "last_exit"), Some(3), "{j:?}");
    assert_eq!(get_int(&j, "pid"), None, "{j:?}");
    wait_until("one failed event", WAIT, || {
        events_of(&mut c, "failed", "cr:k", Some("f")).len() == 1
    });
    let exited = events_of(&mut c, "exited", "cr:k", Some("f"));
    assert_eq!(codes(&exited), vec!["3", "3", "3"]);
    let backoffs = events_of(&mut c, "backoff", "cr:k", Some("f"));
    let delays: Vec<String> = backoffs
        .iter()
        .map(|e| e.get("delay_ms").cloned().unwrap_or_default())
        .collect();
    assert_eq!(delays, vec!["50", "100"], "{backoffs:?}");
    // Gave up: no new run after a later change elsewhere has been handled.
    ok(&mut c, &["HSET", "cr:other", "g", "1"]);
    wait_until("other job failed too", WAIT, || {
        state(&mut c, "cr:other", "g").as_deref() == Some("failed")
    });
    let j = job(&mut c, "cr:k", "f").unwrap();
    assert_eq!(get_int(&j, "runs"), Some(3), "{j:?}");
    assert_eq!(get_str(&j, "state"), "failed");
}

#[test]
fn backoff_doubles_up_to_max() {
    let s = Server::start(&cfg(
        "crash",
        "exit 1",
        "restart = \"always\"\nbackoff-initial-ms = 40\nbackoff-max-ms = 100\nmax-failures = 5",
        "bo:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "bo:k", "f", "v"]);
    wait_until("job reaches state failed", WAIT, || {
        state(&mut c, "bo:k", "f").as_deref() == Some("failed")
    });
    let delays: Vec<String> = events_of(&mut c, "backoff", "bo:k", Some("f"))
        .iter()
        .map(|e| e.get("delay_ms").cloned().unwrap_or_default())
        .collect();
    assert_eq!(delays, vec!["40", "80", "100", "100"]);
}

#[test]
fn restart_never_exit_0_ends_exited() {
    let s = Server::start(&cfg(
        "once",
        "echo done; exit 0",
        "restart = \"never\"",
        "nv:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "nv:k", "f", "v"]);
    wait_until("job reaches state exited", WAIT, || {
        state(&mut c, "nv:k", "f").as_deref() == Some("exited")
    });
    let j = job(&mut c, "nv:k", "f").unwrap();
    assert_eq!(get_int(&j, "runs"), Some(1), "{j:?}");
    assert_eq!(get_int(&j, "last_exit"), Some(0), "{j:?}");
    assert_eq!(get_int(&j, "pid"), None, "{j:?}");
    assert_eq!(job_log(&mut c, "nv:k", "f"), vec!["done"]);
    wait_eq("its exited event", WAIT, vec!["0".to_string()], || {
        codes(&events_of(&mut c, "exited", "nv:k", Some("f")))
    });
    assert!(events_of(&mut c, "failed", "nv:k", None).is_empty());
    assert!(events_of(&mut c, "backoff", "nv:k", None).is_empty());
}

#[test]
fn restart_on_failure_exit_0_ends_exited() {
    let s = Server::start(&cfg(
        "once",
        "exit 0",
        "restart = \"on-failure\"\nbackoff-initial-ms = 10",
        "of:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "of:k", "f", "v"]);
    wait_until("job reaches state exited", WAIT, || {
        state(&mut c, "of:k", "f").as_deref() == Some("exited")
    });
    let j = job(&mut c, "of:k", "f").unwrap();
    assert_eq!(get_int(&j, "runs"), Some(1), "{j:?}");
    assert_eq!(get_int(&j, "last_exit"), Some(0), "{j:?}");
    wait_eq("its exited event", WAIT, vec!["0".to_string()], || {
        codes(&events_of(&mut c, "exited", "of:k", Some("f")))
    });
}

#[test]
fn restart_on_failure_exit_1_restarts() {
    let s = Server::start(&cfg(
        "flaky",
        "exit 1",
        "restart = \"on-failure\"\nbackoff-initial-ms = 10\nbackoff-max-ms = 20",
        "of:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "of:k", "f", "v"]);
    wait_until("job ran at least 4 times", WAIT, || {
        job(&mut c, "of:k", "f")
            .and_then(|j| get_int(&j, "runs"))
            .unwrap_or(0)
            >= 4
    });
    let j = job(&mut c, "of:k", "f").unwrap();
    assert_eq!(get_int(&j, "last_exit"), Some(1), "{j:?}");
    assert!(get_int(&j, "failures").unwrap() >= 3, "{j:?}");
    let st = get_str(&j, "state");
    assert!(
        ["starting", "running", "backoff"].contains(&st.as_str()),
        "{j:?}"
    );
    let exited = events_of(&mut c, "exited", "of:k", Some("f"));
    assert!(exited.len() >= 3);
    assert!(codes(&exited).iter().all(|c| c == "1"), "{exited:?}");
}

#[test]
fn killed_worker_reports_signal_and_is_restarted() {
    let s = Server::start(&format!(
        "{}\n{}",
        long_handler("w", "restart = \"always\"\nbackoff-initial-ms = 10"),
        watch_toml("kl:*", "w", None)
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "kl:k", "f", "v"]);
    let pid1 = running_pid(&mut c, "kl:k", "f");
    unsafe {
        libc::kill(pid1 as libc::pid_t, libc::SIGKILL);
    }
    let pid2 = running_pid_other_than(&mut c, "kl:k", "f", pid1);
    assert_ne!(pid1, pid2);
    let j = job(&mut c, "kl:k", "f").unwrap();
    assert_eq!(get_int(&j, "last_exit"), Some(-9), "{j:?}");
    assert_eq!(get_int(&j, "runs"), Some(2), "{j:?}");
    let exited = events_of(&mut c, "exited", "kl:k", Some("f"));
    assert_eq!(exited.len(), 1, "{exited:?}");
    assert!(is_sigkill(exited[0].get("signal")), "{exited:?}");
    assert_workers(&s, &mut c, &[("kl:k", "f", "v")]);
}

fn running_pid_other_than(c: &mut redis::Connection, key: &str, field: &str, old: u32) -> u32 {
    wait_for("job running with a new pid", WAIT, || {
        let j = job(c, key, field)?;
        let pid = get_int(&j, "pid")? as u32;
        (get_str(&j, "state") == "running" && pid != old && pid_alive(pid)).then_some(pid)
    })
}

/// While Redis has a fork child it reaps any child with waitpid(-1); exit codes must
/// still be exact. A worker exits 7 over and over while BGSAVE runs in a loop on a
/// few hundred MB of data.
#[test]
fn exit_codes_exact_during_bgsave_loop() {
    let s = Server::start(&cfg(
        "flap",
        "sleep 0.02; exit 7",
        "restart = \"always\"\nbackoff-initial-ms = 1\nbackoff-max-ms = 1",
        "flap:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["DEBUG", "POPULATE", "3000000", "k", "100"]);
    ok(&mut c, &["HSET", "flap:k", "f", "v"]);
    wait_until("worker started", WAIT, || {
        job(&mut c, "flap:k", "f")
            .and_then(|j| get_int(&j, "runs"))
            .unwrap_or(0)
            >= 1
    });

    let stop = Arc::new(AtomicBool::new(false));
    let saver = {
        let stop = stop.clone();
        let mut c2 = s.conn();
        std::thread::spawn(move || {
            let mut saves = 0;
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && !stop.load(Ordering::SeqCst) {
                if run(&mut c2, &["BGSAVE"]).is_ok() {
                    saves += 1;
                }
                let until = Instant::now() + Duration::from_secs(60);
                while info(&mut c2, "persistence")
                    .get("rdb_bgsave_in_progress")
                    .map(String::as_str)
                    != Some("0")
                {
                    assert!(Instant::now() < until, "BGSAVE did not finish");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            saves
        })
    };
    let saves = saver.join().expect("BGSAVE loop");
    stop.store(true, Ordering::SeqCst);
    assert!(saves >= 2, "only {saves} BGSAVEs ran");

    // The job still cycles after the loop: no exit was lost for good.
    let runs0 = get_int(&job(&mut c, "flap:k", "f").unwrap(), "runs").unwrap();
    wait_until("job keeps restarting after the BGSAVE loop", WAIT, || {
        get_int(&job(&mut c, "flap:k", "f").unwrap(), "runs").unwrap() >= runs0 + 3
    });
    let exited = events_of(&mut c, "exited", "flap:k", Some("f"));
    assert!(exited.len() > 50, "only {} exited events", exited.len());
    let bad: Vec<_> = exited
        .iter()
        .filter(|e| e.get("code").map(String::as_str) != Some("7"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} exited events lack code 7, e.g. {:?}",
        bad.len(),
        exited.len(),
        bad.first()
    );
    let j = job(&mut c, "flap:k", "f").unwrap();
    assert_eq!(get_int(&j, "last_exit"), Some(7), "{j:?}");
    assert!(
        !s.log().contains("unmatched pid"),
        "Redis reaped a worker: log says 'unmatched pid'"
    );
}

#[test]
fn worker_ignoring_term_is_killed_after_grace() {
    let s = Server::start(&cfg(
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
        "stop-grace-ms = 300",
        "sb:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "sb:k", "f", "v"]);
    let pid = running_pid(&mut c, "sb:k", "f");
    wait_until("worker installed its trap", WAIT, || {
        job_log(&mut c, "sb:k", "f").contains(&"ready".to_string())
    });
    ok(&mut c, &["HDEL", "sb:k", "f"]);
    wait_gone("TERM-ignoring worker gone", &[pid]);
    wait_until("exited event", WAIT, || {
        !events_of(&mut c, "exited", "sb:k", Some("f")).is_empty()
    });
    let exited = events_of(&mut c, "exited", "sb:k", Some("f"));
    assert_eq!(exited.len(), 1, "{exited:?}");
    assert!(is_sigkill(exited[0].get("signal")), "{exited:?}");
    assert!(s.tagged_procs().is_empty());
}

#[test]
fn stop_signal_option_is_used() {
    let s = Server::start(&cfg(
        "intw",
        "trap 'exit 42' INT; echo ready; while :; do sleep 1; done",
        "stop-signal = \"INT\"",
        "si:*",
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "si:k", "f", "v"]);
    let pid = running_pid(&mut c, "si:k", "f");
    wait_until("worker installed its trap", WAIT, || {
        job_log(&mut c, "si:k", "f").contains(&"ready".to_string())
    });
    ok(&mut c, &["HDEL", "si:k", "f"]);
    wait_gone("worker gone", &[pid]);
    wait_until("exited event with code 42", WAIT, || {
        codes(&events_of(&mut c, "exited", "si:k", Some("f"))) == vec!["42"]
    });
}

#[test]
fn worker_child_is_killed_with_it() {
    let s = Server::start(&cfg(
        "parent",
        "sleep 1000 & echo \"child $!\"; wait",
        "",
        "ch:*",
    ));
    let mut c = s.conn();
    let mut reap = Reap::new();
    ok(&mut c, &["HSET", "ch:k", "f", "v"]);
    let pid = running_pid(&mut c, "ch:k", "f");
    let child = logged_child(&mut c, "ch:k", "f");
    reap.add(child);
    // The shell prints the pid right after fork, maybe before the child's exec.
    wait_until("the worker's child runs sleep", WAIT, || {
        cmdline(child) == vec![b"sleep".to_vec(), b"1000".to_vec()]
    });
    ok(&mut c, &["HDEL", "ch:k", "f"]);
    wait_gone("worker and its child gone", &[pid, child]);
}

#[test]
fn no_zombies_or_strays_after_burst() {
    let config = format!(
        "{}\n{}\n{}\n{}",
        long_handler("w", "backoff-initial-ms = 10"),
        sh_handler("quick", "exit 0", "restart = \"never\""),
        watch_toml("bz:*", "w", None),
        watch_toml("q:*", "quick", None)
    );
    let s = Server::start(&config);
    let mut c = s.conn();
    for round in 0..8 {
        let v = format!("r{round}");
        let mut args = vec!["HSET", "bz:k"];
        let fields: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        for f in &fields {
            args.push(f);
            args.push(&v);
        }
        ok(&mut c, &args);
        ok(&mut c, &["HSET", &format!("bz:t{round}"), "x", &v]);
        ok(&mut c, &["HSET", &format!("q:{round}"), "a", "1", "b", "2"]);
        if round % 2 == 1 {
            ok(&mut c, &["HDEL", "bz:k", "f7", "f8", "f9"]);
            ok(&mut c, &["DEL", &format!("bz:t{}", round - 1)]);
        }
    }
    ok(&mut c, &["HDEL", "bz:k", "f5", "f6"]);
    let mut expected: Vec<(String, String, String)> = (0..5)
        .map(|i| ("bz:k".into(), format!("f{i}"), "r7".into()))
        .collect();
    for r in [1, 3, 5, 7] {
        expected.push((format!("bz:t{r}"), "x".into(), format!("r{r}")));
    }
    let exp: Vec<(&str, &str, &str)> = expected
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_workers(&s, &mut c, &exp);
    wait_until("all quick jobs exited", WAIT, || {
        let js = jobs_filtered(&mut c, &["WATCH", "q:*"]);
        js.len() == 16 && js.iter().all(|j| get_str(j, "state") == "exited")
    });

    // Every descendant of the server is a running job's worker, a child of one,
    // an ancestor of one (the helper), or a direct child of the server; none is a zombie.
    let mut last = String::new();
    let clean = {
        let deadline = Instant::now() + WAIT;
        loop {
            let pids = job_pids(&mut c);
            let desc = s.descendants();
            let by_pid: HashMap<u32, &ProcInfo> = desc.iter().map(|p| (p.pid, p)).collect();
            let ancestors: std::collections::HashSet<u32> = pids
                .iter()
                .flat_map(|&p| {
                    let mut up = Vec::new();
                    let mut cur = by_pid.get(&p).map(|i| i.ppid);
                    while let Some(a) = cur {
                        up.push(a);
                        cur = by_pid.get(&a).map(|i| i.ppid);
                    }
                    up
                })
                .collect();
            let strays: Vec<&ProcInfo> = desc
                .iter()
                .filter(|p| {
                    p.state == 'Z'
                        || !(pids.contains(&p.pid)
                            || pids.contains(&p.ppid)
                            || ancestors.contains(&p.pid)
                            || p.ppid == s.pid())
                })
                .collect();
            if strays.is_empty() && pids.len() == exp.len() {
                break true;
            }
            last = format!("strays: {strays:#?}\njob pids: {pids:?}");
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(clean, "processes under the server are not clean:\n{last}");
}

#[test]
fn logs_are_captured_and_bounded_by_handler_log_lines() {
    let script = "i=1; while [ $i -le 20 ]; do echo \"line $i\"; i=$((i+1)); done; sleep 0.2; echo 'to stderr' >&2; while :; do sleep 1; done";
    let s = Server::start(&cfg("chatty", script, "log-lines = 5", "lg:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "lg:k", "f", "v"]);
    wait_until("stderr line captured", WAIT, || {
        job_log(&mut c, "lg:k", "f").contains(&"to stderr".to_string())
    });
    assert_eq!(
        job_log(&mut c, "lg:k", "f"),
        vec!["line 17", "line 18", "line 19", "line 20", "to stderr"]
    );
}

#[test]
fn module_log_lines_is_the_default() {
    let script = "for i in 1 2 3 4 5 6; do echo \"n $i\"; done; while :; do sleep 1; done";
    let s = Server::builder(&cfg("chatty", script, "", "lg:*"))
        .module_arg("log-lines", "3")
        .start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "lg:k", "f", "v"]);
    wait_until("last line captured", WAIT, || {
        job_log(&mut c, "lg:k", "f").contains(&"n 6".to_string())
    });
    assert_eq!(job_log(&mut c, "lg:k", "f"), vec!["n 4", "n 5", "n 6"]);
}

#[test]
fn pause_stops_all_and_resume_starts_the_right_set() {
    let s = Server::start(&simple_config("p:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "p:a", "f1", "1", "f2", "2"]);
    assert_workers(&s, &mut c, &[("p:a", "f1", "1"), ("p:a", "f2", "2")]);
    let pids: Vec<u32> = job_pids(&mut c).into_iter().collect();

    assert_eq!(ok(&mut c, &["STREAMWATCH.PAUSE"]), Value::Okay);
    wait_gone("all workers gone after PAUSE", &pids);
    wait_until("JOBS empty after PAUSE", WAIT, || jobs(&mut c).is_empty());

    ok(&mut c, &["HSET", "p:a", "f3", "3"]);
    ok(&mut c, &["HSET", "p:b", "g", "1"]);
    ok(&mut c, &["HDEL", "p:a", "f1"]);
    ok(&mut c, &["HSET", "p:a", "f2", "22"]);
    // Nothing to wait for when nothing may happen: give it a moment, then look.
    std::thread::sleep(Duration::from_millis(500));
    assert!(jobs(&mut c).is_empty(), "{:?}", jobs(&mut c));
    assert!(s.tagged_procs().is_empty(), "{:?}", s.tagged_procs());
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(1));

    assert_eq!(ok(&mut c, &["STREAMWATCH.RESUME"]), Value::Okay);
    assert_workers(
        &s,
        &mut c,
        &[("p:a", "f2", "22"), ("p:a", "f3", "3"), ("p:b", "g", "1")],
    );
    let st = to_map(&ok(&mut c, &["STREAMWATCH.STATUS"]));
    assert_eq!(get_int(&st, "paused"), Some(0));
    let kinds: Vec<String> = events(&mut c)
        .iter()
        .filter_map(|e| e.get("event").cloned())
        .filter(|e| e == "paused" || e == "resumed")
        .collect();
    assert_eq!(kinds, vec!["paused", "resumed"]);
}

#[test]
fn restart_command_restarts_the_job() {
    let s = Server::start(&simple_config("rs:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "rs:k", "f", "v"]);
    let pid1 = running_pid(&mut c, "rs:k", "f");
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.RESTART", "rs:k", "f"])),
        Some(1)
    );
    let pid2 = running_pid_other_than(&mut c, "rs:k", "f", pid1);
    wait_gone("old run gone", &[pid1]);
    assert_workers(&s, &mut c, &[("rs:k", "f", "v")]);
    assert_eq!(
        get_int(&job(&mut c, "rs:k", "f").unwrap(), "pid"),
        Some(pid2 as i64)
    );
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.RESTART", "rs:k", "nope"])),
        Some(0)
    );
    assert_eq!(
        vint(&ok(
            &mut c,
            &["STREAMWATCH.RESTART", "rs:k", "f", "DB", "3"]
        )),
        Some(0)
    );
}

#[test]
fn events_stream_has_started_exited_stopped_with_fields() {
    let s = Server::start(&simple_config("ev:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ev:k", "f", "v"]);
    let pid = running_pid(&mut c, "ev:k", "f");
    wait_until("started event", WAIT, || {
        !events_of(&mut c, "started", "ev:k", Some("f")).is_empty()
    });
    ok(&mut c, &["HDEL", "ev:k", "f"]);
    wait_gone("worker gone", &[pid]);
    wait_until("exited and stopped events", WAIT, || {
        !events_of(&mut c, "exited", "ev:k", Some("f")).is_empty()
            && !events_of(&mut c, "stopped", "ev:k", Some("f")).is_empty()
    });
    let all = events(&mut c);
    let pos = |kind: &str| {
        all.iter()
            .position(|e| e.get("event").map(String::as_str) == Some(kind))
            .unwrap()
    };
    let started = &all[pos("started")];
    let exited = &all[pos("exited")];
    let stopped = &all[pos("stopped")];
    for e in [started, exited, stopped] {
        assert_eq!(e.get("watch").map(String::as_str), Some("ev:*"), "{e:?}");
        assert_eq!(e.get("db").map(String::as_str), Some("0"), "{e:?}");
        assert_eq!(e.get("key").map(String::as_str), Some("ev:k"), "{e:?}");
        assert_eq!(e.get("field").map(String::as_str), Some("f"), "{e:?}");
    }
    assert_eq!(started.get("pid"), Some(&pid.to_string()), "{started:?}");
    // The standard worker traps TERM and exits 0.
    assert_eq!(
        exited.get("code").map(String::as_str),
        Some("0"),
        "{exited:?}"
    );
    assert!(pos("started") < pos("exited"));
    assert_eq!(
        all.iter()
            .filter(|e| e.get("event").map(String::as_str) == Some("started"))
            .count(),
        1
    );
}

#[test]
fn shell_metacharacters_arrive_byte_exact_in_one_argument() {
    let s = Server::start(&simple_config("sh:*"));
    let mut c = s.conn();
    let marker1 = std::env::temp_dir().join(unique("sw-pwned"));
    let marker2 = std::env::temp_dir().join(unique("sw-pwned"));
    let value = format!(
        "; $(touch {}) `touch {}` | id && echo \"x\" 'y' > /dev/null",
        marker1.display(),
        marker2.display()
    );
    let key = "sh:$(id);`id`";
    ok(&mut c, &["HSET", key, "f", &value]);
    let pid = running_pid(&mut c, key, "f");
    let argv = cmdline(pid);
    assert_eq!(argv.len(), 7, "{argv:?}");
    assert_eq!(argv[4], key.as_bytes());
    assert_eq!(argv[6], value.as_bytes());
    assert_workers(&s, &mut c, &[(key, "f", value.as_str())]);
    assert!(
        !marker1.exists() && !marker2.exists(),
        "a shell ran the value"
    );
}

#[test]
fn invalid_utf8_value_arrives_byte_exact() {
    let s = Server::start(&simple_config("u8:*"));
    let mut c = s.conn();
    let value: &[u8] = &[0xff, 0xfe, b'a', 0x80, b' ', 0xc3];
    let _: i64 = redis::cmd("HSET")
        .arg("u8:k")
        .arg("f")
        .arg(value)
        .query(&mut c)
        .unwrap();
    let pid = running_pid(&mut c, "u8:k", "f");
    assert_eq!(cmdline(pid)[6], value);
    let env = environ(pid);
    assert!(env.contains(&b"STREAMWATCH_KEY=u8:k".to_vec()));
    assert!(env.contains(&b"STREAMWATCH_FIELD=f".to_vec()));
}

#[test]
fn nul_byte_in_value_gives_spawn_error_naming_nul() {
    let s = Server::start(&simple_config("nul:*"));
    let mut c = s.conn();
    let _: i64 = redis::cmd("HSET")
        .arg("nul:k")
        .arg("f")
        .arg(&b"a\0b"[..])
        .query(&mut c)
        .unwrap();
    let ev = wait_for("spawn-error event", WAIT, || {
        events_of(&mut c, "spawn-error", "nul:k", Some("f"))
            .into_iter()
            .next()
    });
    let error = ev.get("error").cloned().unwrap_or_default();
    assert!(error.to_uppercase().contains("NUL"), "{ev:?}");
    assert!(s.tagged_procs().is_empty());
    ok(&mut c, &["PING"]);
}

#[test]
fn oversized_argument_gives_spawn_error() {
    let s = Server::start(&simple_config("big:*"));
    let mut c = s.conn();
    let value = "x".repeat(140_000);
    ok(&mut c, &["HSET", "big:k", "f", &value]);
    let ev = wait_for("spawn-error event", WAIT, || {
        events_of(&mut c, "spawn-error", "big:k", Some("f"))
            .into_iter()
            .next()
    });
    let error = ev.get("error").cloned().unwrap_or_default().to_lowercase();
    assert!(
        ["131072", "128", "long", "large", "e2big", "argument"]
            .iter()
            .any(|w| error.contains(w)),
        "{ev:?}"
    );
    ok(&mut c, &["PING"]);
}

#[test]
fn unexecutable_handler_gives_spawn_error() {
    let toml = format!(
        "[handler.bad]\ncommand = [\"/nonexistent/{}\", \"{{value}}\"]\n{}",
        unique("prog"),
        watch_toml("ux:*", "bad", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ux:k", "f", "v"]);
    let ev = wait_for("spawn-error event", WAIT, || {
        events_of(&mut c, "spawn-error", "ux:k", Some("f"))
            .into_iter()
            .next()
    });
    assert!(
        !ev.get("error").cloned().unwrap_or_default().is_empty(),
        "{ev:?}"
    );
    ok(&mut c, &["PING"]);
}

/// The exec happens after the helper has moved on (it does not wait for it): a step
/// that fails in the child (here its working directory) is still a spawn-error naming
/// the reason, and no `started` event comes before it.
#[test]
fn missing_working_directory_gives_spawn_error_and_no_started_event() {
    let toml = format!(
        "[handler.nodir]\ncommand = [\"/bin/sleep\", \"30\"]\ncwd = \"/nonexistent/{}\"\n{}",
        unique("dir"),
        watch_toml("nd:*", "nodir", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "nd:k", "f", "v"]);
    let ev = wait_for("spawn-error event", WAIT, || {
        events_of(&mut c, "spawn-error", "nd:k", Some("f"))
            .into_iter()
            .next()
    });
    let error = ev.get("error").cloned().unwrap_or_default();
    assert!(error.contains("No such file"), "{ev:?}");
    assert!(events_of(&mut c, "started", "nd:k", Some("f")).is_empty());
    assert!(s.tagged_procs().is_empty());
    ok(&mut c, &["PING"]);
}

/// A worker that exits before its stop grace is over leaves nothing for the helper to
/// do at the end of that grace: the helper stays idle afterwards. (It used to keep each
/// SIGKILL deadline and spin through the last millisecond before it: with every worker
/// stopped, it still took a millisecond of CPU per stop, from everyone else.)
#[test]
fn stopped_workers_leave_the_helper_idle() {
    let s = Server::start(&cfg("w", LONG_SCRIPT, "stop-grace-ms = 6000", "idle:*"));
    let mut c = s.conn();
    let helper = wait_for("the helper process", WAIT, || {
        s.descendants()
            .into_iter()
            .find(|p| p.cmdline.first().map(String::as_str) == Some("streamwatch-helper"))
    })
    .pid;
    for i in 0..100 {
        let f = format!("f{i}");
        ok(&mut c, &["HSET", "idle:k", &f, "v"]);
        wait_until("worker running", WAIT, || {
            state(&mut c, "idle:k", &f).as_deref() == Some("running")
        });
        ok(&mut c, &["HDEL", "idle:k", &f]);
        wait_until("worker gone", WAIT, || {
            state(&mut c, "idle:k", &f).is_none()
        });
    }
    assert!(s.tagged_procs().is_empty());
    // The helper's time on a CPU (ns, /proc/PID/schedstat) while every grace runs out.
    let on_cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{helper}/schedstat")).unwrap();
        stat.split(' ').next().unwrap().parse().unwrap()
    };
    let before = on_cpu();
    std::thread::sleep(Duration::from_millis(6500));
    let used_ms = (on_cpu() - before) as f64 / 1e6;
    assert!(
        used_ms < 8.0,
        "the idle helper was on a CPU for {used_ms:.1} ms"
    );
}

#[test]
fn workers_stop_on_shutdown() {
    let mut s = Server::start(&simple_config("sd:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "sd:k", "a", "1", "b", "2"]);
    assert_workers(&s, &mut c, &[("sd:k", "a", "1"), ("sd:k", "b", "2")]);
    let pids: Vec<u32> = job_pids(&mut c).into_iter().collect();
    let _ = run(&mut c, &["SHUTDOWN", "NOSAVE"]);
    s.wait_exit();
    wait_gone("workers gone after SHUTDOWN", &pids);
    wait_until("no worker of this server left", WAIT, || {
        s.tagged_procs().is_empty()
    });
}

#[test]
fn workers_do_not_outlive_a_killed_server() {
    let config = simple_config("kd:*");
    let mut s = Server::builder(&config).save("").start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "kd:k", "a", "1", "b", "2"]);
    assert_workers(&s, &mut c, &[("kd:k", "a", "1"), ("kd:k", "b", "2")]);
    let pids: Vec<u32> = job_pids(&mut c).into_iter().collect();
    let mut reap = Reap::new();
    for &p in &pids {
        reap.add(p);
    }
    s.kill9();
    // Killed at once, or at the latest when the module loads again in the same place.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| pid_alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pids.iter().any(|&p| pid_alive(p)) {
        let _s2 = Server::builder(&config).dir(s.dir()).start();
        wait_gone("orphaned workers killed on next load", &pids);
    }
}

/// The helper process killed (say by the OOM killer): its workers and their children
/// are killed with it, and a new helper runs exactly one worker per field again.
#[test]
fn killed_helper_leaves_no_orphans_and_jobs_run_once() {
    let s = Server::start(&cfg(
        "parent",
        "sleep 1000 & echo \"child $!\"; trap 'exit 0' TERM; wait",
        "",
        "hk:*",
    ));
    let mut c = s.conn();
    let mut reap = Reap::new();
    ok(&mut c, &["HSET", "hk:k", "a", "1", "b", "2"]);
    let old: Vec<u32> = wait_for("two workers running", WAIT, || {
        let p = job_pids(&mut c);
        (p.len() == 2).then(|| p.into_iter().collect())
    });
    let mut children = Vec::new();
    for f in ["a", "b"] {
        let child = logged_child(&mut c, "hk:k", f);
        reap.add(child);
        children.push(child);
    }
    for &p in &old {
        reap.add(p);
    }
    let helper = helper_of(&s);
    unsafe { libc::kill(helper.pid as i32, libc::SIGKILL) };

    let all_old: Vec<u32> = old.iter().chain(children.iter()).copied().collect();
    wait_gone("old workers and their children gone", &all_old);
    let new: Vec<u32> = wait_for("two new workers running", WAIT, || {
        let p = job_pids(&mut c);
        (p.len() == 2 && p.iter().all(|p| !old.contains(p))).then(|| p.into_iter().collect())
    });
    for &p in &new {
        assert!(pid_alive(p));
    }
    // Exactly one worker per field: the shells running the handler script.
    wait_until("one worker shell per field", WAIT, || {
        s.descendants()
            .iter()
            .filter(|d| d.cmdline.iter().any(|a| a == "hk:k"))
            .count()
            == 2
    });
    let helpers = s.descendants().into_iter().filter(is_helper).count();
    assert_eq!(helpers, 1);
}

/// redis-server and the helper die at the same moment (nobody is left to stop the
/// workers): the workers die with the helper, and what they started themselves (left
/// in the helper's session) is killed by the next load in the same --dir, checked by
/// the session leader's start time.
#[test]
fn workers_left_by_a_dead_server_and_helper_are_killed_on_next_load() {
    let config = cfg(
        "parent",
        "sleep 1000 & echo \"child $!\"; trap 'exit 0' TERM; wait",
        "",
        "lo:*",
    );
    let mut s = Server::start(&config);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "lo:k", "a", "1", "b", "2"]);
    let pids: Vec<u32> = wait_for("two workers running", WAIT, || {
        let p = job_pids(&mut c);
        (p.len() == 2).then(|| p.into_iter().collect())
    });
    let mut reap = Reap::new();
    let mut children = Vec::new();
    for f in ["a", "b"] {
        let child = logged_child(&mut c, "lo:k", f);
        reap.add(child);
        children.push(child);
    }
    for &p in &pids {
        reap.add(p);
    }
    let record = s.dir().path().join("streamwatch.runs");
    wait_until("runs and the helper's session recorded", WAIT, || {
        std::fs::read_to_string(&record)
            .is_ok_and(|t| t.lines().count() == 3 && t.lines().any(|l| l.starts_with("session ")))
    });
    let helper = helper_of(&s);
    // Stop the server first (and wait until it is stopped: kill() does not wait), so
    // that it cannot notice the helper's death and clean up itself.
    unsafe { libc::kill(s.pid() as i32, libc::SIGSTOP) };
    wait_until("every thread of the server stopped", WAIT, || {
        std::fs::read_dir(format!("/proc/{}/task", s.pid()))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rfind(')')
                            .and_then(|i| st[i + 2..].chars().next())
                            .is_some_and(|c| c == 'T')
                    })
                })
            })
            .unwrap_or(false)
    });
    unsafe { libc::kill(helper.pid as i32, libc::SIGKILL) };
    s.kill9();
    wait_gone("the workers died with their helper", &pids);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        children.iter().all(|&p| pid_alive(p)),
        "the workers' children should have been orphaned"
    );
    let s2 = Server::builder(&config).dir(s.dir()).start();
    wait_gone("orphaned children killed on next load", &children);
    // Logged just after the kill.
    wait_until("the kill logged", WAIT, || {
        s2.log()
            .contains("killed 2 workers left running by a previous instance")
    });
    // The new instance runs the jobs itself.
    assert_workers(&s2, &mut s2.conn(), &[]);
}

/// The server's helper process.
fn helper_of(s: &Server) -> ProcInfo {
    s.descendants()
        .into_iter()
        .find(|p| p.ppid == s.pid() && is_helper(p))
        .expect("helper process")
}

/// The pid a worker printed as `child PID` (scripts that start a child of their own).
fn logged_child(c: &mut redis::Connection, key: &str, field: &str) -> u32 {
    wait_for("worker printed its child's pid", WAIT, || {
        job_log(c, key, field)
            .iter()
            .find_map(|l| l.strip_prefix("child ")?.trim().parse().ok())
    })
}

/// A worker starts clean: only fds 0, 1, 2 (nothing inherited from redis-server), no
/// blocked or ignored signal, leader of its own process group.
#[test]
fn workers_start_with_clean_fds_signals_and_own_group() {
    let s = Server::start(&format!(
        "[handler.bare]\ncommand = [\"/bin/sleep\", \"1000\"]\n\n{}",
        watch_toml("hy:*", "bare", None)
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "hy:k", "f", "v"]);
    let pid = running_pid(&mut c, "hy:k", "f");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2], "worker has extra descriptors");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = |field: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "worker starts with blocked signals");
    assert_eq!(
        mask("SigIgn:"),
        0,
        "worker starts with ignored signals: {:#x}",
        mask("SigIgn:")
    );
    assert_eq!(
        process_group(pid).expect("worker's /proc/PID/stat"),
        pid,
        "worker is not the leader of its own process group"
    );
}

/// A worker that starts a daemon (a new session, so outside its process group) and
/// exits: the daemon is not left behind; the helper adopts it and kills it.
#[test]
fn a_workers_daemon_does_not_outlive_it() {
    let s = Server::start(&cfg(
        "forker",
        "setsid sleep 1000 & echo \"child $!\"; sleep 0.2; exit 0",
        "restart = \"never\"",
        "dm:*",
    ));
    let mut c = s.conn();
    let mut reap = Reap::new();
    ok(&mut c, &["HSET", "dm:k", "f", "v"]);
    let child = logged_child(&mut c, "dm:k", "f");
    reap.add(child);
    wait_until("job exited", WAIT, || {
        job(&mut c, "dm:k", "f").is_some_and(|j| get_str(&j, "state") == "exited")
    });
    wait_gone("the daemon", &[child]);
    assert!(s.zombies().is_empty(), "zombies: {:?}", s.zombies());
}
