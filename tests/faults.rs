//! What any client that can write a key (or set a config), a worker, or the machine
//! can do to the server, and what must hold anyway: the breaks an adversarial probe
//! found, one test each. A worker's output flood, NUL bytes where Redis allows them,
//! the helper killed during writes, the signals a terminal or a service manager sends
//! to every process, a program chosen by a key's value, a queue dead-lettering into
//! itself, an events key of the wrong type.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The pid of the server's live helper (waits for one other than `not`).
fn helper_pid(s: &Server, not: Option<u32>) -> u32 {
    wait_for("a live helper", WAIT, || {
        s.helper().filter(|&p| Some(p) != not)
    })
}

/// Redis's `used_memory` (what `maxmemory` is compared with).
fn used_memory(c: &mut redis::Connection) -> u64 {
    info(c, "memory")["used_memory"]
        .parse()
        .expect("used_memory")
}

/// The module's own memory (outside `used_memory`).
fn module_memory(c: &mut redis::Connection) -> u64 {
    info(c, "streamwatch")
        .get("streamwatch_memory")
        .map_or(0, |m| m.parse().expect("streamwatch_memory"))
}

fn status_counter(c: &mut redis::Connection, name: &str) -> i64 {
    let status = to_map(&ok(c, &["STREAMWATCH.STATUS"]));
    get_int(&to_map(&status["counters"]), name).unwrap_or(-1)
}

/// Workers writing as fast as they can (`yes`) next to a dataset near `maxmemory`:
/// their output is read at a bounded rate and never queued without bound, so the
/// server's memory stays flat, no user key is evicted, and other jobs still start.
#[test]
fn a_worker_flooding_its_output_costs_the_server_neither_memory_nor_keys() {
    let config = format!(
        "{}\n{}\n{}",
        sh_handler("flood", "exec yes \"$3\"", ""),
        long_handler("w", ""),
        watch_toml("fine:*", "w", None)
    );
    let s = Server::builder(&config)
        .redis_args(&["--maxmemory", "128mb", "--maxmemory-policy", "allkeys-lru"])
        .start();
    let mut c = s.conn();
    ok(&mut c, &["DEBUG", "POPULATE", "20000", "user", "1000"]);
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "flood:*", "HANDLER", "flood"],
    );
    let before = used_memory(&mut c);
    let module_before = module_memory(&mut c);
    ok(&mut c, &["HSET", "flood:k", "a", "y", "b", "y"]);
    let pids = [
        running_pid(&mut c, "flood:k", "a"),
        running_pid(&mut c, "flood:k", "b"),
    ];
    // Let them write: the module used to queue hundreds of MB a second of it.
    std::thread::sleep(Duration::from_secs(3));
    let after = used_memory(&mut c);
    assert!(
        after < before + (32 << 20),
        "used_memory grew from {before} to {after} bytes"
    );
    let module_after = module_memory(&mut c);
    assert!(
        module_after < module_before + (32 << 20),
        "the module's memory grew from {module_before} to {module_after} bytes"
    );
    assert_eq!(info(&mut c, "stats")["evicted_keys"], "0");
    assert_eq!(
        vint(&ok(&mut c, &["EXISTS", "streamwatch:watches"])),
        Some(1)
    );
    // Other jobs start, and the flooding jobs' logs hold their last lines.
    ok(&mut c, &["HSET", "fine:k", "f", "v"]);
    running_pid(&mut c, "fine:k", "f");
    assert_eq!(
        job_log(&mut c, "flood:k", "a").last().map(String::as_str),
        Some("y")
    );
    ok(&mut c, &["HDEL", "flood:k", "a", "b"]);
    wait_gone("flooding workers stopped", &pids);
    assert!(used_memory(&mut c) < before + (32 << 20));
}

/// `CONFIG SET` of a string config to a value with a NUL byte is refused; the next
/// `CONFIG GET *` (what any monitoring tool runs) used to abort the server.
#[test]
fn a_nul_byte_in_a_string_config_is_refused() {
    let s = Server::start(&simple_config("nc:*"));
    let mut c = s.conn();
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("streamwatch.events-key")
        .arg(&b"a\0b"[..])
        .query::<Value>(&mut c)
        .expect_err("a NUL byte is refused");
    assert!(e.to_string().contains("events-key"), "{e}");
    let all = to_array(&ok(&mut c, &["CONFIG", "GET", "*"]));
    assert!(!all.is_empty());
    let got = to_array(&ok(&mut c, &["CONFIG", "GET", "streamwatch.events-key"]));
    assert_eq!(vstr(&got[1]), "streamwatch:events");
    assert_eq!(vstr(&ok(&mut c, &["PING"])), "PONG");
}

/// A field (or key) name with a NUL byte, written in the same burst as other fields:
/// those fields get their jobs at once, and nothing fails inside the module.
#[test]
fn a_nul_byte_in_a_field_name_costs_no_other_field_its_job() {
    let s = Server::start(&simple_config("nf:*"));
    let mut c = s.conn();
    redis::pipe()
        .cmd("HINCRBY")
        .arg("nf:k")
        .arg(&b"x\0y"[..])
        .arg(1)
        .cmd("HSET")
        .arg("nf:k")
        .arg("a")
        .arg("1")
        .cmd("HSET")
        .arg("nf:k")
        .arg("b")
        .arg("2")
        .arg("c")
        .arg("3")
        .cmd("HSET")
        .arg(&b"nf:\0k"[..])
        .arg("f")
        .arg("v")
        .query::<()>(&mut c)
        .expect("pipeline");
    wait_until("jobs of a, b and c running", WAIT, || {
        let set = running_set(&mut c);
        ["a", "b", "c"]
            .iter()
            .zip(["1", "2", "3"])
            .all(|(f, v)| set.contains(&("nf:k".into(), f.to_string(), v.into())))
    });
    // The NUL field's own job cannot be spawned (no argv carries a NUL): it says so.
    wait_until("spawn error for the NUL field", WAIT, || {
        events_of(&mut c, "spawn-error", "nf:k", None)
            .iter()
            .any(|e| e.get("error").is_some_and(|m| m.contains("NUL")))
    });
    assert!(!s.log().contains("internal error"), "{}", s.log());
}

/// The helper SIGKILLed ten times while fields are written every millisecond: in
/// the end exactly one worker runs per field, with its latest value, no worker is left
/// over from a dead helper (not even one it had started and not reported yet), no dead
/// helper stays a zombie, and nothing outlives a `kill -9` of the server.
#[test]
fn killing_the_helper_during_writes_leaves_exactly_one_worker_per_field() {
    let mut s = Server::start(&simple_config("hw:*"));
    let mut c = s.conn();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut w = s.conn();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = format!("f{}", i % 5);
                let _ = run(&mut w, &["HSET", "hw:k", &f, &i.to_string()]);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut helper = helper_pid(&s, None);
    for _ in 0..10 {
        unsafe { libc::kill(helper as i32, libc::SIGKILL) };
        helper = helper_pid(&s, Some(helper));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let fields = ["f0", "f1", "f2", "f3", "f4"];
    for f in fields {
        ok(&mut c, &["HSET", "hw:k", f, "last"]);
    }
    let expected: Vec<(&str, &str, &str)> = fields.iter().map(|f| ("hw:k", *f, "last")).collect();
    assert_workers(&s, &mut c, &expected);
    wait_until("no dead helper left a zombie", WAIT, || {
        s.zombies().is_empty()
    });
    s.kill9();
    wait_until("no worker outlives the server", WAIT, || {
        s.tagged_procs().is_empty()
    });
}

/// Ctrl-C in the terminal of `make run` signals the whole foreground process group, a
/// service manager's stop every process of the unit: the helper leaves shutdown to the
/// server (it follows its socket), so it is neither counted as dead nor started again.
#[test]
fn ctrl_c_and_a_service_stop_leave_shutdown_to_the_server() {
    for how in ["SIGINT to the process group", "SIGTERM to every process"] {
        let mut s = Server::builder(&simple_config("sg:*"))
            .own_process_group()
            .start();
        let mut c = s.conn();
        ok(&mut c, &["HSET", "sg:k", "a", "1"]);
        running_pid(&mut c, "sg:k", "a");
        let everyone: Vec<u32> = std::iter::once(s.pid())
            .chain(s.descendants().iter().map(|p| p.pid))
            .collect();
        unsafe {
            if how.starts_with("SIGINT") {
                libc::kill(-(s.pid() as i32), libc::SIGINT);
            } else {
                for p in &everyone {
                    libc::kill(*p as i32, libc::SIGTERM);
                }
            }
        }
        s.wait_exit();
        let log = s.log();
        assert!(!log.contains("helper process is gone"), "{how}:\n{log}");
        assert_eq!(
            log.matches("helper process started").count(),
            1,
            "{how}:\n{log}"
        );
        wait_until("no worker left", WAIT, || s.tagged_procs().is_empty());
    }
}

/// A placeholder in the program itself would let whoever writes the key choose what
/// runs: refused at load unless the handler says it is meant.
#[test]
fn a_placeholder_cannot_choose_the_program_unless_allowed() {
    let refused = Server::start_expect_failure(&format!(
        "[handler.any]\ncommand = [\"{{value}}\"]\n\n{}",
        watch_toml("pp:*", "any", None)
    ));
    assert!(
        refused.contains("handler 'any' has the placeholder {value} in its program"),
        "{refused}"
    );
    let s = Server::start(&format!(
        "[handler.any]\ncommand = [\"{{value}}\"]\nallow-program-placeholder = true\n\n{}",
        watch_toml("pp:*", "any", None)
    ));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "pp:k", "f", "/bin/true"]);
    wait_until("the value's program ran", WAIT, || {
        !events_of(&mut c, "exited", "pp:k", None).is_empty()
    });
}

/// A dead-letter stream that is the watched stream itself would silently stop the
/// queue: refused, naming the option.
#[test]
fn a_queue_cannot_dead_letter_into_itself() {
    // `s`: a handler for stream watches (no {field}/{value}).
    let stream = format!("[handler.s]\ncommand = [\"/bin/true\", \"{TAG}\", \"{{id}}\"]\n");
    let s = Server::start(&format!("{}{stream}", simple_config("dq:*")));
    let mut c = s.conn();
    let e = err(
        &mut c,
        &[
            "STREAMWATCH.WATCH",
            "jobs",
            "HANDLER",
            "s",
            "TYPE",
            "stream",
            "DEADLETTER",
            "jobs",
        ],
    );
    assert!(e.contains("(DEADLETTER)"), "{e}");
    ok(
        &mut c,
        &[
            "STREAMWATCH.WATCH",
            "jobs:*",
            "HANDLER",
            "s",
            "TYPE",
            "stream",
            "DEADLETTER",
            "jobs:dead",
        ],
    );
}

/// An events key of the wrong type: events are counted as dropped and the log says so
/// once (not once per event) until appending works again.
#[test]
fn an_events_key_of_the_wrong_type_is_counted_and_logged_once() {
    let s = Server::start(&simple_config("we:*"));
    let mut c = s.conn();
    ok(&mut c, &["SET", "streamwatch:events", "not a stream"]);
    ok(&mut c, &["HSET", "we:k", "a", "1", "b", "2", "c", "3"]);
    wait_until("three started events dropped", WAIT, || {
        status_counter(&mut c, "events_dropped") >= 3
    });
    ok(&mut c, &["HSET", "we:k", "d", "4"]);
    running_pid(&mut c, "we:k", "d");
    wait_until("four events dropped", WAIT, || {
        status_counter(&mut c, "events_dropped") >= 4
    });
    assert_eq!(
        s.log()
            .matches("cannot append to the events stream")
            .count(),
        1,
        "{}",
        s.log()
    );
    ok(&mut c, &["DEL", "streamwatch:events"]);
    ok(&mut c, &["HSET", "we:k", "e", "5"]);
    wait_until("events written again", WAIT, || {
        vint(&ok(&mut c, &["XLEN", "streamwatch:events"])).is_some_and(|n| n > 0)
    });
    assert!(s.log().contains("is written again"), "{}", s.log());
}

/// A worker's child that leaves the worker's session (`setsid`, Python's
/// `start_new_session=True`) is not in the helper's session: it is still killed when
/// the helper is killed, and when the server shuts down.
#[test]
fn a_daemon_started_by_a_worker_dies_with_the_helper_and_with_the_server() {
    let config = format!(
        "{}\n{}",
        sh_handler(
            "daemonizer",
            "setsid sleep 1000 & echo \"child $!\"; exec sleep 1000",
            ""
        ),
        watch_toml("dz:*", "daemonizer", None)
    );
    let mut s = Server::start(&config);
    let mut c = s.conn();
    let mut reap = Reap::new();
    let daemon = |c: &mut redis::Connection, field: &str, not: Option<u32>| -> u32 {
        wait_for("the worker's daemon", WAIT, || {
            job_log(c, "dz:k", field)
                .iter()
                .filter_map(|l| l.strip_prefix("child ")?.trim().parse().ok())
                .find(|&p| Some(p) != not)
        })
    };
    ok(&mut c, &["HSET", "dz:k", "f", "v"]);
    let first = daemon(&mut c, "f", None);
    reap.add(first);
    let helper = helper_pid(&s, None);
    unsafe { libc::kill(helper as i32, libc::SIGKILL) };
    wait_gone("the daemon of a run of the killed helper", &[first]);
    // The job runs again under a new helper; its new daemon goes with the server.
    let second = daemon(&mut c, "f", Some(first));
    reap.add(second);
    let _ = run(&mut c, &["SHUTDOWN", "NOSAVE"]);
    s.wait_exit();
    wait_gone("the daemon, after SHUTDOWN", &[second]);
}

/// A client's huge key name is not copied whole into every lifecycle event (the
/// events stream keeps thousands of them): long values are cut, saying how long.
#[test]
fn events_cut_long_values() {
    let s = Server::start(&simple_config("lk:*"));
    let mut c = s.conn();
    let key = format!("lk:{}", "k".repeat(200_000));
    ok(&mut c, &["HSET", &key, "f", "v"]);
    let event = wait_for("an event about the long key", WAIT, || {
        events(&mut c)
            .into_iter()
            .find(|e| e.get("key").is_some_and(|k| k.starts_with("lk:kkk")))
    });
    let k = &event["key"];
    assert!(k.len() < 2048, "a {}-byte key in an event", k.len());
    assert!(k.ends_with(&format!("... ({} bytes)", key.len())), "{k}");
}

/// A helper that stops reading its requests (here stopped with SIGSTOP; a starved one
/// is the same) never blocks the supervisor: the requests wait in an outbox, commands
/// are answered meanwhile, and once the helper reads again every job starts.
#[test]
fn a_stopped_helper_blocks_neither_the_supervisor_nor_commands() {
    let s = Server::start(&simple_config("stall:*"));
    let mut c = s.conn();
    let helper = helper_pid(&s, None);
    unsafe { libc::kill(helper as i32, libc::SIGSTOP) };
    // 200 spawn requests of 10 KB each: more than the socket holds.
    let value = "v".repeat(10_000);
    for i in 0..200 {
        ok(&mut c, &["HSET", "stall:k", &format!("f{i}"), &value]);
    }
    let starting = |c: &mut redis::Connection| {
        let all = run(c, &["STREAMWATCH.JOBS", "STATE", "starting"]);
        all.map(|v| to_array(&v).len())
    };
    let n = wait_for("the supervisor to take every write", WAIT, || {
        starting(&mut c).ok().filter(|&n| n == 200)
    });
    assert_eq!(n, 200);
    for _ in 0..3 {
        assert_eq!(
            starting(&mut c).ok(),
            Some(200),
            "JOBS answers while the helper is stopped"
        );
    }
    unsafe { libc::kill(helper as i32, libc::SIGCONT) };
    wait_until(
        "every job running once the helper reads again",
        WAIT,
        || jobs_filtered(&mut c, &["STATE", "running"]).len() == 200,
    );
    assert_eq!(
        s.helper(),
        Some(helper),
        "the same helper: it was never counted as dead"
    );
}

/// While writes are paused (CLIENT PAUSE WRITE; FAILOVER pauses them too) a module
/// that writes crashes the server (it asserts nothing is replicated meanwhile): the
/// events and the queues wait, and catch up once writes resume.
#[test]
fn paused_writes_are_waited_for_not_crashed_into() {
    let toml = format!(
        "{}\n{}\n[handler.t]\ncommand = [\"/bin/true\", \"{TAG}\"]\n",
        sh_handler(
            "flap",
            "sleep 0.05",
            "backoff-initial-ms = 10\nbackoff-max-ms = 10"
        ),
        watch_toml("flap:*", "flap", None)
    );
    let s = Server::builder(&toml)
        .redis_args(&["--appendonly", "yes"])
        .start();
    let mut c = s.conn();
    ok(
        &mut c,
        &["STREAMWATCH.WATCH", "pz", "HANDLER", "t", "TYPE", "stream"],
    );
    ok(&mut c, &["HSET", "flap:k", "f", "v"]);
    let events = |c: &mut redis::Connection| stream_entries(c, "streamwatch:events").len();
    wait_until("the job exiting again and again", WAIT, || {
        events(&mut c) > 10
    });
    xadd_many(&mut c, "pz", 0, 5);
    ok(&mut c, &["CLIENT", "PAUSE", "1000", "WRITE"]);
    // The job keeps exiting meanwhile: each exit is an event to write.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(vstr(&ok(&mut c, &["PING"])), "PONG", "the server is alive");
    let before = events(&mut c);
    wait_until("events written again once writes resume", WAIT, || {
        events(&mut c) > before
    });
    wait_drained(&mut c, "pz");
}

/// Entries that succeed and entries whose dead-letter XADD fails (the dead-letter key
/// holds a string) finish in the same flushes, under `ACK delete`: the batched XACK and
/// XDEL take only the successful ones; the others stay in the stream, pending, the
/// string is untouched, and the log says it once.
#[test]
fn a_failed_dead_letter_is_neither_acked_nor_deleted_by_the_batched_xack() {
    let toml = "[handler.code]\ncommand = [\"/bin/sh\", \"-c\", \"cat >/dev/null; exit $1\", \"@TAG@\", \"{field:code}\"]\n";
    let s = Server::start(toml);
    let mut c = s.conn();
    ok(&mut c, &["SET", "dlstr", "not a stream"]);
    watch_stream_opts(
        &mut c,
        "bq",
        "code",
        &[
            "CONCURRENCY",
            "16",
            "MAX-ATTEMPTS",
            "1",
            "DEADLETTER",
            "dlstr",
            "ACK",
            "delete",
        ],
    );
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..120 {
        match i % 3 {
            0 => bad.push(xadd(&mut c, "bq", &[("code", "3")])),
            _ => good.push(xadd(&mut c, "bq", &[("code", "0")])),
        }
    }
    // Every good entry acknowledged and deleted; every bad one still there.
    wait_eq(
        "the stream holds only the bad entries",
        WAIT,
        bad.clone(),
        || ids(&mut c, "bq"),
    );
    let pending = |c: &mut redis::Connection| -> Vec<String> {
        let v = ok(c, &["XPENDING", "bq", "streamwatch", "-", "+", "1000"]);
        to_array(&v).iter().map(|p| vstr(&to_array(p)[0])).collect()
    };
    // Give the last flushes time to (wrongly) ack them, then look again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pending(&mut c), bad, "the failed dead-letters stay pending");
    assert_eq!(ids(&mut c, "bq"), bad, "and in the stream (ACK delete)");
    assert_eq!(vstr(&ok(&mut c, &["GET", "dlstr"])), "not a stream");
    // Said once, not once per entry (a client that can write the key chose to make it
    // a string).
    let said = s.log().matches("cannot dead-letter entry").count();
    assert_eq!(said, 1, "{}", s.log());
}

/// A client destroys the group while an entry runs: the group made again from the
/// start delivers that entry anew, and it must not run a second time beside the first
/// (once it ends, it is acknowledged in the new group).
#[test]
fn a_group_destroyed_while_an_entry_runs_does_not_run_it_twice() {
    let dir = TempDir::new();
    let d = dir.path().display().to_string();
    let script = r#"echo "$1" >> "$D/ran"; while [ ! -e "$D/go" ]; do sleep 0.05; done"#;
    let toml = format!(
        "[handler.w]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"]\nenv = {{ D = \"{d}\" }}\n"
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    watch_stream_opts(&mut c, "gq", "w", &["CONCURRENCY", "4"]);
    let first = xadd(&mut c, "gq", &[("n", "1")]);
    let ran = dir.path().join("ran");
    wait_eq("the first entry runs", WAIT, vec![first.clone()], || {
        lines(&ran)
    });
    ok(&mut c, &["XGROUP", "DESTROY", "gq", "streamwatch"]);
    let second = xadd(&mut c, "gq", &[("n", "2")]);
    wait_until("the second entry runs", WAIT, || {
        lines(&ran).contains(&second)
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "gq");
    assert_eq!(lines(&ran), vec![first, second], "each entry ran once");
}
