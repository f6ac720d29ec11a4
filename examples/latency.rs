//! Measures HSET -> worker started: starts redis-server with the module on a free port,
//! HSETs N new fields one at a time (each becoming a running job, so the hash grows to N
//! fields), and for each takes the time from just before HSET to the worker's own first
//! timestamp (see examples/stamp.rs). Prints p50/p90/p99/max.
//!
//! cargo build --release --examples && target/release/examples/latency [N]

mod common;

use common::{now_ns, StampServer};
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("sw-latency-{}", std::process::id()));
    let server = StampServer::start(&dir, "latency", "lat", &[]);
    let stamps = server.stamps.clone();
    let mut con = server.connect();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let field = format!("f{i}");
        let path = stamps.join(&field);
        let t0 = now_ns();
        let _: i64 = redis::cmd("HSET")
            .arg("lat")
            .arg(&field)
            .arg("v")
            .query(&mut con)
            .expect("HSET");
        let deadline = Instant::now() + Duration::from_secs(10);
        let started: u128 = loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                break s.trim().parse().expect("stamp");
            }
            assert!(Instant::now() < deadline, "worker {field} did not start");
            std::thread::sleep(Duration::from_micros(50));
        };
        lat.push((started.saturating_sub(t0)) as f64 / 1e6);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "HSET -> worker started over {n} fields: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
