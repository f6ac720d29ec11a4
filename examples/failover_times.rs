//! Measures two failover figures with N running jobs (default 100):
//! * promotion -> jobs running: a replica gets `REPLICAOF NO ONE`; time from just
//!   before the command to the last of its N workers' own start stamps;
//! * orphan kill: the primary gets `kill -9`; time until every one of its workers is
//!   gone from /proc (polled every 200 µs).
//!
//! cargo build --release --examples && target/release/examples/failover_times [N]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(root: &Path, dir: &Path, name: &str, extra: &[String]) -> (Child, u16, PathBuf) {
    let stamps = dir.join(format!("stamps-{name}"));
    std::fs::create_dir_all(&stamps).expect("mkdir");
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[handler.stamp]\ncommand = [\"{}\"]\nenv = {{ STAMP_DIR = \"{}\" }}\n\n[[watch]]\npattern = \"ft\"\nhandler = \"stamp\"\n",
            root.join("target/release/examples/stamp").display(),
            stamps.display()
        ),
    )
    .expect("write config");
    let port = free_port();
    let data = dir.join(format!("data-{name}"));
    std::fs::create_dir_all(&data).expect("mkdir");
    let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&data)
        .args(extra)
        .arg("--loadmodule")
        .arg(root.join("target/release/libstreamwatch.so"))
        .arg("config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    (child, port, stamps)
}

fn connect(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = client.get_connection() {
            return c;
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    let root = std::env::current_dir().expect("cwd");
    let dir = std::env::temp_dir().join(format!("sw-failover-{}", std::process::id()));
    let (mut primary, pport, pstamps) = start(&root, &dir, "primary", &[]);
    let mut pc = connect(pport);
    let (mut replica, rport, rstamps) = start(
        &root,
        &dir,
        "replica",
        &["--replicaof".into(), "127.0.0.1".into(), pport.to_string()],
    );
    let mut rc = connect(rport);
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
    let _ = primary.kill();
    let _ = primary.wait();
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
    let _ = replica.kill();
    let _ = replica.wait();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
}
