//! Measures two failover figures with N running jobs (default 100):
//! * promotion -> jobs running: a replica gets `REPLICAOF NO ONE`; time from just
//!   before the command to the last of its N workers' own start stamps;
//! * orphan kill: the primary gets `kill -9`; time until every one of its workers is
//!   gone from /proc (polled every 200 µs).
//!
//! cargo build --release --examples && target/release/examples/failover_times [N]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{now_ns, stamp_server};
use std::path::Path;
use std::time::{Duration, Instant};

fn stamps(dir: &Path) -> Vec<u128> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_stamps(dir: &Path, n: usize) -> Vec<u128> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stamps(dir);
        if s.len() >= n {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} workers started",
            s.len()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Pids in a STREAMWATCH.JOBS reply (RESP2: flat key/value arrays).
fn job_pids(c: &mut redis::Connection) -> Vec<i32> {
    let v: redis::Value = redis::cmd("STREAMWATCH.JOBS").query(c).expect("JOBS");
    let mut pids = Vec::new();
    if let redis::Value::Array(jobs) = v {
        for j in jobs {
            if let redis::Value::Array(kv) = j {
                for pair in kv.chunks(2) {
                    if let [redis::Value::BulkString(k), redis::Value::Int(p)] = pair {
                        if k == b"pid" {
                            pids.push(*p as i32);
                        }
                    }
                }
            }
        }
    }
    pids
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("sw-failover-{}", std::process::id()));
    let (mut primary, pstamps) = stamp_server(&dir, "primary", "ft", &[], "");
    let mut pc = primary.conn();
    let port = primary.port.to_string();
    let replicaof = ["--replicaof", "127.0.0.1", &port];
    let (mut replica, rstamps) = stamp_server(&dir, "replica", "ft", &replicaof, "");
    let mut rc = replica.conn();
    let mut hset = redis::cmd("HSET");
    hset.arg("ft");
    for i in 0..n {
        hset.arg(format!("f{i}")).arg("v");
    }
    let _: i64 = hset.query(&mut pc).expect("HSET");
    wait_stamps(&pstamps, n);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::cmd("HLEN")
        .arg("ft")
        .query::<usize>(&mut rc)
        .unwrap_or(0)
        < n
    {
        assert!(Instant::now() < deadline, "replica did not sync");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(stamps(&rstamps).is_empty(), "the replica ran workers");

    // Orphan kill: kill -9 the primary, poll its workers.
    let pids = job_pids(&mut pc);
    assert_eq!(pids.len(), n);
    let t = Instant::now();
    primary.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "workers outlived the server");
        std::thread::sleep(Duration::from_micros(200));
    }
    let orphan = t.elapsed();

    // Promotion.
    let t0 = now_ns();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut rc)
        .expect("REPLICAOF NO ONE");
    let s = wait_stamps(&rstamps, n);
    let last = s.iter().max().copied().unwrap_or(t0);
    let first = s.iter().min().copied().unwrap_or(t0);
    println!(
        "{n} jobs: promotion -> first worker {:.2} ms, all {n} running {:.2} ms; kill -9 of redis-server -> all workers gone {:.2} ms",
        first.saturating_sub(t0) as f64 / 1e6,
        last.saturating_sub(t0) as f64 / 1e6,
        orphan.as_secs_f64() * 1e3
    );
    replica.kill9();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}
