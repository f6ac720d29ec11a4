//! Failover driven by Sentinel: the primary is killed, Sentinel promotes the replica,
//! and the promoted node starts the jobs (the dead primary's workers died with it).

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn sentinel_failover_moves_jobs_to_the_promoted_replica() {
    let config = simple_config("sf:*");
    let mut p = Server::start(&config);
    let r = Server::start(&config);
    let mut pc = p.conn();
    let mut rc = r.conn();
    ok(&mut rc, &["REPLICAOF", "127.0.0.1", &p.port.to_string()]);
    ok(&mut pc, &["HSET", "sf:cams", "cam1", "u1", "cam2", "u2"]);
    let expected = [("sf:cams", "cam1", "u1"), ("sf:cams", "cam2", "u2")];
    assert_workers(&p, &mut pc, &expected);
    wait_until("replica in sync", WAIT, || {
        vstr(&ok(&mut rc, &["HGET", "sf:cams", "cam2"])) == "u2"
    });

    let sdir = TempDir::new();
    let sentinel = Sentinel::start(&sdir, p.port);
    wait_until("sentinel knows the replica", WAIT, || {
        sentinel.knows_replicas() == 1
    });
    assert!(jobs(&mut rc).is_empty());
    let old: Vec<u32> = job_pids(&mut pc).into_iter().collect();

    p.kill9();
    wait_gone("the dead primary's workers", &old);
    let mut promoted_at = None;
    wait_until(
        "sentinel promoted the replica",
        Duration::from_secs(60),
        || {
            let done = sentinel.primary_port() == Some(r.port) && is_primary(r.port);
            if done {
                promoted_at = Some(Instant::now());
            }
            done
        },
    );
    let mut rc = r.conn();
    assert_workers(&r, &mut rc, &expected);
    eprintln!(
        "promotion seen -> jobs running: {:?}",
        promoted_at.map(|t| t.elapsed())
    );
    // The new primary keeps supervising.
    ok(&mut rc, &["HSET", "sf:cams", "cam1", "u9"]);
    assert_workers(
        &r,
        &mut rc,
        &[("sf:cams", "cam1", "u9"), ("sf:cams", "cam2", "u2")],
    );
}
