//! `make bench`: streamwatch side by side with what users run today, and with the limit.
//!
//! Starts its own servers (REDIS_SERVER, default `redis-server`): one with the module,
//! plain ones for the baselines and the peer. Each figure is measured in this one run
//! against its comparison: the peer (`peer.rs`: a pub/sub keyspace-notification client
//! that spawns the same worker), the limit (the same worker spawned directly by this
//! process with posix_spawn, which is what std's `Command` uses here), the server
//! without the module, a raw spawn loop, or a redis-py consumer (`consumer.py`).
//! Phase 6 (`pools.rs`) measures worker pools against the raw pool limit
//! (`pool_raw.rs`), redis-py, and the same job without a pool. Phases are chosen with
//! BENCH_PHASES (default `1234567`); phase 7 (`outcomes.rs`) the
//! cost of job outcomes. Prints one table, writes it as JSON to
//! `bench/results.json` and draws the latency distribution to `bench/latency.png`. No
//! timed assertion lives in `make test`.
//!
//! The worker is `examples/stamp.rs`, linked statically: it writes its CLOCK_REALTIME
//! start time to a file, and on SIGTERM the time the signal arrived, then exits.

#[path = "../tests/common/mod.rs"]
mod common;
mod outcomes;
mod peer;
mod plot;
mod pool_raw;
mod pools;

use common::{
    fill_stream, group_done, now_ns, poll_until, stamp_handler, wait_stamp, watch_stream,
    watch_toml, Server,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The worker, linked statically by `make bench` (see the Makefile).
fn stamp_binary() -> PathBuf {
    Path::new(ROOT).join("target/stamp/release/examples/stamp")
}

/// A redis-server of this run (REDIS_SERVER, fresh --dir, free port): with the module
/// built in this tree when `module` gives its TOML config, plain with `None`. SIGKILLed
/// on drop (the module's helper then stops its workers).
fn start_server(module: Option<&str>) -> Server {
    let builder = match module {
        Some(toml) => Server::builder(toml)
            .module_path(Path::new(ROOT).join("target/release/libstreamwatch.so"))
            .module_arg("max-jobs", "20000"),
        None => Server::builder("").without_module(),
    };
    builder.kill_on_drop().start()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

/// Per new field: HSET -> its worker started, then HDEL -> its worker got SIGTERM.
fn hset_hdel(
    c: &mut redis::Connection,
    key: &str,
    stamps: &Path,
    prefix: &str,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut start, mut gone) = (Vec::new(), Vec::new());
    for i in 0..n {
        let field = format!("{prefix}{i}");
        let t0 = now_ns();
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(&field)
            .arg("v")
            .query(c)
            .expect("HSET");
        start.push(ms(wait_stamp(&stamps.join(&field)).saturating_sub(t0)));
        let t1 = now_ns();
        let _: i64 = redis::cmd("HDEL")
            .arg(key)
            .arg(&field)
            .query(c)
            .expect("HDEL");
        gone.push(ms(
            wait_stamp(&stamps.join(format!("{field}.exit"))).saturating_sub(t1)
        ));
        // Let the stopped worker finish exiting before the next start is timed, on
        // every side alike: the figures are each on a quiet machine.
        std::thread::sleep(Duration::from_millis(1));
    }
    (start, gone)
}

/// The limit: the same worker spawned directly (posix_spawn via std), started -> stamp.
fn limit(stamps: &Path, prefix: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..n {
        let field = format!("{prefix}{i}");
        let t0 = now_ns();
        let mut child = Command::new(stamp_binary())
            .env("STAMP_DIR", stamps)
            .env("STREAMWATCH_FIELD", &field)
            .spawn()
            .expect("spawn stamp");
        out.push(ms(wait_stamp(&stamps.join(&field)).saturating_sub(t0)));
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
    }
    out
}

type Pair = (Vec<f64>, Vec<f64>);

/// `n` samples per side, taken in 4 interleaved rounds so that a slow spell of the
/// machine hits every side alike.
fn rounds(
    n: usize,
    mut f: impl FnMut(usize, usize) -> (Vec<f64>, Pair, Pair),
) -> (Vec<f64>, Pair, Pair) {
    let mut out: (Vec<f64>, Pair, Pair) = Default::default();
    for r in 0..4 {
        let (a, b, c) = f(r, n.div_ceil(4));
        out.0.extend(a);
        out.1 .0.extend(b.0);
        out.1 .1.extend(b.1);
        out.2 .0.extend(c.0);
        out.2 .1.extend(c.1);
    }
    out
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// The peer process on `key` of a plain server, with its own stamp directory.
struct Peer {
    child: Child,
    server_port: u16,
    key: String,
}

impl Peer {
    fn start(server: &Server, key: &str, stamps: &Path) -> Peer {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("peer")
            .arg(server.port.to_string())
            .arg(key)
            .arg(stamp_binary())
            .arg(stamps)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("peer stdout"))
            .read_line(&mut line)
            .expect("peer ready");
        assert_eq!(line.trim(), "ready");
        Peer {
            child,
            server_port: server.port,
            key: key.to_string(),
        }
    }

    fn children(&self) -> usize {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_or(0, |s| s.split_whitespace().count())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Let it stop its workers (DEL), then end it.
        if let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{}/", self.server_port)) {
            if let Ok(mut con) = c.get_connection() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&self.key).query(&mut con);
                let deadline = Instant::now() + Duration::from_secs(20);
                while self.children() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_jobs(c: &mut redis::Connection) -> i64 {
    let v: redis::Value = redis::cmd("STREAMWATCH.STATUS").query(c).expect("STATUS");
    let m: HashMap<String, redis::Value> =
        redis::FromRedisValue::from_redis_value(&v).unwrap_or_default();
    let jobs: HashMap<String, i64> = m
        .get("jobs")
        .and_then(|j| redis::FromRedisValue::from_redis_value(j).ok())
        .unwrap_or_default();
    jobs.get("running").copied().unwrap_or(0)
}

/// The 1,000 fields `redis-benchmark -r 1000 ... f__rand_int__` writes: `f000000000000`...
fn thousand_fields(c: &mut redis::Connection, key: &str) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for i in 0..1000 {
        cmd.arg(format!("f{i:012}")).arg("v");
    }
    let _: i64 = cmd.query(c).expect("HSET 1000");
}

/// Polled every millisecond.
fn wait_until(desc: &str, timeout: Duration, f: impl FnMut() -> bool) {
    poll_until(desc, timeout, Duration::from_millis(1), f)
}

/// requests/s reported by one `redis-benchmark -q` run (on CPU 1, see `pin`).
fn benchmark(port: u16, args: &[&str]) -> f64 {
    let cpu = if cpus() > 1 { "1" } else { "0" };
    let out = Command::new("taskset")
        .args(["-c", cpu, "redis-benchmark", "-p", &port.to_string(), "-q"])
        .args(args)
        .output()
        .expect("run redis-benchmark (redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit(": ")
        .find_map(|part| {
            part.split(" requests per second")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"))
}

/// Pins every thread of server `pid` to CPU `cpus` ("0": while redis-benchmark runs on
/// CPU 1; "0-N": free again). Unpinned, back-to-back runs on the same server ranged
/// from 62,000 to 98,000 req/s as the scheduler put the server and redis-benchmark on
/// one core or on two; that swamped the few percent the module costs.
fn pin(pid: u32, cpus: &str) {
    if self::cpus() < 2 {
        return;
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset (util-linux)");
    assert!(status.success(), "taskset -a -p -c {cpus} {pid} failed");
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Alternates the two servers `runs` times, each first every other time (so neither
/// always runs right after the other): the medians of each, and the median of the
/// ratios a/b of the back-to-back pairs. The machine's speed drifts by more than the
/// module's cost (the plain server alone ranged 67,000-90,000 req/s across runs), so
/// the ratio is taken within pairs, which drift together, not between the medians.
fn throughput_pair(a: u16, b: u16, args: &[&str], runs: usize) -> (f64, f64, f64) {
    let (mut x, mut y, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (xa, yb) = if i % 2 == 0 {
            let xa = benchmark(a, args);
            (xa, benchmark(b, args))
        } else {
            let yb = benchmark(b, args);
            (benchmark(a, args), yb)
        };
        x.push(xa);
        y.push(yb);
        r.push(xa / yb);
    }
    (median(&x), median(&y), median(&r))
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs of `/bin/true` per second, spawned and waited for by `threads` threads.
fn raw_spawn_rate(n: usize, threads: usize) -> f64 {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..n / threads {
                    let _ = Command::new("/bin/true").status();
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    (n / threads * threads) as f64 / t0.elapsed().as_secs_f64()
}

/// One line of the table.
struct Row {
    figure: String,
    value: f64,
    unit: &'static str,
    against: &'static str,
    other: Option<f64>,
    /// streamwatch / other (or other / streamwatch where "faster" is the point).
    ratio: Option<f64>,
    target: String,
    met: bool,
}

fn main() {
    // `cargo bench` runs this with LD_LIBRARY_PATH set to four directories of its own,
    // and every process started from here would inherit it: the servers, the peer,
    // redis-py, and every worker on every side. The dynamic loader then looks for each
    // library in all of them first (57 failed opens for /bin/true), which made every
    // dynamically linked start 30% dearer (/bin/true: 500 -> 650 us of CPU) than
    // under any real service manager. Measured without it, on every side alike.
    // (Single-threaded here: nothing else reads the environment yet.)
    std::env::remove_var("LD_LIBRARY_PATH");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("peer") {
        peer::main(&args[1..]);
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // Stamps go to tmpfs when there is one: 10,000 workers creating files in one
    // directory of a disk file system measure the file system, not the spawning.
    let base = match Path::new("/dev/shm") {
        shm if shm.is_dir() => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("sw-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let stamp = stamp_binary();
    assert!(
        stamp.exists(),
        "run `make bench` (builds {})",
        stamp.display()
    );
    let stamps = |name: &str| {
        let p = dir.join(format!("stamps-{name}"));
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    };
    let (sw_dir, peer_dir, limit_dir) = (stamps("sw"), stamps("peer"), stamps("limit"));
    let toml = format!(
        "{}\n[handler.true]\ncommand = [\"/bin/true\"]\n\n{}\n{}\n{}",
        stamp_handler(&stamp, &sw_dir),
        watch_toml("lat", "stamp", None),
        watch_toml("big", "stamp", None),
        watch_toml("huge", "stamp", None)
    );
    let mut rows: Vec<Row> = Vec::new();
    let m = start_server(Some(&toml));
    let p = start_server(None);
    let b = start_server(None);
    let (mut mc, mut pc, mut bc) = (m.conn(), p.conn(), b.conn());
    let version: String = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut mc)
            .expect("INFO");
        let v = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .trim()
                .to_string()
        };
        let name = if info.contains("valkey_version") {
            "valkey"
        } else {
            "redis"
        };
        format!("{name} {}", v(&format!("{name}_version:")))
    };
    eprintln!("bench: {version}, {n} samples per latency figure");

    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "1234567".into());
    let want = |p: char| phases.contains(p);
    let mut plot_series = Vec::new();
    // 1. HSET -> worker started and HDEL -> worker gone, tiny hash.
    if want('1') {
        let peer_lat = Peer::start(&p, "lat", &peer_dir);
        let (lim, (sw_start, sw_gone), (peer_start, peer_gone)) = rounds(n, |r, k| {
            (
                limit(&limit_dir, &format!("t{r}-"), k),
                hset_hdel(&mut mc, "lat", &sw_dir, &format!("t{r}-"), k),
                hset_hdel(&mut pc, "lat", &peer_dir, &format!("t{r}-"), k),
            )
        });
        drop(peer_lat);
        let (lim50, lim99) = (median(&lim), percentile(&lim, 0.99));
        let (sw50, sw99) = (median(&sw_start), percentile(&sw_start, 0.99));
        let peer50 = median(&peer_start);
        rows.push(Row {
            figure: "HSET -> worker started, tiny hash, p50".into(),
            value: sw50,
            unit: "ms",
            against: "limit",
            other: Some(lim50),
            ratio: Some(sw50 / lim50),
            target: "<= 1.25x limit".into(),
            met: sw50 <= 1.25 * lim50,
        });
        rows.push(Row {
            figure: "HSET -> worker started, tiny hash, p99".into(),
            value: sw99,
            unit: "ms",
            against: "limit",
            other: Some(lim99),
            ratio: Some(sw99 / lim99),
            target: "<= 2x limit".into(),
            met: sw99 <= 2.0 * lim99,
        });
        rows.push(Row {
            figure: "HSET -> worker started, tiny hash, p50".into(),
            value: sw50,
            unit: "ms",
            against: "peer",
            other: Some(peer50),
            ratio: Some(sw50 / peer50),
            target: "not slower than peer".into(),
            met: sw50 <= peer50,
        });
        let (g99, pg99) = (percentile(&sw_gone, 0.99), percentile(&peer_gone, 0.99));
        rows.push(Row {
            figure: "HDEL -> worker gone, tiny hash, p99".into(),
            value: g99,
            unit: "ms",
            against: "peer",
            other: Some(pg99),
            ratio: Some(g99 / pg99),
            target: "<= 1 ms".into(),
            met: g99 <= 1.0,
        });
        plot_series = vec![
            plot::Series {
                name: "streamwatch".into(),
                color: [200, 30, 30],
                values_ms: sw_start.clone(),
            },
            plot::Series {
                name: "peer (pub/sub client)".into(),
                color: [30, 90, 200],
                values_ms: peer_start.clone(),
            },
            plot::Series {
                name: "limit (posix_spawn)".into(),
                color: [90, 90, 90],
                values_ms: lim.clone(),
            },
        ];
    }
    // 2. The same with 1,000 other fields, all running jobs.
    if want('2') {
        thousand_fields(&mut mc, "big");
        wait_until("1,000 jobs running", Duration::from_secs(60), || {
            running_jobs(&mut mc) >= 1000
        });
        let peer_big = Peer::start(&p, "big", &peer_dir);
        thousand_fields(&mut pc, "big");
        wait_until("peer's 1,000 workers", Duration::from_secs(60), || {
            peer_big.children() >= 1000
        });
        let (lim_big, (swb_start, swb_gone), (peerb_start, peerb_gone)) = rounds(n, |r, k| {
            (
                limit(&limit_dir, &format!("b{r}-"), k),
                hset_hdel(&mut mc, "big", &sw_dir, &format!("b{r}-"), k),
                hset_hdel(&mut pc, "big", &peer_dir, &format!("b{r}-"), k),
            )
        });
        let (swb50, limb50, peerb50) = (median(&swb_start), median(&lim_big), median(&peerb_start));
        rows.push(Row {
            figure: "HSET -> worker started, 1,000-field hash, p50".into(),
            value: swb50,
            unit: "ms",
            against: "limit",
            other: Some(limb50),
            ratio: Some(swb50 / limb50),
            target: "<= 1.5x limit".into(),
            met: swb50 <= 1.5 * limb50,
        });
        rows.push(Row {
            figure: "HSET -> worker started, 1,000-field hash, p50".into(),
            value: swb50,
            unit: "ms",
            against: "peer",
            other: Some(peerb50),
            ratio: Some(peerb50 / swb50),
            target: "peer / streamwatch >= 3".into(),
            met: peerb50 >= 3.0 * swb50,
        });
        let (gb99, pgb99) = (percentile(&swb_gone, 0.99), percentile(&peerb_gone, 0.99));
        rows.push(Row {
            figure: "HDEL -> worker gone, 1,000-field hash, p99".into(),
            value: gb99,
            unit: "ms",
            against: "peer",
            other: Some(pgb99),
            ratio: Some(gb99 / pgb99),
            target: "<= 1 ms".into(),
            met: gb99 <= 1.0,
        });
        drop(peer_big);
    }

    // 3. What the module costs the server: redis-benchmark with 1,000 jobs running.
    if want('3') {
        thousand_fields(&mut mc, "big");
        wait_until("1,000 jobs running", Duration::from_secs(60), || {
            running_jobs(&mut mc) >= 1000
        });
        thousand_fields(&mut bc, "big");
        pin(m.pid(), "0");
        pin(b.pid(), "0");
        // Many short runs rather than a few long ones: the machine's speed drifts over
        // seconds, and a pair's two runs drift together only when they are short.
        let runs = 21;
        let (sw_rps, plain_rps, ratio) =
            throughput_pair(m.port, b.port, &["-t", "hset", "-n", "60000"], runs);
        rows.push(Row {
            figure: "redis-benchmark HSET, unwatched keys (1,000 jobs running)".into(),
            value: sw_rps,
            unit: "req/s",
            against: "no module",
            other: Some(plain_rps),
            ratio: Some(ratio),
            target: ">= 0.97x no module".into(),
            met: ratio >= 0.97,
        });
        let watched = [
            "-n",
            "60000",
            "-r",
            "1000",
            "HSET",
            "big",
            "f__rand_int__",
            "v",
        ];
        let (sww_rps, plainw_rps, ratio) = throughput_pair(m.port, b.port, &watched, runs);
        rows.push(Row {
            figure: "redis-benchmark HSET, watched 1,000-field hash, same values".into(),
            value: sww_rps,
            unit: "req/s",
            against: "no module",
            other: Some(plainw_rps),
            ratio: Some(ratio),
            target: ">= 0.85x no module".into(),
            met: ratio >= 0.85,
        });
        let all = format!("0-{}", cpus() - 1);
        pin(m.pid(), &all);
        pin(b.pid(), &all);
    }

    // 4. A 10,000-field hash reconciled at once: the main thread's longest stall (a
    //    client PINGs in a loop), and 10,000 more jobs: time, threads, memory.
    if want('4') {
        let before = running_jobs(&mut mc);
        let _: () = redis::cmd("STREAMWATCH.PAUSE")
            .query(&mut mc)
            .expect("PAUSE");
        wait_until("paused: no job", Duration::from_secs(60), || {
            running_jobs(&mut mc) == 0
        });
        for chunk in 0..10 {
            let mut cmd = redis::cmd("HSET");
            cmd.arg("huge");
            for i in chunk * 1000..(chunk + 1) * 1000 {
                cmd.arg(format!("h{i}")).arg("v");
            }
            let _: i64 = cmd.query(&mut mc).expect("HSET huge");
        }
        let rss_before = vm_rss_kb(m.pid());
        let stop = Arc::new(AtomicBool::new(false));
        let pinger = {
            let stop = stop.clone();
            let mut con = m.conn();
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                // A probe every millisecond, like `redis-cli --latency` (which waits
                // 10 ms): a PING loop with no pause would itself take a core.
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let _: String = redis::cmd("PING").query(&mut con).expect("PING");
                    worst = worst.max(t.elapsed());
                    std::thread::sleep(Duration::from_millis(1));
                }
                worst
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("latency-monitor-threshold")
            .arg(1)
            .query(&mut mc)
            .expect("CONFIG SET");
        let _: i64 = redis::cmd("LATENCY")
            .arg("RESET")
            .query(&mut mc)
            .expect("LATENCY RESET");
        let t0 = Instant::now();
        let _: () = redis::cmd("STREAMWATCH.RESUME")
            .query(&mut mc)
            .expect("RESUME");
        wait_until("10,000 more jobs running", Duration::from_secs(300), || {
            running_jobs(&mut mc) >= before + 10_000
        });
        let all_running = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let ping_stall = pinger.join().expect("pinger").as_secs_f64() * 1000.0;
        // The main thread's wait for the GIL the module threads held (Redis's own
        // latency monitor, event `module-acquire-GIL`, 1 ms resolution; absent: < 1 ms).
        let latest: Vec<Vec<redis::Value>> = redis::cmd("LATENCY")
            .arg("LATEST")
            .query(&mut mc)
            .unwrap_or_default();
        let gil_stall = latest
            .iter()
            .filter(|e| {
                e.first()
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .as_deref()
                    == Some("module-acquire-GIL")
            })
            .filter_map(|e| {
                e.get(3)
                    .and_then(|v| redis::from_redis_value::<i64>(v).ok())
            })
            .max()
            .unwrap_or(0) as f64;
        let helper_rss = m.helper().map_or(0, vm_rss_kb);
        let module_rss_mb =
            (vm_rss_kb(m.pid()).saturating_sub(rss_before) + helper_rss) as f64 / 1024.0;
        let module_threads = thread_names(m.pid())
            .iter()
            .filter(|t| t.starts_with("streamwatch"))
            .count();
        let plain_threads = thread_names(b.pid()).len();
        let all_threads = thread_names(m.pid()).len();
        rows.push(Row {
            figure: "main-thread stall, 10,000 fields reconciled (LATENCY module-acquire-GIL)"
                .into(),
            value: gil_stall,
            unit: "ms",
            against: "longest PING meanwhile",
            other: Some(ping_stall),
            ratio: None,
            target: "<= 5 ms".into(),
            met: gil_stall <= 5.0,
        });
        rows.push(Row {
            figure: "10,000 more jobs: RESUME -> all running".into(),
            value: all_running,
            unit: "s",
            against: "",
            other: None,
            ratio: None,
            target: "<= 10 s".into(),
            met: all_running <= 10.0,
        });
        rows.push(Row {
            figure: format!(
                "module threads ({all_threads} in redis-server, {plain_threads} without module)"
            ),
            value: module_threads as f64,
            unit: "threads",
            against: "",
            other: None,
            ratio: None,
            target: "<= 16".into(),
            met: module_threads <= 16,
        });
        rows.push(Row {
            figure: "module RSS for 10,000 more jobs (server growth + helper)".into(),
            value: module_rss_mb,
            unit: "MB",
            against: "",
            other: None,
            ratio: None,
            target: "<= 64 MB".into(),
            met: module_rss_mb <= 64.0,
        });
    }
    // The module's server goes, and its workers with it, before the stream figures.
    let helper = m.helper();
    drop(mc);
    drop(m);
    if let Some(h) = helper {
        wait_until("old workers gone", Duration::from_secs(120), || {
            !Path::new(&format!("/proc/{h}")).exists()
        });
    }
    std::thread::sleep(Duration::from_secs(2));

    if want('5') {
        // 5. Stream jobs per second, `/bin/true` handler.
        let entries = 5000;
        let s = start_server(Some(&toml));
        let mut sc = s.conn();
        // Three rounds, each side once per round (a fresh stream each time): the
        // medians, so that one slow spell of the machine does not decide a row.
        let (mut sw, mut raw, mut py) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..3 {
            let key = format!("q{round}");
            let last = fill_stream(&mut sc, &key, entries);
            let t0 = Instant::now();
            watch_stream(&mut sc, &key, "true", 8);
            // Polled every 10 ms, not every 1: a probe is a round trip through the
            // server under test, and 1,000 of them a second took CPU from the jobs
            // being measured (at most 10 ms late, 0.4% of a round, against us).
            while !group_done(&mut sc, &key, "streamwatch", &last) {
                assert!(
                    t0.elapsed() < Duration::from_secs(300),
                    "stream not drained"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            sw.push(entries as f64 / t0.elapsed().as_secs_f64());
            let _: () = redis::cmd("STREAMWATCH.UNWATCH")
                .arg(&key)
                .query(&mut sc)
                .expect("UNWATCH");
            raw.push(raw_spawn_rate(entries, 2));
            let py_last = fill_stream(&mut bc, &key, entries);
            let pyout = Command::new("python3")
                .env("PYTHONPATH", Path::new(ROOT).join(".deps/py"))
                .arg(Path::new(ROOT).join("bench/consumer.py"))
                .args([
                    &b.port.to_string(),
                    key.as_str(),
                    &entries.to_string(),
                    "8",
                    "/bin/true",
                ])
                .output()
                .expect("python3 bench/consumer.py");
            let py_secs: f64 = String::from_utf8_lossy(&pyout.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| {
                    panic!("consumer.py: {}", String::from_utf8_lossy(&pyout.stderr))
                });
            assert!(
                group_done(&mut bc, &key, "peer", &py_last),
                "redis-py consumer finished"
            );
            py.push(entries as f64 / py_secs);
        }
        let (sw_jobs, raw_jobs, py_jobs) = (median(&sw), median(&raw), median(&py));
        // Ratios within each round (its three runs follow each other), as for the
        // throughput pairs.
        let within = |other: &[f64]| -> f64 {
            let r: Vec<f64> = sw.iter().zip(other).map(|(a, b)| a / b).collect();
            median(&r)
        };
        let (vs_raw, vs_py) = (within(&raw), within(&py));
        rows.push(Row {
            figure: "stream jobs/s, /bin/true, CONCURRENCY 8, median of 3".into(),
            value: sw_jobs,
            unit: "jobs/s",
            against: "raw spawn loop, 2 threads",
            other: Some(raw_jobs),
            ratio: Some(vs_raw),
            target: ">= 0.7x raw".into(),
            met: vs_raw >= 0.7,
        });
        rows.push(Row {
            figure: "stream jobs/s, /bin/true, CONCURRENCY 8, median of 3".into(),
            value: sw_jobs,
            unit: "jobs/s",
            against: "redis-py consumer, 8 threads",
            other: Some(py_jobs),
            ratio: Some(vs_py),
            target: ">= 1.7x redis-py".into(),
            met: vs_py >= 1.7,
        });
    }

    // 6. Worker pools (`pool = N`): entries/s, latency, memory (see pools.rs).
    if want('6') {
        pools::run(&mut rows, &b, &mut bc, &dir);
    }

    // 7. Job outcomes kept (the default) against none kept: entries/s, bytes.
    if want('7') {
        outcomes::run(&mut rows, &dir);
    }

    report(&rows, &version, n);
    if !plot_series.is_empty() {
        plot::cdf_png(
            &Path::new(ROOT).join("bench/latency.png"),
            "HSET -> worker started, tiny hash",
            "latency (ms)",
            &plot_series,
        )
        .expect("write bench/latency.png");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn report(rows: &[Row], version: &str, n: usize) {
    let machine = machine();
    println!("\nmachine: {machine}\nserver:  {version}\nsamples: {n} per latency figure; throughput: medians of 21 alternating runs, server on CPU 0 and redis-benchmark on CPU 1; ratios: medians of the ratios within pairs (throughput) or rounds (stream)\n");
    println!("| figure | streamwatch | compared with | value | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} {} | {} | {} | {} | {} | {} |",
            r.figure,
            num(r.value),
            r.unit,
            if r.against.is_empty() { "-" } else { r.against },
            r.other
                .map_or("-".into(), |o| format!("{} {}", num(o), r.unit)),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.target,
            if r.met { "yes" } else { "NO" }
        );
    }
    let mut json = String::from("{\n");
    json.push_str(&format!(
        "  \"machine\": {},\n  \"server\": {},\n  \"samples\": {n},\n  \"rows\": [\n",
        json_str(&machine),
        json_str(version)
    ));
    for (i, r) in rows.iter().enumerate() {
        let opt = |x: Option<f64>| x.map_or("null".into(), |v| format!("{v:.4}"));
        json.push_str(&format!(
            "    {{\"figure\": {}, \"streamwatch\": {:.4}, \"unit\": {}, \"against\": {}, \"other\": {}, \"ratio\": {}, \"target\": {}, \"met\": {}}}{}\n",
            json_str(&r.figure),
            r.value,
            json_str(r.unit),
            json_str(r.against),
            opt(r.other),
            opt(r.ratio),
            json_str(&r.target),
            r.met,
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    json.push_str("  ]\n}\n");
    let path = Path::new(ROOT).join("bench/results.json");
    let _ = std::fs::File::create(&path).and_then(|mut f| f.write_all(json.as_bytes()));
    println!("\nwritten: bench/results.json, bench/latency.png");
}
