//! Phase 7: what keeping job outcomes costs (`outcomes-max`, default 10,000 per
//! stream), side by side in one run on one server: the same pools as phase 6 drain the
//! same entries with outcomes kept and with none (`outcomes-max 0`), three rounds, each
//! side once per round.
//! a. entries/s of `/bin/true` run per entry (CONCURRENCY 8, as phase 5), of the Python pool (`bench/pool_job.py`, pool of 8, CONCURRENCY 8) and
//!    of the compiled worker (`examples/pool_worker.rs`, answers at once): the fastest
//!    queue there is, so the largest share of the outcome's own cost;
//! b. bytes per kept outcome and the server's growth for one stream at the default
//!    bound (`outcomes-max` 10,000: between 5,000 and 10,000 kept): the `used_memory`
//!    freed when they are deleted.

use crate::common::{ok, vint};
use crate::pools::{drain_rate, handlers, info_bytes, mb, warm_pool, within};
use crate::{median, start_server, Row};
use std::path::Path;

/// Rounds, each side once per round: the pools' figures vary from run to run on two
/// cores, and the ratios are medians of the ratios within rounds.
const ROUNDS: usize = 5;

fn set_kept(c: &mut redis::Connection, n: &str) {
    ok(c, &["CONFIG", "SET", "streamwatch.outcomes-max", n]);
}

pub fn run(rows: &mut Vec<Row>, dir: &Path) {
    let n: usize = std::env::var("BENCH_POOL_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let (a, b) = (dir.join("stamps-o1"), dir.join("stamps-o2"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let toml = format!(
        "{}\n[handler.true]\ncommand = [\"/bin/true\"]\n",
        handlers(&a, &b)
    );
    let s = start_server(Some(&toml));
    let mut c = s.conn();
    let (mut py_on, mut py_off, mut rs_on, mut rs_off) = (vec![], vec![], vec![], vec![]);
    let (mut one_on, mut one_off) = (vec![], vec![]);
    let n_once = (n / 4).max(500);
    for round in 0..ROUNDS {
        set_kept(&mut c, "10000");
        one_on.push(drain_rate(&mut c, &format!("to{round}"), "true", n_once));
        set_kept(&mut c, "0");
        one_off.push(drain_rate(&mut c, &format!("tn{round}"), "true", n_once));
        warm_pool(&mut c, "pypool");
        set_kept(&mut c, "10000");
        py_on.push(drain_rate(&mut c, &format!("o{round}"), "pypool", n));
        set_kept(&mut c, "0");
        py_off.push(drain_rate(&mut c, &format!("n{round}"), "pypool", n));
        warm_pool(&mut c, "rspool");
        set_kept(&mut c, "10000");
        rs_on.push(drain_rate(&mut c, &format!("ro{round}"), "rspool", n));
        set_kept(&mut c, "0");
        rs_off.push(drain_rate(&mut c, &format!("rn{round}"), "rspool", n));
        eprintln!(
            "bench: outcomes round {round}: /bin/true per entry {:.0}/s kept, {:.0}/s none; python pool {:.0}/s kept, {:.0}/s none; pool_worker {:.0}/s kept, {:.0}/s none",
            one_on[round], one_off[round], py_on[round], py_off[round], rs_on[round], rs_off[round]
        );
    }
    for (what, on, off) in [
        ("/bin/true, a process per entry,", &one_on, &one_off),
        ("Python pool", &py_on, &py_off),
        ("compiled pool worker", &rs_on, &rs_off),
    ] {
        let ratio = within(on, off);
        rows.push(Row {
            figure: format!("{what} entries/s with outcomes kept, median of {ROUNDS}"),
            value: median(on),
            unit: "entries/s",
            against: "none kept",
            other: Some(median(off)),
            ratio: Some(ratio),
            target: ">= 0.9x none kept".into(),
            met: ratio >= 0.9,
        });
    }
    // b. The outcomes of the last round's kept stream (its drain removed the stream,
    // not its outcomes): the default 10,000 once n >= 10,000. What the server frees
    // when they go (their keys, the index, the expiry entries) is what they cost.
    let last = ROUNDS - 1;
    let hashes = [
        format!("ro{last}:outcomes"),
        format!("ro{last}:outcomes:old"),
    ];
    let members: i64 = hashes
        .iter()
        .map(|k| vint(&ok(&mut c, &["HLEN", k])).unwrap_or(0))
        .sum();
    let before = info_bytes(&mut c, "memory", "used_memory");
    let _ = ok(&mut c, &["DEL", &hashes[0], &hashes[1]]);
    let after = info_bytes(&mut c, "memory", "used_memory");
    let per = (before - after) / members.max(1) as f64;
    rows.push(Row {
        figure: format!("bytes per kept outcome (used_memory freed by one stream's {members})"),
        value: per,
        unit: "bytes",
        against: "",
        other: None,
        ratio: None,
        target: "measured".into(),
        met: true,
    });
    rows.push(Row {
        figure: format!("server growth for one stream's {members} outcomes (used_memory)"),
        value: mb(before - after),
        unit: "MB",
        against: "",
        other: None,
        ratio: None,
        target: "measured".into(),
        met: true,
    });
}
