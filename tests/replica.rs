//! Replication: only a primary runs jobs or writes events. A replica with the same
//! module and config runs no worker and its events stream stays identical to the
//! primary's; on failover the promoted node starts the jobs and the demoted one
//! stops them.

mod common;

use common::*;

fn event_ids(c: &mut redis::Connection) -> Vec<String> {
    events(c).into_iter().map(|e| e["_id"].clone()).collect()
}

fn role(c: &mut redis::Connection) -> String {
    get_str(&to_map(&ok(c, &["STREAMWATCH.STATUS"])), "role")
}

fn wait_same_events(a: &mut redis::Connection, b: &mut redis::Connection) {
    let mut last = (Vec::new(), Vec::new());
    let ok_ = {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (x, y) = (event_ids(a), event_ids(b));
            if !x.is_empty() && x == y {
                break true;
            }
            last = (x, y);
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert!(
        ok_,
        "events streams differ:\n  primary: {:?}\n  replica: {:?}",
        last.0, last.1
    );
}

#[test]
fn replica_runs_no_job_and_writes_no_event() {
    let toml = simple_config("rp:*");
    let p = Server::start(&toml);
    let r = Server::start(&toml);
    let mut pc = p.conn();
    let mut rc = r.conn();
    ok(&mut pc, &["HSET", "rp:a", "f1", "1", "f2", "2"]);
    assert_workers(&p, &mut pc, &[("rp:a", "f1", "1"), ("rp:a", "f2", "2")]);

    replicate(&r, &p);
    ok(&mut pc, &["HSET", "rp:a", "f3", "3"]);
    ok(&mut pc, &["HDEL", "rp:a", "f1"]);
    ok(&mut pc, &["HSET", "rp:b", "g", "1"]);
    let expected = [("rp:a", "f2", "2"), ("rp:a", "f3", "3"), ("rp:b", "g", "1")];
    assert_workers(&p, &mut pc, &expected);
    wait_until("replica has the data", WAIT, || {
        vstr(&ok(&mut rc, &["HGET", "rp:b", "g"])) == "1"
    });
    wait_same_events(&mut pc, &mut rc);
    let xlen = |c: &mut redis::Connection| vint(&ok(c, &["XLEN", "streamwatch:events"]));
    // An event still waiting on the primary reaches the replica too.
    wait_until(
        "the replica has as many events as the primary",
        WAIT,
        || xlen(&mut rc) == xlen(&mut pc),
    );

    assert!(
        jobs(&mut rc).is_empty(),
        "replica has jobs: {:?}",
        jobs(&mut rc)
    );
    assert!(r.tagged_procs().is_empty(), "replica runs workers");
    assert!(
        r.descendants()
            .iter()
            .all(|d| !d.cmdline.iter().any(|a| a == r.tag())),
        "worker among the replica's descendants: {:?}",
        r.descendants()
    );
    assert_eq!(role(&mut rc), "replica");
    assert_eq!(role(&mut pc), "primary");
    assert_eq!(
        info(&mut rc, "streamwatch")
            .get("streamwatch_role")
            .map(String::as_str),
        Some("replica")
    );

    // More changes: still in step, the link is healthy, the replica still runs nothing.
    ok(&mut pc, &["HSET", "rp:b", "g", "2"]);
    assert_workers(
        &p,
        &mut pc,
        &[("rp:a", "f2", "2"), ("rp:a", "f3", "3"), ("rp:b", "g", "2")],
    );
    wait_until("replica has the new value", WAIT, || {
        vstr(&ok(&mut rc, &["HGET", "rp:b", "g"])) == "2"
    });
    wait_same_events(&mut pc, &mut rc);
    assert_eq!(
        info(&mut rc, "replication")
            .get("master_link_status")
            .map(String::as_str),
        Some("up")
    );
    assert!(jobs(&mut rc).is_empty());
    assert!(r.tagged_procs().is_empty());
}

#[test]
fn failover_moves_jobs_to_the_new_primary() {
    let toml = format!(
        "{}\n{}",
        simple_config("rp:*"),
        watch_toml("rc:*", "w", None)
    );
    let p = Server::start(&toml);
    let r = Server::start(&toml);
    let mut pc = p.conn();
    let mut rc = r.conn();
    replicate(&r, &p);

    ok(&mut pc, &["HSET", "rp:a", "f", "1"]);
    ok(&mut pc, &["HSET", "rc:x", "y", "2"]);
    let expected = [("rp:a", "f", "1"), ("rc:x", "y", "2")];
    assert_workers(&p, &mut pc, &expected);
    wait_until("replica has the data", WAIT, || {
        vstr(&ok(&mut rc, &["HGET", "rc:x", "y"])) == "2"
    });
    assert!(jobs(&mut rc).is_empty());
    let old_pids: Vec<u32> = job_pids(&mut pc).into_iter().collect();

    // Promote the replica.
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    assert_workers(&r, &mut rc, &expected);
    assert_eq!(role(&mut rc), "primary");

    // Demote the old primary.
    ok(&mut pc, &["REPLICAOF", "127.0.0.1", &r.port.to_string()]);
    wait_gone("old primary's workers gone", &old_pids);
    wait_until("demoted node has no jobs", WAIT, || {
        jobs(&mut pc).is_empty()
    });
    assert!(p.tagged_procs().is_empty());
    wait_until("demoted node reports replica", WAIT, || {
        role(&mut pc) == "replica"
    });

    // The new primary handles changes; the demoted node follows its events stream.
    ok(&mut rc, &["HSET", "rp:a", "f", "5"]);
    assert_workers(&r, &mut rc, &[("rp:a", "f", "5"), ("rc:x", "y", "2")]);
    wait_until("demoted node has the new value", WAIT, || {
        vstr(&ok(&mut pc, &["HGET", "rp:a", "f"])) == "5"
    });
    wait_same_events(&mut rc, &mut pc);
    assert!(jobs(&mut pc).is_empty());
    assert!(p.tagged_procs().is_empty());
}
