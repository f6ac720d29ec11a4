//! Measures HSET -> worker started: starts redis-server with the module on a free port,
//! HSETs N new fields one at a time (each becoming a running job, so the hash grows to N
//! fields), and for each takes the time from just before HSET to the worker's own first
//! timestamp (see examples/stamp.rs). Prints p50/p90/p99/max.
//!
//! cargo build --release --examples && target/release/examples/latency [N]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{now_ns, stamp_server, wait_stamp};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("sw-latency-{}", std::process::id()));
    let (server, stamps) = stamp_server(&dir, "latency", "lat", &[], "");
    let mut con = server.conn();
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
        let started = wait_stamp(&path);
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
