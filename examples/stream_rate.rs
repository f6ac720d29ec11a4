//! Measures stream jobs per second: fills a stream with N entries, then watches it with
//! a `/bin/true` handler at CONCURRENCY 1, 4 and 8 (a fresh stream each) and takes the
//! time from STREAMWATCH.WATCH until the group has delivered the last entry and has
//! nothing pending (every entry run and acknowledged). Prints jobs/s for each.
//!
//! cargo build --release --examples && target/release/examples/stream_rate [N]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{fill_stream, group_done, stamp_server, watch_stream};
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("sw-stream-rate-{}", std::process::id()));
    let (server, _) = stamp_server(
        &dir,
        "rate",
        "unused",
        &[],
        "[handler.true]\ncommand = [\"/bin/true\"]\n",
    );
    let mut con = server.conn();
    for conc in [1, 4, 8] {
        let key = format!("rate:{conc}");
        let last = fill_stream(&mut con, &key, n);
        let t0 = Instant::now();
        watch_stream(&mut con, &key, "true", conc);
        while !group_done(&mut con, &key, "streamwatch", &last) {
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
