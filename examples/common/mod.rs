//! What the measuring examples share: a redis-server with the module and a handler
//! running `examples/stamp.rs`, which records when each worker started.

#![allow(dead_code)] // each example uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// CLOCK_REALTIME in nanoseconds, the clock the stamp worker writes.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A redis-server (`REDIS_SERVER`, default `redis-server`) with the module, a `stamp`
/// handler whose workers stamp into `<dir>/stamps-<name>/<field>`, and a watch on the
/// key `watched`. Run from the repository root after `cargo build --release --examples`.
pub struct StampServer {
    pub child: Child,
    pub port: u16,
    pub stamps: PathBuf,
}

impl StampServer {
    pub fn start(dir: &Path, name: &str, watched: &str, extra: &[String]) -> StampServer {
        Self::start_with(dir, name, watched, extra, "")
    }

    /// `start`, with more TOML (handlers) added to the config file.
    pub fn start_with(
        dir: &Path,
        name: &str,
        watched: &str,
        extra: &[String],
        toml: &str,
    ) -> StampServer {
        let root = std::env::current_dir().expect("cwd");
        let stamps = dir.join(format!("stamps-{name}"));
        let data = dir.join(format!("data-{name}"));
        std::fs::create_dir_all(&stamps).expect("mkdir");
        std::fs::create_dir_all(&data).expect("mkdir");
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[handler.stamp]\ncommand = [\"{}\"]\nenv = {{ STAMP_DIR = \"{}\" }}\nstop-grace-ms = 500\n\n[[watch]]\npattern = \"{watched}\"\nhandler = \"stamp\"\n{toml}",
                root.join("target/release/examples/stamp").display(),
                stamps.display()
            ),
        )
        .expect("write config");
        let port = free_port();
        let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
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
        StampServer {
            child,
            port,
            stamps,
        }
    }

    /// A connection, once the server answers.
    pub fn connect(&self) -> redis::Connection {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = client.get_connection() {
                return c;
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StampServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Adds `n` entries (`n` = 0, 1, ...) to the stream `key`; the last entry's id.
pub fn fill_stream(c: &mut redis::Connection, key: &str, n: usize) -> String {
    let mut last = String::new();
    for chunk in 0..n.div_ceil(1000) {
        let mut p = redis::pipe();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            p.cmd("XADD").arg(key).arg("*").arg("n").arg(i);
        }
        let ids: Vec<String> = p.query(c).expect("XADD");
        last = ids.last().cloned().unwrap_or(last);
    }
    last
}

/// STREAMWATCH.WATCH `key` as a stream with `handler`, `concurrency` runs at once.
pub fn watch_stream(c: &mut redis::Connection, key: &str, handler: &str, concurrency: u32) {
    let _: () = redis::cmd("STREAMWATCH.WATCH")
        .arg(key)
        .arg("HANDLER")
        .arg(handler)
        .arg("TYPE")
        .arg("stream")
        .arg("CONCURRENCY")
        .arg(concurrency)
        .query(c)
        .expect("STREAMWATCH.WATCH");
}

/// Has `group` of `key` delivered up to `last` and acknowledged everything?
pub fn group_done(c: &mut redis::Connection, key: &str, group: &str, last: &str) -> bool {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query(c)
        .unwrap_or_default();
    groups.iter().any(|g| {
        let s = |k: &str| {
            g.get(k)
                .map(|v| redis::from_redis_value::<String>(v).unwrap_or_default())
        };
        s("name").as_deref() == Some(group)
            && s("last-delivered-id").as_deref() == Some(last)
            && s("pending").as_deref() == Some("0")
    })
}
