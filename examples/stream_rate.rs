//! Measures stream jobs per second: fills a stream with N entries, then watches it with
//! a `/bin/true` handler at CONCURRENCY 1, 4 and 8 (a fresh stream each) and takes the
//! time from STREAMWATCH.WATCH until the group has delivered the last entry and has
//! nothing pending (every entry run and acknowledged). Prints jobs/s for each.
//!
//! cargo build --release --examples && target/release/examples/stream_rate [N]

mod common;

use common::StampServer;
use std::time::{Duration, Instant};

fn group_done(c: &mut redis::Connection, key: &str, last: &str) -> bool {
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query(c)
        .unwrap_or_default();
    groups.iter().any(|g| {
        let m: std::collections::HashMap<String, redis::Value> =
            redis::FromRedisValue::from_redis_value(g).unwrap_or_default();
        let s = |k: &str| match m.get(k) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::Int(i)) => i.to_string(),
            _ => String::new(),
        };
        s("last-delivered-id") == last && s("pending") == "0"
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("sw-stream-rate-{}", std::process::id()));
    let server = StampServer::start_with(
        &dir,
        "rate",
        "unused",
        &[],
        "[handler.true]\ncommand = [\"/bin/true\"]\n",
    );
    let mut con = server.connect();
    for conc in [1, 4, 8] {
        let key = format!("rate:{conc}");
        let mut last = String::new();
        for chunk in 0..n.div_ceil(1000) {
            let mut p = redis::pipe();
            for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
                p.cmd("XADD").arg(&key).arg("*").arg("n").arg(i);
            }
            let ids: Vec<String> = p.query(&mut con).expect("XADD");
            last = ids.last().cloned().unwrap_or(last);
        }
        let t0 = Instant::now();
        let _: () = redis::cmd("STREAMWATCH.WATCH")
            .arg(&key)
            .arg("HANDLER")
            .arg("true")
            .arg("TYPE")
            .arg("stream")
            .arg("CONCURRENCY")
            .arg(conc)
            .query(&mut con)
            .expect("WATCH");
        while !group_done(&mut con, &key, &last) {
            assert!(t0.elapsed() < Duration::from_secs(600), "too slow");
            std::thread::sleep(Duration::from_millis(2));
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "CONCURRENCY {conc}: {n} entries in {secs:.2} s = {:.0} jobs/s",
            n as f64 / secs
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
