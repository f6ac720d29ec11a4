//! Failover driven by Sentinel: the primary is killed, Sentinel promotes the replica,
//! and the promoted node starts the jobs (the dead primary's workers died with it).

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Sentinel (the server binary under test in `--sentinel` mode); killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
}

impl Sentinel {
    fn start(dir: &TempDir, primary_port: u16) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor sw 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds sw 1000\n\
                 sentinel failover-timeout sw 10000\n",
                dir.path().display(),
                dir.path().join("sentinel.log").display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new(redis_server_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sentinel");
        let s = Sentinel { child, port };
        wait_until("sentinel answers", WAIT, || s.conn().is_some());
        s
    }

    fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()
    }

    /// The port Sentinel currently names as the primary of `sw`.
    fn primary_port(&self) -> Option<u16> {
        let mut c = self.conn()?;
        let v: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("sw")
            .query(&mut c)
            .ok()?;
        v.get(1)?.parse().ok()
    }

    fn knows_replicas(&self) -> usize {
        let Some(mut c) = self.conn() else { return 0 };
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("sw")
            .query::<redis::Value>(&mut c)
            .map(|v| to_array(&v).len())
            .unwrap_or(0)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On a fresh connection: Sentinel kills the clients of a node it reconfigures.
fn is_primary(s: &Server) -> bool {
    let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{}/", s.port))
        .and_then(|c| c.get_connection())
    else {
        return false;
    };
    redis::cmd("INFO")
        .arg("replication")
        .query::<String>(&mut c)
        .is_ok_and(|i| i.contains("role:master"))
}

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
            let done = sentinel.primary_port() == Some(r.port) && is_primary(&r);
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
