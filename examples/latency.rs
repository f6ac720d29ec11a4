//! Measures HSET -> worker started: starts redis-server with the module on a free port,
//! HSETs N new fields one at a time (each becoming a running job, so the hash grows to N
//! fields), and for each takes the time from just before HSET to the worker's own first
//! timestamp (see examples/stamp.rs). Prints p50/p90/p99/max.
//!
//! cargo build --release --examples && target/release/examples/latency [N]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let root = std::env::current_dir().expect("cwd");
    let dir = std::env::temp_dir().join(format!("sw-latency-{}", std::process::id()));
    let stamps = dir.join("stamps");
    std::fs::create_dir_all(&stamps).expect("mkdir");
    let stamp = root.join("target/release/examples/stamp");
    let cfg = dir.join("latency.toml");
    std::fs::write(
        &cfg,
        format!(
            "[handler.stamp]\ncommand = [\"{}\"]\nenv = {{ STAMP_DIR = \"{}\" }}\nstop-grace-ms = 500\n\n[[watch]]\npattern = \"lat\"\nhandler = \"stamp\"\n",
            stamp.display(),
            stamps.display()
        ),
    )
    .expect("write config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .arg("--loadmodule")
        .arg(root.join("target/release/libstreamwatch.so"))
        .arg("config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = loop {
        if let Ok(c) = client.get_connection() {
            break c;
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
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
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
