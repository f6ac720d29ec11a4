//! The gate: a primary that would refuse writes (`min-replicas-to-write` not met) runs
//! no jobs, and `start-paused` holds them after load.
//!
//! * With a real Sentinel: an old primary killed, failed over, and restarted from its
//!   own data as a primary (as after a crash, before Sentinel reconfigures it) runs
//!   nothing, neither before Sentinel demotes it nor after; its `STREAMWATCH.STATUS`
//!   says why (`gate: writes-refused`). The workers append the server they came from
//!   (`STREAMWATCH_REDIS_URL`) to a file, so the test sees which node ran what.
//! * Without Sentinel: a primary with `min-replicas-to-write 1` runs nothing at load,
//!   starts its jobs when a replica comes, stops them when it goes, and follows
//!   `CONFIG SET`; a stream entry in flight is stopped and stays pending until writes
//!   are accepted again.
//! * `start-paused until-resume` and `until-replica`.
//!
//! Every wait is on a condition, with generous deadlines; nothing is timed.

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A handler whose workers append `<STREAMWATCH_REDIS_URL> <field>` to `record`, then
/// run until stopped; and a watch of `pattern` with it.
fn recording_config(record: &Path, pattern: &str) -> String {
    let script = format!(
        r#"echo "$STREAMWATCH_REDIS_URL $2" >> {}; trap 'exit 0' TERM; while :; do sleep 1; done"#,
        record.display()
    );
    format!(
        "{}\n{}",
        sh_handler("w", &script, ""),
        watch_toml(pattern, "w", None)
    )
}

/// The fields the server on `port` started a worker for, one per run, in order.
fn ran_on(record: &Path, port: u16) -> Vec<String> {
    let from = format!(":{port}/");
    lines(record)
        .iter()
        .filter(|l| l.contains(&from))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

const REFUSE: [&str; 4] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "2",
];

fn status(c: &mut redis::Connection) -> Map {
    to_map(&ok(c, &["STREAMWATCH.STATUS"]))
}

fn gate(c: &mut redis::Connection) -> String {
    get_str(&status(c), "gate")
}

/// A fresh connection's view of the server's gate; None if it does not answer.
fn gate_of(port: u16) -> Option<(String, String)> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    let st = to_map(&run(&mut c, &["STREAMWATCH.STATUS"]).ok()?);
    Some((get_str(&st, "role"), get_str(&st, "gate")))
}

fn replicate(replica: &Server, primary: &Server) {
    let mut c = replica.conn();
    ok(
        &mut c,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    );
}

/// Whether the server on `port` is a replica of `primary` with its link up.
fn replica_of(port: u16, primary: u16) -> bool {
    let r = replication_of(port);
    r.get("role").map(String::as_str) == Some("slave")
        && r.get("master_port") == Some(&primary.to_string())
        && r.get("master_link_status").map(String::as_str) == Some("up")
}

#[test]
fn an_old_primary_restarted_under_sentinel_runs_nothing() {
    let rec_dir = TempDir::new();
    let record = rec_dir.path().join("ran");
    let config = recording_config(&record, "sg:*");
    let a_dir = TempDir::new();
    let mut a = Server::builder(&config)
        .redis_args(&REFUSE)
        .dir(a_dir.clone())
        .start();
    let b = Server::builder(&config).redis_args(&REFUSE).start();
    // C is never promoted: after the failover it is B's replica, so B accepts writes.
    let mut refuse_c = REFUSE.to_vec();
    refuse_c.extend(["--replica-priority", "0"]);
    let c = Server::builder(&config).redis_args(&refuse_c).start();
    let a_port = a.port;
    let mut ac = a.conn();
    // (The first check follows the load closely: STATUS may answer before it.)
    wait_eq(
        "A has no replica yet",
        WAIT,
        "writes-refused".to_string(),
        || gate(&mut ac),
    );
    replicate(&b, &a);
    replicate(&c, &a);
    wait_eq("A accepts writes", WAIT, "open".to_string(), || {
        gate(&mut ac)
    });
    ok(&mut ac, &["HSET", "sg:cams", "cam1", "u1"]);
    wait_until("A ran cam1", WAIT, || ran_on(&record, a_port) == ["cam1"]);
    ok(&mut ac, &["SAVE"]); // A comes back with its data
    for s in [&b, &c] {
        let mut sc = s.conn();
        wait_until("replica in sync", WAIT, || {
            vstr(&ok(&mut sc, &["HGET", "sg:cams", "cam1"])) == "u1"
        });
    }

    let sdir = TempDir::new();
    let sentinel = Sentinel::start(&sdir, a_port);
    wait_until("sentinel knows both replicas", WAIT, || {
        sentinel.knows_replicas() == 2
    });
    let old: Vec<u32> = job_pids(&mut ac).into_iter().collect();
    drop(ac);
    a.kill9();
    wait_gone("the dead primary's workers", &old);
    wait_until("sentinel promoted B", Duration::from_secs(60), || {
        sentinel.primary_port() == Some(b.port) && is_primary(b.port)
    });
    // B has C in sync (Sentinel moved it over): its gate opens and it runs the job.
    wait_until("B ran cam1", Duration::from_secs(60), || {
        ran_on(&record, b.port).contains(&"cam1".to_string())
    });

    // A comes back from its own dump, as a primary, on its old port.
    let a2 = Server::builder(&config)
        .redis_args(&REFUSE)
        .dir(a_dir.clone())
        .port(a_port)
        .start();
    let mut seen_gated = 0;
    poll_until(
        "Sentinel demoted A to a replica of B",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            assert_eq!(
                ran_on(&record, a_port),
                ["cam1"],
                "the restarted A ran a job"
            );
            match gate_of(a_port) {
                Some((role, gate)) if role == "primary" => {
                    assert_eq!(gate, "writes-refused", "A as a primary without replicas");
                    seen_gated += 1;
                }
                _ => {}
            }
            replica_of(a_port, b.port)
        },
    );
    assert!(seen_gated > 0, "A was never seen as a gated primary");
    let mut a2c = a2.conn();
    assert_eq!(get_str(&status(&mut a2c), "role"), "replica");
    assert_eq!(vstr(&ok(&mut a2c, &["HGET", "sg:cams", "cam1"])), "u1");

    // Afterwards still nothing on A: B runs a new field, A only replicates it.
    let mut bc = b.conn();
    ok(&mut bc, &["HSET", "sg:cams", "cam2", "u2"]);
    wait_until("B ran cam2", WAIT, || {
        ran_on(&record, b.port).contains(&"cam2".to_string())
    });
    wait_until("A has cam2", WAIT, || {
        vstr(&ok(&mut a2c, &["HGET", "sg:cams", "cam2"])) == "u2"
    });
    assert!(jobs(&mut a2c).is_empty());
    assert!(a2.tagged_procs().is_empty(), "workers of the restarted A");
    assert_eq!(ran_on(&record, a_port), ["cam1"], "the demoted A ran a job");
    assert!(ran_on(&record, c.port).is_empty(), "C ran a job");
    let mut bc = b.conn();
    assert_eq!(gate(&mut bc), "open");
}

/// A primary with `min-replicas-to-write 1`, started on `dir` (holding `wr:cams`).
fn refusing_primary(config: &str, dir: Arc<TempDir>) -> Server {
    Server::builder(config).redis_args(&REFUSE).dir(dir).start()
}

#[test]
fn a_primary_without_enough_replicas_runs_no_job() {
    let config = simple_config("wr:*");
    // The data, saved by a server that accepts writes.
    let dir = TempDir::new();
    {
        let s = Server::builder(&config).dir(dir.clone()).start();
        let mut c = s.conn();
        ok(&mut c, &["HSET", "wr:cams", "cam1", "u1"]);
        assert_workers(&s, &mut c, &[("wr:cams", "cam1", "u1")]);
        ok(&mut c, &["SAVE"]);
    }
    let p = refusing_primary(&config, dir);
    let mut c = p.conn();
    assert_eq!(vstr(&ok(&mut c, &["HGET", "wr:cams", "cam1"])), "u1");
    wait_eq("gate at load", WAIT, "writes-refused".to_string(), || {
        gate(&mut c)
    });
    assert_eq!(get_str(&status(&mut c), "role"), "primary");
    assert_eq!(
        info(&mut c, "streamwatch")["streamwatch_gate"],
        "writes-refused"
    );
    assert!(jobs(&mut c).is_empty());
    assert!(p.tagged_procs().is_empty());
    // The server itself refuses a client's write, as the gate says.
    let e = run(&mut c, &["HSET", "wr:cams", "cam2", "u2"]).unwrap_err();
    assert_eq!(e.code(), Some("NOREPLICAS"), "{e}");

    // A replica in sync: the job starts.
    let mut r = Server::start(&config);
    replicate(&r, &p);
    assert_workers(&p, &mut c, &[("wr:cams", "cam1", "u1")]);
    assert_eq!(gate(&mut c), "open");
    let pid = running_pid(&mut c, "wr:cams", "cam1");
    let mut rc = r.conn();
    assert!(jobs(&mut rc).is_empty(), "the replica runs nothing");
    drop(rc);

    // The replica goes: the job is stopped (as on a demotion).
    r.kill9();
    wait_gone("the job stopped", &[pid]);
    wait_eq("gate closed", WAIT, "writes-refused".to_string(), || {
        gate(&mut c)
    });
    assert!(jobs(&mut c).is_empty());
    assert_eq!(get_str(&status(&mut c), "role"), "primary");

    // CONFIG SET is followed: with the check off the job runs again.
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    assert_workers(&p, &mut c, &[("wr:cams", "cam1", "u1")]);
    assert_eq!(gate(&mut c), "open");
    // The events written once writes were accepted again tell the story in order.
    let gated = ("gated".to_string(), "writes-refused".to_string());
    let ungated = ("ungated".to_string(), String::new());
    let story = vec![gated.clone(), ungated.clone(), gated, ungated];
    wait_eq("gated/ungated events", WAIT, story, || {
        events(&mut c)
            .iter()
            .filter(|e| e["event"] == "gated" || e["event"] == "ungated")
            .map(|e| {
                let reason = e.get("reason").cloned().unwrap_or_default();
                (e["event"].clone(), reason)
            })
            .collect::<Vec<_>>()
    });
}

#[test]
fn an_entry_in_flight_stops_and_stays_pending_while_writes_are_refused() {
    let dir = TempDir::new();
    let (rec, go) = (dir.path().join("ran"), dir.path().join("go"));
    // Each run notes its entry, then waits until `go` exists and succeeds.
    let script = format!(
        r#"echo "$1" >> {}; while [ ! -e {} ]; do sleep 0.05; done"#,
        rec.display(),
        go.display()
    );
    let config = format!(
        "[handler.h]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"]\n\
         [[watch]]\npattern = \"gq\"\nhandler = \"h\"\ntype = \"stream\"\n"
    );
    let s = Server::start(&config);
    let mut c = s.conn();
    let id = xadd(&mut c, "gq", &[("n", "1")]);
    wait_until("the entry runs", WAIT, || lines(&rec) == [id.clone()]);
    let pid = wait_for("its pid", WAIT, || {
        jobs(&mut c).first().and_then(|j| get_int(j, "pid"))
    }) as u32;

    // Writes refused: the run is stopped, the entry stays pending, unacknowledged.
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "1"]);
    wait_gone("the run stopped", &[pid]);
    wait_until("no entry in flight", WAIT, || jobs(&mut c).is_empty());
    assert_eq!(gate(&mut c), "writes-refused");
    assert_eq!(group_info(&mut c, "gq", "streamwatch")["pending"], "1");

    // Accepted again: the entry runs again, succeeds and is acknowledged.
    std::fs::write(&go, b"").unwrap();
    ok(&mut c, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    wait_drained(&mut c, "gq");
    assert_eq!(lines(&rec), [id.clone(), id]);
    assert_eq!(gate(&mut c), "open");
}

#[test]
fn start_paused_until_resume_runs_nothing_until_resume() {
    let config = simple_config("sp:*");
    let s = Server::builder(&config)
        .module_arg("start-paused", "until-resume")
        .start();
    let mut c = s.conn();
    let v = ok(&mut c, &["CONFIG", "GET", "streamwatch.start-paused"]);
    assert_eq!(vstr(&to_array(&v)[1]), "until-resume");
    let e = run(&mut c, &["CONFIG", "SET", "streamwatch.start-paused", "no"]).unwrap_err();
    assert!(e.to_string().contains("immutable"), "{e}");
    ok(&mut c, &["HSET", "sp:cams", "cam1", "u1"]);
    // A RECONCILE answers once the write has been looked at: still nothing runs.
    ok(&mut c, &["STREAMWATCH.RECONCILE"]);
    assert!(jobs(&mut c).is_empty());
    assert!(s.tagged_procs().is_empty());
    assert_eq!(gate(&mut c), "until-resume");
    assert_eq!(
        info(&mut c, "streamwatch")["streamwatch_gate"],
        "until-resume"
    );
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    assert_workers(&s, &mut c, &[("sp:cams", "cam1", "u1")]);
    assert_eq!(gate(&mut c), "open");
}

#[test]
fn start_paused_until_replica_waits_for_a_replica_in_sync() {
    let config = simple_config("sr:*");
    let p = Server::builder(&config)
        .module_arg("start-paused", "until-replica")
        .start();
    let mut c = p.conn();
    ok(&mut c, &["HSET", "sr:cams", "cam1", "u1"]);
    ok(&mut c, &["STREAMWATCH.RECONCILE"]);
    assert!(jobs(&mut c).is_empty());
    assert_eq!(gate(&mut c), "until-replica");

    // A replica is released at once (as a replica it runs nothing anyway; promoted, it
    // would run the jobs).
    let mut r = Server::builder(&config)
        .module_arg("start-paused", "until-replica")
        .start();
    replicate(&r, &p);
    let mut rc = r.conn();
    wait_eq("replica's gate", WAIT, "open".to_string(), || gate(&mut rc));
    drop(rc);
    assert_workers(&p, &mut c, &[("sr:cams", "cam1", "u1")]);
    assert_eq!(gate(&mut c), "open");
    let pid = running_pid(&mut c, "sr:cams", "cam1");

    // Released once: the replica going does not stop the job.
    r.kill9();
    wait_until("the replica is gone", WAIT, || {
        info(&mut c, "replication")["connected_slaves"] == "0"
    });
    ok(&mut c, &["STREAMWATCH.RECONCILE"]);
    assert_eq!(running_pid(&mut c, "sr:cams", "cam1"), pid);
    assert_eq!(gate(&mut c), "open");
}

#[test]
fn a_bad_start_paused_value_refuses_to_load() {
    let log = Server::builder(&simple_config("x:*"))
        .module_arg("start-paused", "sometimes")
        .start_expect_failure();
    assert!(log.contains("sometimes"), "{log}");
}
