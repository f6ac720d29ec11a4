//! Phase 6: worker pools (`pool = N`), side by side in one run.
//!
//! a. The benchmark's Python job (`bench/pool_job.py`: per entry sum(range(1000)), then
//!    ok) on a pool of 8, CONCURRENCY 8, entries/s, against the raw limit (the same 8
//!    workers fed the same JSON lines over pipes by a loop with no Redis,
//!    `pool_raw.rs`), a redis-py consumer-group worker doing the same work in-process
//!    in 8 threads (`consumer.py --inline-sum`), and the same job without a pool (a
//!    process per entry, `bench/pool_job_once.py`).
//! b. The compiled worker (`examples/pool_worker.rs`, answers at once) on a pool of 8,
//!    against its raw limit.
//! c. XADD -> the worker has the entry, one entry at a time: a pool worker
//!    (`pool_worker` with `STAMP_DIR`, stamping when it read the line) against a
//!    process per entry (the statically linked `stamp` worker, stamping when it started).
//! d. The module's memory (`streamwatch_memory`) while a pool drains a large backlog.
//!
//! Sizes scale with BENCH_POOL_N (default 20,000 entries per throughput round).

use crate::common::{
    fill_stream, get_int, get_str, group_done, info, job, now_ns, ok, parse_maps, wait_for,
    wait_stamp, watch_map, watch_stream, Server, WAIT,
};
use crate::pool_raw::raw_pool_rate;
use crate::{median, percentile, stamp_binary, start_server, Row, ROOT};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The pools' size and every watch's CONCURRENCY here.
const SIZE: u32 = 8;

pub(crate) fn pool_worker_binary() -> PathBuf {
    Path::new(ROOT).join("target/release/examples/pool_worker")
}

fn script(name: &str) -> String {
    Path::new(ROOT)
        .join("bench")
        .join(name)
        .to_str()
        .expect("a UTF-8 path")
        .to_string()
}

/// The handlers of this phase: `pypool` (the Python job, pool of 8), `pyonce` (the same
/// work, a process per entry), `rspool` (pool_worker, pool of 8), `rsstamp` (the same
/// with `STAMP_DIR`) and `stampid` (the stamp worker per entry, stamping under its id).
pub(crate) fn handlers(pool_stamps: &Path, once_stamps: &Path) -> String {
    let worker = pool_worker_binary();
    format!(
        "[handler.pypool]\ncommand = [\"python3\", \"{py}\"]\npool = {SIZE}\n\n\
         [handler.pyonce]\ncommand = [\"python3\", \"{once}\"]\n\n\
         [handler.rspool]\ncommand = [\"{w}\"]\npool = {SIZE}\n\n\
         [handler.rsstamp]\ncommand = [\"{w}\"]\nenv = {{ STAMP_DIR = \"{ps}\" }}\npool = {SIZE}\n\n\
         [handler.stampid]\ncommand = [\"{stamp}\"]\nenv = {{ STAMP_DIR = \"{os}\", STREAMWATCH_FIELD = \"{{id}}\" }}\nstop-grace-ms = 500\n",
        py = script("pool_job.py"),
        once = script("pool_job_once.py"),
        w = worker.display(),
        ps = pool_stamps.display(),
        stamp = stamp_binary().display(),
        os = once_stamps.display(),
    )
}

/// The `STREAMWATCH.POOLS` map of handler `name`'s pool, if it has one yet.
fn pool_stats(c: &mut redis::Connection, name: &str) -> Option<crate::common::Map> {
    parse_maps(&ok(c, &["STREAMWATCH.POOLS"]))
        .into_iter()
        .find(|m| get_str(m, "handler") == name)
}

/// Starts all of `handler`'s workers (a pool starts them on demand) and waits until
/// they are all idle, so that no timed figure counts an interpreter's start-up (the raw
/// limit does not either): batches of entries on `warm-<handler>` until the pool has
/// its 8 workers.
pub(crate) fn warm_pool(c: &mut redis::Connection, handler: &str) {
    let key = format!("warm-{handler}");
    let _ = ok(
        c,
        &[
            "STREAMWATCH.WATCH",
            &key,
            "HANDLER",
            handler,
            "TYPE",
            "stream",
            "CONCURRENCY",
            &SIZE.to_string(),
            "REPLACE",
        ],
    );
    let full = |c: &mut redis::Connection| {
        pool_stats(c, handler).is_some_and(|p| {
            get_int(&p, "workers") == Some(SIZE.into()) && get_int(&p, "idle") == Some(SIZE.into())
        })
    };
    for _ in 0..50 {
        if full(c) {
            return;
        }
        let last = fill_stream(c, &key, 64);
        let t0 = Instant::now();
        while !group_done(c, &key, "streamwatch", &last) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "warm-up of {handler} not drained"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!("bench: the pool of {handler} did not reach {SIZE} idle workers; measuring anyway");
}

/// Entries/s of `handler` draining `entries` entries put on `key` beforehand: from
/// the WATCH (CONCURRENCY 8) to the last acknowledgement, as in phase 5. The stream
/// is deleted afterwards.
pub(crate) fn drain_rate(
    c: &mut redis::Connection,
    key: &str,
    handler: &str,
    entries: usize,
) -> f64 {
    let last = fill_stream(c, key, entries);
    let t0 = Instant::now();
    watch_stream(c, key, handler, SIZE);
    // Polled every 10 ms, as in phase 5 (a probe is a round trip through the server
    // under test).
    while !group_done(c, key, "streamwatch", &last) {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "stream {key} ({handler}) not drained"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rate = entries as f64 / t0.elapsed().as_secs_f64();
    let _: () = redis::cmd("STREAMWATCH.UNWATCH")
        .arg(key)
        .query(c)
        .expect("UNWATCH");
    let _: i64 = redis::cmd("DEL").arg(key).query(c).expect("DEL");
    rate
}

/// Entries/s of `consumer.py` (8 threads, `handler`) on `entries` entries of `key` of
/// the plain server.
fn redis_py_rate(
    plain: &Server,
    pc: &mut redis::Connection,
    key: &str,
    entries: usize,
    handler: &str,
) -> f64 {
    let last = fill_stream(pc, key, entries);
    let out = Command::new("python3")
        .env("PYTHONPATH", Path::new(ROOT).join(".deps/py"))
        .arg(Path::new(ROOT).join("bench/consumer.py"))
        .args([
            &plain.port.to_string(),
            key,
            &entries.to_string(),
            &SIZE.to_string(),
            handler,
        ])
        .output()
        .expect("python3 bench/consumer.py");
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("consumer.py: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        group_done(pc, key, "peer", &last),
        "redis-py consumer finished"
    );
    let _: i64 = redis::cmd("DEL").arg(key).query(pc).expect("DEL");
    entries as f64 / secs
}

/// Median of the ratios a/b within rounds.
pub(crate) fn within(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

/// XADD -> stamp, one entry at a time on `key` (watched with a handler whose workers
/// stamp into `stamps/<id>`); each entry is acknowledged before the next is added.
/// `stop_run`: a process per entry (the stamp worker, which waits for SIGTERM after
/// stamping and then exits 0): it is sent SIGTERM once its stamp is there.
fn xadd_to_stamp(
    c: &mut redis::Connection,
    key: &str,
    stamps: &Path,
    n: usize,
    stop_run: bool,
) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t0 = now_ns();
        let id: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("n")
            .arg("1")
            .query(c)
            .expect("XADD");
        out.push(ms(wait_stamp(&stamps.join(&id)).saturating_sub(t0)));
        if stop_run {
            // The stamp can be there before the module has heard of the pid.
            let pid = wait_for(&format!("the pid of the run of {id}"), WAIT, || {
                job(c, key, &id).and_then(|j| get_int(&j, "pid"))
            });
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let t = Instant::now();
        while !group_done(c, key, "streamwatch", &id) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{key} {id} not acked"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // As in phase 1: each sample starts on a quiet machine, on both sides alike.
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

/// 1000000 -> "1,000,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(crate) fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

pub(crate) fn info_bytes(c: &mut redis::Connection, section: &str, name: &str) -> f64 {
    info(c, section)
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn run(rows: &mut Vec<Row>, plain: &Server, pc: &mut redis::Connection, dir: &Path) {
    let n: usize = std::env::var("BENCH_POOL_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let scale = n as f64 / 20_000.0;
    let n_once = (n / 100).max(20);
    let n_lat = ((300.0 * scale) as usize).max(20);
    let backlog = ((1_000_000.0 * scale) as usize).max(10_000);
    let drained = backlog / 10;
    eprintln!(
        "bench: pools: {n} entries per pool round, {n_once} without a pool, {n_lat} latency samples per side, {backlog}-entry backlog ({drained} drained)"
    );
    let worker = pool_worker_binary();
    assert!(
        worker.exists(),
        "run `make bench` (builds {})",
        worker.display()
    );
    let worker = worker.to_str().expect("a UTF-8 path").to_string();
    let (pool_stamps, once_stamps) = (dir.join("stamps-pool"), dir.join("stamps-once"));
    for d in [&pool_stamps, &once_stamps] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let toml = handlers(&pool_stamps, &once_stamps);
    let s = start_server(Some(&toml));
    let mut sc = s.conn();

    // a, b: entries/s, three rounds, each side once per round.
    let py_job = script("pool_job.py");
    let (mut py, mut py_raw, mut redis_py, mut once) = (vec![], vec![], vec![], vec![]);
    let (mut rs, mut rs_raw) = (vec![], vec![]);
    for round in 0..3 {
        warm_pool(&mut sc, "pypool");
        py.push(drain_rate(&mut sc, &format!("pp{round}"), "pypool", n));
        py_raw.push(raw_pool_rate(&["python3", &py_job], SIZE as usize, n));
        redis_py.push(redis_py_rate(
            plain,
            pc,
            &format!("pr{round}"),
            n,
            "--inline-sum",
        ));
        once.push(drain_rate(&mut sc, &format!("po{round}"), "pyonce", n_once));
        warm_pool(&mut sc, "rspool");
        rs.push(drain_rate(&mut sc, &format!("rp{round}"), "rspool", n));
        rs_raw.push(raw_pool_rate(&[&worker], SIZE as usize, n));
        eprintln!(
            "bench: pools round {round}: python pool {:.0}/s, raw {:.0}/s, redis-py {:.0}/s, no pool {:.1}/s; pool_worker {:.0}/s, raw {:.0}/s",
            py[round], py_raw[round], redis_py[round], once[round], rs[round], rs_raw[round]
        );
    }
    let py_fig = format!(
        "Python pool job entries/s (bench/pool_job.py), pool = 8, CONCURRENCY 8, {} entries, median of 3",
        thousands(n)
    );
    let vs_raw = within(&py, &py_raw);
    rows.push(Row {
        figure: py_fig.clone(),
        value: median(&py),
        unit: "entries/s",
        against: "raw pool limit (same workers, pipes, no Redis)",
        other: Some(median(&py_raw)),
        ratio: Some(vs_raw),
        target: ">= 0.5x raw limit".into(),
        met: vs_raw >= 0.5,
    });
    let vs_py = within(&py, &redis_py);
    rows.push(Row {
        figure: py_fig.clone(),
        value: median(&py),
        unit: "entries/s",
        against: "redis-py consumer, 8 threads, same work in-process",
        other: Some(median(&redis_py)),
        ratio: Some(vs_py),
        target: ">= 5x redis-py".into(),
        met: vs_py >= 5.0,
    });
    let vs_once = within(&py, &once);
    rows.push(Row {
        figure: format!("{py_fig} (no pool: {n_once} entries)"),
        value: median(&py),
        unit: "entries/s",
        against: "no pool: python3 bench/pool_job_once.py per entry",
        other: Some(median(&once)),
        ratio: Some(vs_once),
        target: ">= 100x no pool".into(),
        met: vs_once >= 100.0,
    });
    let rs_fig = format!(
        "compiled pool worker entries/s (examples/pool_worker), pool = 8, CONCURRENCY 8, {} entries, median of 3",
        thousands(n)
    );
    let vs_rs_raw = within(&rs, &rs_raw);
    rows.push(Row {
        figure: rs_fig.clone(),
        value: median(&rs),
        unit: "entries/s",
        against: "raw pool limit (same workers, pipes, no Redis)",
        other: Some(median(&rs_raw)),
        ratio: Some(vs_rs_raw),
        target: ">= 0.5x raw pipe limit".into(),
        met: vs_rs_raw >= 0.5,
    });
    rows.push(Row {
        figure: rs_fig,
        value: median(&rs),
        unit: "entries/s",
        against: "",
        other: None,
        ratio: None,
        target: ">= 20,000 entries/s".into(),
        met: median(&rs) >= 20_000.0,
    });

    // c. XADD -> the worker has the entry, pool against a process per entry, in 4
    //    interleaved rounds (each side first every other round).
    for (key, handler) in [("lat-pool", "rsstamp"), ("lat-once", "stampid")] {
        watch_stream(&mut sc, key, handler, SIZE);
    }
    // Not timed: the pool's first worker starts, the stamp binary is in the page cache.
    xadd_to_stamp(&mut sc, "lat-pool", &pool_stamps, 5, false);
    xadd_to_stamp(&mut sc, "lat-once", &once_stamps, 5, true);
    let (mut lat_pool, mut lat_once) = (Vec::new(), Vec::new());
    for r in 0..4 {
        let k = n_lat.div_ceil(4);
        if r % 2 == 0 {
            lat_pool.extend(xadd_to_stamp(&mut sc, "lat-pool", &pool_stamps, k, false));
            lat_once.extend(xadd_to_stamp(&mut sc, "lat-once", &once_stamps, k, true));
        } else {
            lat_once.extend(xadd_to_stamp(&mut sc, "lat-once", &once_stamps, k, true));
            lat_pool.extend(xadd_to_stamp(&mut sc, "lat-pool", &pool_stamps, k, false));
        }
    }
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (a, b) = (percentile(&lat_pool, p), percentile(&lat_once, p));
        rows.push(Row {
            figure: format!(
                "XADD -> worker has the entry, pool = 8 (examples/pool_worker), {} entries one at a time, {label}",
                lat_pool.len()
            ),
            value: a,
            unit: "ms",
            against: "no pool (stamp worker per entry)",
            other: Some(b),
            ratio: Some(a / b),
            target: "not slower than no pool".into(),
            met: a <= b,
        });
    }
    drop(sc);
    drop(s);

    // d. The module's memory while a pool of 8 drains a large backlog (a fresh server:
    //    nothing of the rounds above is counted).
    let s = start_server(Some(&toml));
    let mut sc = s.conn();
    let key = "backlog";
    fill_stream(&mut sc, key, backlog);
    warm_pool(&mut sc, "rspool");
    let used_before = info_bytes(&mut sc, "memory", "used_memory");
    let module_before = info_bytes(&mut sc, "streamwatch", "streamwatch_memory");
    let (mut module_max, mut used_max) = (module_before, used_before);
    let t0 = Instant::now();
    watch_stream(&mut sc, key, "rspool", SIZE);
    let mut acked = 0;
    let mut samples = 0usize;
    while acked < drained as i64 {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "backlog: only {acked} of {drained} entries done"
        );
        std::thread::sleep(Duration::from_millis(20));
        module_max = module_max.max(info_bytes(&mut sc, "streamwatch", "streamwatch_memory"));
        used_max = used_max.max(info_bytes(&mut sc, "memory", "used_memory"));
        samples += 1;
        acked = get_int(&watch_map(&mut sc, key), "acked").unwrap_or(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let busy = pool_stats(&mut sc, "rspool").and_then(|p| get_int(&p, "busy"));
    eprintln!(
        "bench: backlog: {acked} entries done in {secs:.1} s ({:.0}/s), {samples} samples, busy workers at the end: {busy:?}",
        acked as f64 / secs
    );
    rows.push(Row {
        figure: format!(
            "module memory with {}-entry backlog, pool of 8 busy (max streamwatch_memory, {samples} samples; stopped after the first {} entries were done, not drained; idle before: {:.2} MB)",
            thousands(backlog),
            thousands(acked as usize),
            mb(module_before)
        ),
        value: mb(module_max),
        unit: "MB",
        against: "server used_memory growth beyond the stream",
        other: Some(mb(used_max - used_before)),
        ratio: None,
        target: "< 2 MB".into(),
        met: mb(module_max) < 2.0,
    });
}
