//! Redis Cluster: 3 primaries + 3 replicas on loopback, built with CLUSTER ADDSLOTSRANGE,
//! MEET and REPLICATE (what `redis-cli --cluster create` does). Each primary runs the
//! jobs of the keys in its own slots; resharding a slot moves its jobs with no moment
//! where both nodes run them; a killed primary's jobs move to its promoted replica;
//! watches sent to every primary live in each shard's own store key, and so do the
//! watches paused there.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

const NODE_TIMEOUT_MS: &str = "2000";

struct Cluster {
    /// primaries[i] serves slots RANGES[i]; replicas[i] replicates primaries[i].
    primaries: Vec<Server>,
    replicas: Vec<Server>,
    ids: Vec<String>,
}

const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

fn node_id(s: &Server) -> String {
    vstr(&ok(&mut s.conn(), &["CLUSTER", "MYID"]))
}

fn cluster_ok(s: &Server) -> bool {
    vstr(&ok(&mut s.conn(), &["CLUSTER", "INFO"])).contains("cluster_state:ok")
}

fn is_primary(s: &Server) -> bool {
    info(&mut s.conn(), "replication")
        .get("role")
        .map(String::as_str)
        == Some("master")
}

impl Cluster {
    fn start(toml: &str) -> Cluster {
        let node = || {
            Server::builder(toml)
                .redis_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    NODE_TIMEOUT_MS,
                ])
                .start()
        };
        let primaries: Vec<Server> = (0..3).map(|_| node()).collect();
        let replicas: Vec<Server> = (0..3).map(|_| node()).collect();
        for (p, (a, b)) in primaries.iter().zip(RANGES) {
            ok(
                &mut p.conn(),
                &["CLUSTER", "ADDSLOTSRANGE", &a.to_string(), &b.to_string()],
            );
        }
        let first = primaries[0].port.to_string();
        for s in primaries.iter().chain(replicas.iter()).skip(1) {
            ok(&mut s.conn(), &["CLUSTER", "MEET", "127.0.0.1", &first]);
        }
        let ids: Vec<String> = primaries.iter().map(node_id).collect();
        for (r, id) in replicas.iter().zip(&ids) {
            wait_until("replica knows its primary", WAIT, || {
                vstr(&ok(&mut r.conn(), &["CLUSTER", "NODES"])).contains(id.as_str())
            });
            ok(&mut r.conn(), &["CLUSTER", "REPLICATE", id]);
        }
        for s in primaries.iter().chain(replicas.iter()) {
            wait_until("cluster_state:ok", Duration::from_secs(60), || {
                cluster_ok(s)
            });
        }
        for r in &replicas {
            wait_until("replica linked", WAIT, || {
                info(&mut r.conn(), "replication")
                    .get("master_link_status")
                    .map(String::as_str)
                    == Some("up")
            });
        }
        Cluster {
            primaries,
            replicas,
            ids,
        }
    }

    fn slot(&self, key: &str) -> u16 {
        vint(&ok(
            &mut self.primaries[0].conn(),
            &["CLUSTER", "KEYSLOT", key],
        ))
        .unwrap() as u16
    }

    /// A key name `prefix{tag}` whose slot primary `i` serves.
    fn key_on(&self, prefix: &str, i: usize) -> String {
        let (a, b) = RANGES[i];
        (0..)
            .map(|n| format!("{prefix}{{t{n}}}"))
            .find(|k| (a..=b).contains(&self.slot(k)))
            .unwrap()
    }
}

/// The events stream entries of one node (its own `streamwatch:events{tag}` key).
fn node_events(s: &Server) -> Vec<HashMap<String, String>> {
    let mut c = s.conn();
    let keys: Vec<String> = to_array(&ok(&mut c, &["KEYS", "streamwatch:events*"]))
        .iter()
        .map(vstr)
        .collect();
    assert!(keys.len() <= 1, "several events keys: {keys:?}");
    keys.first()
        .map(|k| stream_entries(&mut c, k))
        .unwrap_or_default()
}

#[test]
fn cluster_primaries_run_their_own_slots_and_failover_moves_jobs() {
    let cl = Cluster::start(&simple_config("cams:*"));
    let keys: Vec<String> = (0..3).map(|i| cl.key_on("cams:", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        ok(
            &mut cl.primaries[i].conn(),
            &["HSET", k, "cam", &format!("u{i}")],
        );
    }
    for (i, k) in keys.iter().enumerate() {
        let p = &cl.primaries[i];
        assert_workers(p, &mut p.conn(), &[(k.as_str(), "cam", &format!("u{i}"))]);
    }
    for r in &cl.replicas {
        assert!(jobs(&mut r.conn()).is_empty(), "a replica runs no job");
        assert!(r.tagged_procs().is_empty());
    }
    // Each primary's events go to a stream in one of its own slots.
    for (i, p) in cl.primaries.iter().enumerate() {
        wait_until(&format!("node {i} wrote its started event"), WAIT, || {
            node_events(p).iter().any(|e| e["event"] == "started")
        });
        let mut c = p.conn();
        let names: Vec<String> = to_array(&ok(&mut c, &["KEYS", "streamwatch:events*"]))
            .iter()
            .map(vstr)
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let slot = cl.slot(&names[0]);
        assert!(
            (RANGES[i].0..=RANGES[i].1).contains(&slot),
            "{names:?} slot {slot}"
        );
    }
    // Manual failover of shard 1: the replica takes over, the old primary stops.
    let old1: Vec<u32> = job_pids(&mut cl.primaries[1].conn()).into_iter().collect();
    ok(&mut cl.replicas[1].conn(), &["CLUSTER", "FAILOVER"]);
    wait_until("replica 1 promoted", WAIT, || is_primary(&cl.replicas[1]));
    let r1 = &cl.replicas[1];
    assert_workers(r1, &mut r1.conn(), &[(keys[1].as_str(), "cam", "u1")]);
    wait_gone("demoted primary's workers", &old1);
    assert!(jobs(&mut cl.primaries[1].conn()).is_empty());

    // Shard 0's primary is killed: the cluster promotes its replica, which runs them.
    let mut cl = cl;
    let old0: Vec<u32> = job_pids(&mut cl.primaries[0].conn()).into_iter().collect();
    cl.primaries[0].kill9();
    wait_gone("killed primary's workers", &old0);
    wait_until("replica 0 promoted", Duration::from_secs(60), || {
        is_primary(&cl.replicas[0])
    });
    let r0 = &cl.replicas[0];
    assert_workers(r0, &mut r0.conn(), &[(keys[0].as_str(), "cam", "u0")]);
    let p2 = &cl.primaries[2];
    assert_workers(p2, &mut p2.conn(), &[(keys[2].as_str(), "cam", "u2")]);
}

#[test]
fn cluster_reshard_moves_a_slots_jobs_without_overlap() {
    let cl = Cluster::start(&simple_config("rs:*"));
    let key = cl.key_on("rs:", 0);
    let slot = cl.slot(&key).to_string();
    let (a, b) = (&cl.primaries[0], &cl.primaries[1]);
    let (id_a, id_b) = (&cl.ids[0], &cl.ids[1]);
    ok(&mut a.conn(), &["HSET", &key, "f", "1"]);
    assert_workers(a, &mut a.conn(), &[(key.as_str(), "f", "1")]);
    let old: Vec<u32> = job_pids(&mut a.conn()).into_iter().collect();

    // What `redis-cli --cluster reshard` does for one slot.
    ok(
        &mut b.conn(),
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", id_a],
    );
    ok(
        &mut a.conn(),
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", id_b],
    );
    ok(
        &mut a.conn(),
        &[
            "MIGRATE",
            "127.0.0.1",
            &b.port.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            &key,
        ],
    );
    // The key is on B now, the slot not yet: neither node runs it (never both).
    wait_gone("source stopped the moved key's worker", &old);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        jobs(&mut b.conn()).is_empty(),
        "importing node runs a key of a slot it does not own yet"
    );
    for s in &cl.primaries {
        ok(&mut s.conn(), &["CLUSTER", "SETSLOT", &slot, "NODE", id_b]);
    }
    assert_workers(b, &mut b.conn(), &[(key.as_str(), "f", "1")]);
    assert!(jobs(&mut a.conn()).is_empty());
    // B's start came after A's stop (stream ids are millisecond timestamps).
    let ms = |e: &HashMap<String, String>| -> u64 {
        e["_id"].split('-').next().unwrap().parse().unwrap()
    };
    let stopped_a = node_events(a)
        .into_iter()
        .filter(|e| e["event"] == "exited" && e.get("key") == Some(&key))
        .map(|e| ms(&e))
        .max()
        .expect("A recorded the exit");
    let started_b = wait_for("B recorded the start", WAIT, || {
        node_events(b)
            .into_iter()
            .filter(|e| e["event"] == "started" && e.get("key") == Some(&key))
            .map(|e| ms(&e))
            .min()
    });
    assert!(
        started_b >= stopped_a,
        "B started {started_b} before A stopped {stopped_a}"
    );
}

/// The names of the watches stores on one node.
fn stores(s: &Server) -> Vec<String> {
    to_array(&ok(&mut s.conn(), &["KEYS", "streamwatch:watches*"]))
        .iter()
        .map(vstr)
        .collect()
}

fn has_watch(s: &Server, pattern: &str) -> bool {
    parse_maps(&ok(&mut s.conn(), &["STREAMWATCH.WATCHES"]))
        .iter()
        .any(|w| get_str(w, "pattern") == pattern && get_str(w, "source") == "command")
}

/// What `redis-cli --cluster reshard` does for one slot: mark it, migrate its keys until
/// none are left, assign it.
fn reshard(cl: &Cluster, slot: u16, from: usize, to: usize) {
    let slot = slot.to_string();
    let (a, b) = (&cl.primaries[from], &cl.primaries[to]);
    ok(
        &mut b.conn(),
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &cl.ids[from]],
    );
    ok(
        &mut a.conn(),
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &cl.ids[to]],
    );
    loop {
        let keys: Vec<String> = to_array(&ok(
            &mut a.conn(),
            &["CLUSTER", "GETKEYSINSLOT", &slot, "100"],
        ))
        .iter()
        .map(vstr)
        .collect();
        if keys.is_empty() {
            break;
        }
        let port = b.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        ok(&mut a.conn(), &args);
    }
    for s in &cl.primaries {
        ok(
            &mut s.conn(),
            &["CLUSTER", "SETSLOT", &slot, "NODE", &cl.ids[to]],
        );
    }
}

#[test]
fn cluster_watches_sent_to_every_primary_follow_reshard_and_failover() {
    let mut cl = Cluster::start(&simple_config("cfg:*"));
    for p in &cl.primaries {
        ok(
            &mut p.conn(),
            &["STREAMWATCH.WATCH", "cw:*", "HANDLER", "w"],
        );
    }
    for r in &cl.replicas {
        wait_until("replica has the shard's watch", WAIT, || {
            has_watch(r, "cw:*")
        });
    }
    let keys: Vec<String> = (0..3).map(|i| cl.key_on("cw:", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        ok(
            &mut cl.primaries[i].conn(),
            &["HSET", k, "f", &i.to_string()],
        );
    }
    for (i, k) in keys.iter().enumerate() {
        let p = &cl.primaries[i];
        assert_workers(p, &mut p.conn(), &[(k.as_str(), "f", &i.to_string())]);
    }
    // Each shard's store is a key in one of its own slots.
    for (i, p) in cl.primaries.iter().enumerate() {
        let names = stores(p);
        assert_eq!(names.len(), 1, "{names:?}");
        let slot = cl.slot(&names[0]);
        assert!((RANGES[i].0..=RANGES[i].1).contains(&slot));
    }

    // Reshard the slot holding shard 0's store to shard 1: shard 0 keeps its watch,
    // its store moves into a slot it still owns, and its jobs keep running.
    let store0 = stores(&cl.primaries[0]).remove(0);
    let slot0 = cl.slot(&store0);
    assert_ne!(slot0, cl.slot(&keys[0]));
    let p0 = &cl.primaries[0];
    let pids0 = job_pids(&mut p0.conn());
    reshard(&cl, slot0, 0, 1);
    wait_until("shard 0's store back in a slot it owns", WAIT, || {
        let names = stores(p0);
        names.len() == 1 && names[0] != store0 && {
            let s = cl.slot(&names[0]);
            s != slot0 && (RANGES[0].0..=RANGES[0].1).contains(&s)
        }
    });
    assert!(has_watch(p0, "cw:*"));
    assert_eq!(
        job_pids(&mut p0.conn()),
        pids0,
        "shard 0's jobs were not touched"
    );
    assert!(has_watch(&cl.primaries[1], "cw:*"));
    wait_until("replica 0 follows the moved store", WAIT, || {
        has_watch(&cl.replicas[0], "cw:*")
    });

    // UNWATCH on one primary changes that shard only.
    ok(&mut p0.conn(), &["STREAMWATCH.UNWATCH", "cw:*"]);
    assert!(!has_watch(p0, "cw:*"));
    assert_workers(p0, &mut p0.conn(), &[]);
    wait_until("replica 0 follows UNWATCH", WAIT, || {
        !has_watch(&cl.replicas[0], "cw:*")
    });
    assert!(has_watch(&cl.primaries[2], "cw:*"));

    // Shard 2's primary dies: its promoted replica has the watch and runs the jobs.
    let old2: Vec<u32> = job_pids(&mut cl.primaries[2].conn()).into_iter().collect();
    cl.primaries[2].kill9();
    wait_gone("killed primary's workers", &old2);
    wait_until("replica 2 promoted", Duration::from_secs(60), || {
        is_primary(&cl.replicas[2])
    });
    let r2 = &cl.replicas[2];
    assert!(has_watch(r2, "cw:*"));
    assert_workers(r2, &mut r2.conn(), &[(keys[2].as_str(), "f", "2")]);
}

/// The names of the paused watches keys on one node.
fn paused_keys(s: &Server) -> Vec<String> {
    to_array(&ok(&mut s.conn(), &["KEYS", "streamwatch:paused*"]))
        .iter()
        .map(vstr)
        .collect()
}

fn is_paused(s: &Server, pattern: &str) -> bool {
    parse_maps(&ok(&mut s.conn(), &["STREAMWATCH.WATCHES"]))
        .iter()
        .any(|w| get_str(w, "pattern") == pattern && get_int(w, "paused") == Some(1))
}

/// `PAUSE pattern` is per shard, like WATCH: the paused key sits beside the shard's
/// store (same hash tag, same slot), moves back with it after a reshard, and a
/// promoted replica keeps the watches paused (config and command alike).
#[test]
fn cluster_paused_watches_follow_reshard_and_failover() {
    let mut cl = Cluster::start(&simple_config("cfg:*"));
    for p in &cl.primaries {
        ok(
            &mut p.conn(),
            &["STREAMWATCH.WATCH", "cw:*", "HANDLER", "w"],
        );
    }
    let cw: Vec<String> = (0..3).map(|i| cl.key_on("cw:", i)).collect();
    let cfg0 = cl.key_on("cfg:", 0);
    for (i, k) in cw.iter().enumerate() {
        ok(&mut cl.primaries[i].conn(), &["HSET", k, "f", "1"]);
    }
    ok(&mut cl.primaries[0].conn(), &["HSET", &cfg0, "g", "1"]);
    let p0 = &cl.primaries[0];
    assert_workers(
        p0,
        &mut p0.conn(),
        &[(cw[0].as_str(), "f", "1"), (cfg0.as_str(), "g", "1")],
    );
    ok(&mut p0.conn(), &["STREAMWATCH.PAUSE", "cw:*"]);
    ok(&mut p0.conn(), &["STREAMWATCH.PAUSE", "cfg:*"]);
    assert_workers(p0, &mut p0.conn(), &[]);
    // The other shards run on.
    for (p, k) in cl.primaries.iter().zip(&cw).skip(1) {
        assert!(!is_paused(p, "cw:*"));
        assert_workers(p, &mut p.conn(), &[(k.as_str(), "f", "1")]);
    }
    // Beside the store, in the same slot.
    let store0 = stores(p0).remove(0);
    let paused0 = paused_keys(p0).remove(0);
    assert_eq!(cl.slot(&store0), cl.slot(&paused0));
    wait_until("replica 0 follows the pauses", WAIT, || {
        is_paused(&cl.replicas[0], "cw:*") && is_paused(&cl.replicas[0], "cfg:*")
    });

    // A reshard carries both keys away; shard 0 writes them again, still paused.
    let slot0 = cl.slot(&store0);
    reshard(&cl, slot0, 0, 1);
    wait_until("shard 0's paused key back in a slot it owns", WAIT, || {
        let names = paused_keys(p0);
        names.len() == 1 && names[0] != paused0 && {
            let s = cl.slot(&names[0]);
            s != slot0 && (RANGES[0].0..=RANGES[0].1).contains(&s)
        }
    });
    assert!(is_paused(p0, "cw:*") && is_paused(p0, "cfg:*"));
    assert!(
        !is_paused(&cl.primaries[1], "cw:*"),
        "a carried copy is ignored"
    );
    wait_until("replica 0 follows the moved key", WAIT, || {
        paused_keys(&cl.replicas[0]) == paused_keys(p0)
    });

    // Shard 0's primary dies: the promoted replica keeps both watches paused.
    let old0: Vec<u32> = job_pids(&mut p0.conn()).into_iter().collect();
    cl.primaries[0].kill9();
    wait_gone("killed primary's workers", &old0);
    wait_until("replica 0 promoted", Duration::from_secs(60), || {
        is_primary(&cl.replicas[0])
    });
    let r0 = &cl.replicas[0];
    assert!(is_paused(r0, "cw:*") && is_paused(r0, "cfg:*"));
    ok(&mut r0.conn(), &["STREAMWATCH.RECONCILE"]);
    assert_workers(r0, &mut r0.conn(), &[]);
    ok(&mut r0.conn(), &["STREAMWATCH.RESUME", "cw:*"]);
    ok(&mut r0.conn(), &["STREAMWATCH.RESUME", "cfg:*"]);
    assert_workers(
        r0,
        &mut r0.conn(),
        &[(cw[0].as_str(), "f", "1"), (cfg0.as_str(), "g", "1")],
    );
}
