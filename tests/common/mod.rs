//! The one harness of the integration tests (`tests/`), the benchmark (`bench/`,
//! `#[path]`) and the measuring examples (`examples/`, `#[path]`).
//!
//! Every test starts its own private `redis-server` (or `valkey-server`, via
//! `$REDIS_SERVER`) with the module loaded from `$STREAMWATCH_MODULE` (default
//! `target/release/libstreamwatch.so`), in a fresh temporary directory, on a free
//! loopback port. The helpers here read the module's replies (JOBS, JOB, events)
//! and inspect real processes through `/proc`, so that tests assert what a user
//! can observe, never timing. The measuring programs start their servers the same
//! way (see "Measuring programs" at the end) and do the timing themselves.
#![allow(dead_code)] // each test, the bench and each example use part of it

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use redis::Value;

/// `/proc/PID/stat`: the module's and the helper's reader, shared through `#[path]`.
#[path = "../../src/procstat.rs"]
mod procstat;

/// Generous deadline for every condition a test waits on.
pub const WAIT: Duration = Duration::from_secs(20);

/// Placeholder in a TOML text that the harness replaces with the server's unique tag.
/// The standard worker handlers use the tag as the shell's `$0`, so the harness can
/// find every worker of one server among all processes of the machine.
pub const TAG: &str = "@TAG@";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A unique name for this process and call (keys, files).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), next_id())
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A fresh directory under `std::env::temp_dir()`, removed on drop.
pub struct TempDir {
    path: PathBuf,
    servers: AtomicUsize,
}

impl TempDir {
    pub fn new() -> Arc<TempDir> {
        let path = std::env::temp_dir().join(unique("streamwatch-test"));
        fs::create_dir_all(&path).expect("create temp dir");
        Arc::new(TempDir {
            path,
            servers: AtomicUsize::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

pub fn redis_server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

pub fn module_path() -> PathBuf {
    match std::env::var("STREAMWATCH_MODULE") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libstreamwatch.so"),
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Options for starting a server; see [`Server::builder`].
pub struct ServerBuilder {
    toml: String,
    module_args: Vec<String>,
    redis_args: Vec<String>,
    dir: Option<Arc<TempDir>>,
    save: String,
    module: bool,
    module_path: Option<PathBuf>,
    own_group: bool,
    kill_on_drop: bool,
    env: Vec<(String, String)>,
    port: Option<u16>,
}

impl ServerBuilder {
    /// Listen on this port instead of a free one (a server restarted where a Sentinel
    /// or its replicas expect it).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// An environment variable of the server, so of every run it starts (e.g.
    /// `PYTHONPATH` for Python jobs).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Extra module argument pair, e.g. `module_arg("events-maxlen", "100")`.
    pub fn module_arg(mut self, name: &str, value: &str) -> Self {
        self.module_args.push(name.to_string());
        self.module_args.push(value.to_string());
        self
    }

    /// Extra redis-server command-line arguments, e.g. `redis_args(&["--maxmemory", "1gb"])`.
    pub fn redis_args(mut self, args: &[&str]) -> Self {
        self.redis_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Use this (possibly shared) directory as `--dir` instead of a fresh one.
    pub fn dir(mut self, dir: Arc<TempDir>) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Load this build of the module instead of the default one.
    pub fn module_path(mut self, path: PathBuf) -> Self {
        self.module_path = Some(path);
        self
    }

    /// Start a plain redis-server, without the module.
    pub fn without_module(mut self) -> Self {
        self.module = false;
        self
    }

    /// Start the server as the leader of its own process group, as a shell starts a
    /// foreground job (so a test can signal the whole group, as Ctrl-C would).
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// SIGKILL the server on drop instead of stopping it gracefully (the measuring
    /// programs: its helper then stops its workers at once).
    pub fn kill_on_drop(mut self) -> Self {
        self.kill_on_drop = true;
        self
    }

    /// Value of `--save` (default `""`, no snapshots).
    pub fn save(mut self, spec: &str) -> Self {
        self.save = spec.to_string();
        self
    }

    pub fn start(self) -> Server {
        let dir = self.dir.clone().unwrap_or_else(TempDir::new);
        let n = dir.servers.fetch_add(1, Ordering::SeqCst);
        let tag = format!("swtest-{}-{}", std::process::id(), next_id());
        let config_path = dir.path().join(format!("streamwatch-{n}.toml"));
        fs::write(&config_path, self.toml.replace(TAG, &tag)).expect("write toml");
        let log_name = if n == 0 {
            "redis.log".to_string()
        } else {
            format!("redis-{n}.log")
        };
        let log_path = dir.path().join(log_name);
        let stdio_path = dir.path().join(format!("redis-{n}.stdio"));

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = self.port.unwrap_or_else(free_port);
            let _ = fs::remove_file(&log_path);
            let mut child = self.spawn(dir.path(), port, &config_path, &log_path, &stdio_path);
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_log = read_lossy(&log_path) + &read_lossy(&stdio_path);
                    if last_log.contains("Address already in use") {
                        break; // port stolen in the meantime: retry with another
                    }
                    panic!("redis-server exited during startup ({status}); log:\n{last_log}");
                }
                if ping(port) {
                    return Server {
                        child: Some(child),
                        port,
                        dir,
                        config_path,
                        log_path,
                        stdio_path,
                        tag,
                        kill_on_drop: self.kill_on_drop,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server did not answer PING within {WAIT:?}; log:\n{}",
                        read_lossy(&log_path)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server on a free port; last log:\n{last_log}");
    }

    /// Start a server that is expected to refuse to start (module load failure).
    /// Returns the server log (and anything it printed) after it exited.
    pub fn start_expect_failure(self) -> String {
        let dir = self.dir.clone().unwrap_or_else(TempDir::new);
        let config_path = dir.path().join("streamwatch.toml");
        fs::write(&config_path, &self.toml).expect("write toml");
        let log_path = dir.path().join("redis.log");
        let stdio_path = dir.path().join("redis.stdio");
        let port = free_port();
        let mut child = self.spawn(dir.path(), port, &config_path, &log_path, &stdio_path);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return read_lossy(&log_path) + &read_lossy(&stdio_path);
            }
            if Instant::now() > deadline || ping(port) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server did not refuse to start; log:\n{}",
                    read_lossy(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(
        &self,
        dir: &Path,
        port: u16,
        config_path: &Path,
        log_path: &Path,
        stdio_path: &Path,
    ) -> Child {
        let stdio = fs::File::create(stdio_path).expect("create stdio file");
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir)
            .arg("--save")
            .arg(&self.save)
            .arg("--appendonly")
            .arg("no")
            .arg("--enable-debug-command")
            .arg("yes")
            .arg("--logfile")
            .arg(log_path)
            .args(&self.redis_args);
        if self.module {
            cmd.arg("--loadmodule")
                .arg(self.module_path.clone().unwrap_or_else(module_path))
                .arg("config")
                .arg(config_path)
                .args(&self.module_args);
        }
        cmd.envs(self.env.iter().cloned());
        cmd.stdin(Stdio::null())
            .stdout(stdio.try_clone().unwrap())
            .stderr(stdio);
        if self.own_group {
            cmd.process_group(0);
        }
        // If the test process dies without running destructors, the server goes too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", redis_server_binary()))
    }
}

fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    matches!(
        redis::cmd("PING").query::<String>(&mut c).as_deref(),
        Ok("PONG")
    )
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A private redis-server with the module loaded; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: Arc<TempDir>,
    config_path: PathBuf,
    log_path: PathBuf,
    stdio_path: PathBuf,
    tag: String,
    kill_on_drop: bool,
}

impl Server {
    pub fn builder(config_toml: &str) -> ServerBuilder {
        ServerBuilder {
            toml: config_toml.to_string(),
            module_args: Vec::new(),
            redis_args: Vec::new(),
            dir: None,
            save: String::new(),
            module: true,
            module_path: None,
            own_group: false,
            kill_on_drop: false,
            env: Vec::new(),
            port: None,
        }
    }

    pub fn start(config_toml: &str) -> Server {
        Server::builder(config_toml).start()
    }

    pub fn start_expect_failure(config_toml: &str) -> String {
        Server::builder(config_toml).start_expect_failure()
    }

    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let c = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to test server");
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        c
    }

    /// Connection with `SELECT db` done.
    pub fn conn_db(&self, db: i64) -> redis::Connection {
        let mut c = self.conn();
        let _: () = redis::cmd("SELECT").arg(db).query(&mut c).unwrap();
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// The unique tag that replaced `@TAG@` in this server's TOML.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn dir(&self) -> Arc<TempDir> {
        self.dir.clone()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path) + &read_lossy(&self.stdio_path)
    }

    /// Kill the server with SIGKILL and reap it (no cleanup chance for the module).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful stop: SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Wait until the server process exited on its own (e.g. after SHUTDOWN).
    pub fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("server did not exit within {WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Live processes (not zombies) whose argv contains this server's tag: the
    /// workers of the standard handlers, wherever they are in the process tree.
    pub fn tagged_procs(&self) -> BTreeSet<u32> {
        all_procs()
            .into_iter()
            .filter(|p| p.state != 'Z' && p.state != 'X')
            .filter(|p| cmdline(p.pid).iter().any(|a| a == self.tag.as_bytes()))
            .map(|p| p.pid)
            .collect()
    }

    /// All descendants of the server process.
    pub fn descendants(&self) -> Vec<ProcInfo> {
        match self.child.as_ref() {
            Some(c) => descendants(c.id()),
            None => Vec::new(),
        }
    }

    /// The pid of the server's live helper process, if it has one now.
    pub fn helper(&self) -> Option<u32> {
        self.descendants()
            .into_iter()
            .find(|p| p.ppid == self.pid() && p.state != 'Z' && is_helper(p))
            .map(|p| p.pid)
    }

    /// Descendants of the server in zombie state.
    pub fn zombies(&self) -> Vec<ProcInfo> {
        self.descendants()
            .into_iter()
            .filter(|p| p.state == 'Z')
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let leftovers = self.tagged_procs();
        if self.kill_on_drop {
            self.kill9();
        } else {
            self.stop();
        }
        // Never leave this server's workers behind, whatever the test found.
        for pid in leftovers.union(&self.tagged_procs()) {
            if pid_alive(*pid) && cmdline(*pid).iter().any(|a| a == self.tag.as_bytes()) {
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if panicking {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "---- redis log tail (port {}, {}) ----\n{}\n----",
                self.port,
                self.log_path.display(),
                lines[from..].join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// TOML snippets
// ---------------------------------------------------------------------------

/// Script of the standard long-running worker: prints `start <value>`, exits 0 on TERM.
/// Arguments: `$0` = tag, `$1` = key, `$2` = field, `$3` = value.
pub const LONG_SCRIPT: &str =
    r#"echo "start $3"; trap 'echo bye; exit 0' TERM; while :; do sleep 1; done"#;

/// A handler running `script` as `/bin/sh -c script TAG {key} {field} {value}`,
/// plus `extra` TOML lines (e.g. `restart = "never"`).
pub fn sh_handler(name: &str, script: &str, extra: &str) -> String {
    assert!(!script.contains("'''"));
    format!(
        "[handler.{name}]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{key}}\", \"{{field}}\", \"{{value}}\"]\n{extra}\n"
    )
}

/// The standard long-running worker handler.
pub fn long_handler(name: &str, extra: &str) -> String {
    sh_handler(name, LONG_SCRIPT, extra)
}

/// A static `[[watch]]` on `pattern` (db 0 unless `db` is given: `"1"` or `"\"all\""`).
pub fn watch_toml(pattern: &str, handler: &str, db: Option<&str>) -> String {
    let mut s = format!("[[watch]]\npattern = \"{pattern}\"\nhandler = \"{handler}\"\n");
    if let Some(db) = db {
        s.push_str(&format!("db = {db}\n"));
    }
    s
}

/// Standard config: one long-running handler `w` and a static watch on `pattern`.
pub fn simple_config(pattern: &str) -> String {
    format!(
        "{}\n{}",
        long_handler("w", ""),
        watch_toml(pattern, "w", None)
    )
}

// ---------------------------------------------------------------------------
// Commands and replies
// ---------------------------------------------------------------------------

pub type Map = HashMap<String, Value>;

/// Run a command given as string arguments.
pub fn run(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

/// Run a command that must succeed.
pub fn ok(c: &mut redis::Connection, args: &[&str]) -> Value {
    run(c, args).unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// Run a command that must fail; returns the full error line ("ERR ...").
/// Panics if it succeeded or if the error does not start with ERR.
pub fn err(c: &mut redis::Connection, args: &[&str]) -> String {
    match run(c, args) {
        Ok(v) => panic!("{args:?} should have failed, got {v:?}"),
        Err(e) => {
            let text = match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                (Some(code), None) => code.to_string(),
                _ => e.to_string(),
            };
            assert_eq!(
                e.code(),
                Some("ERR"),
                "{args:?}: error does not start with ERR: {text:?} ({e:?})"
            );
            text
        }
    }
}

pub fn vstr(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Okay => "OK".to_string(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => (if *b { "1" } else { "0" }).to_string(),
        Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

pub fn vbytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        other => vstr(other).into_bytes(),
    }
}

/// Integer value; `None` for nil. Numeric strings are accepted.
pub fn vint(v: &Value) -> Option<i64> {
    match v {
        Value::Nil => None,
        Value::Int(i) => Some(*i),
        Value::Boolean(b) => Some(*b as i64),
        other => vstr(other).parse().ok(),
    }
}

/// A RESP3 map, or its RESP2 flat-array form, as a HashMap.
pub fn to_map(v: &Value) -> Map {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (vstr(k), v.clone())).collect(),
        Value::Array(items) => {
            assert!(items.len() % 2 == 0, "odd-length map array: {v:?}");
            items
                .chunks(2)
                .map(|kv| (vstr(&kv[0]), kv[1].clone()))
                .collect()
        }
        other => panic!("expected a map, got {other:?}"),
    }
}

/// Keys of a map reply, in reply order.
pub fn map_keys(v: &Value) -> Vec<String> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, _)| vstr(k)).collect(),
        Value::Array(items) => items.chunks(2).map(|kv| vstr(&kv[0])).collect(),
        other => panic!("expected a map, got {other:?}"),
    }
}

pub fn to_array(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items.clone(),
        Value::Nil => Vec::new(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Parse a JOBS (or WATCHES, HANDLERS) reply: array of maps.
pub fn parse_maps(v: &Value) -> Vec<Map> {
    to_array(v).iter().map(to_map).collect()
}

pub fn get_str(m: &Map, k: &str) -> String {
    vstr(m.get(k).unwrap_or_else(|| panic!("no {k:?} in {m:?}")))
}

pub fn get_int(m: &Map, k: &str) -> Option<i64> {
    vint(m.get(k).unwrap_or_else(|| panic!("no {k:?} in {m:?}")))
}

/// `STREAMWATCH.JOBS` with optional filter arguments.
pub fn jobs_filtered(c: &mut redis::Connection, filter: &[&str]) -> Vec<Map> {
    let mut args = vec!["STREAMWATCH.JOBS"];
    args.extend_from_slice(filter);
    parse_maps(&ok(c, &args))
}

pub fn jobs(c: &mut redis::Connection) -> Vec<Map> {
    jobs_filtered(c, &[])
}

/// `STREAMWATCH.JOB key field`; `None` when the reply is nil.
pub fn job(c: &mut redis::Connection, key: &str, field: &str) -> Option<Map> {
    match ok(c, &["STREAMWATCH.JOB", key, field]) {
        Value::Nil => None,
        v => Some(to_map(&v)),
    }
}

/// The `log` lines of `STREAMWATCH.JOB key field` (empty if no job).
pub fn job_log(c: &mut redis::Connection, key: &str, field: &str) -> Vec<String> {
    job(c, key, field)
        .map(|m| to_array(m.get("log").expect("JOB reply has log")))
        .unwrap_or_default()
        .iter()
        .map(vstr)
        .collect()
}

/// Entries of a stream, each as a field map plus `_id` (the entry id).
pub fn stream_entries(c: &mut redis::Connection, key: &str) -> Vec<HashMap<String, String>> {
    let v = ok(c, &["XRANGE", key, "-", "+"]);
    to_array(&v)
        .iter()
        .map(|e| {
            let parts = to_array(e);
            let mut m: HashMap<String, String> = to_array(&parts[1])
                .chunks(2)
                .map(|kv| (vstr(&kv[0]), vstr(&kv[1])))
                .collect();
            m.insert("_id".to_string(), vstr(&parts[0]));
            m
        })
        .collect()
}

/// Entries of `streamwatch:events` (db 0 of this connection must be selected).
pub fn events(c: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    stream_entries(c, "streamwatch:events")
}

/// Events of one kind for one key (and field if given).
pub fn events_of(
    c: &mut redis::Connection,
    event: &str,
    key: &str,
    field: Option<&str>,
) -> Vec<HashMap<String, String>> {
    events(c)
        .into_iter()
        .filter(|e| e.get("event").map(String::as_str) == Some(event))
        .filter(|e| e.get("key").map(String::as_str) == Some(key))
        .filter(|e| field.is_none() || e.get("field").map(String::as_str) == field)
        .collect()
}

/// `INFO section` as a map of `name -> value`.
pub fn info(c: &mut redis::Connection, section: &str) -> HashMap<String, String> {
    let text = vstr(&ok(c, &["INFO", section]));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Poll `f` every 20 ms until it returns true; panic with `desc` after `timeout`.
pub fn wait_until(desc: &str, timeout: Duration, f: impl FnMut() -> bool) {
    poll_until(desc, timeout, Duration::from_millis(20), f)
}

/// `wait_until`, polling every `every`.
pub fn poll_until(desc: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until: {desc}");
        }
        std::thread::sleep(every);
    }
}

/// Poll `f` until it returns `Some`, and return the value.
pub fn wait_for<T>(desc: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {desc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` until it equals `expected`; the panic shows the last observed value.
pub fn wait_eq<T: PartialEq + std::fmt::Debug>(
    desc: &str,
    timeout: Duration,
    expected: T,
    mut f: impl FnMut() -> T,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = f();
        if got == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting until {desc}\n  expected: {expected:?}\n  last seen: {got:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub state: char,
    pub cmdline: Vec<String>,
}

/// `(state, ppid)` from `/proc/PID/stat` (fields 3 and 4).
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = procstat::read(pid)?;
    let mut it = procstat::fields(&s)?;
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`).
pub fn process_group(pid: u32) -> Option<u32> {
    procstat::fields(&procstat::read(pid)?)?
        .nth(2)?
        .parse()
        .ok()
}

/// The process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

fn split_nul(b: &[u8]) -> Vec<Vec<u8>> {
    if b.is_empty() {
        return Vec::new();
    }
    let b = b.strip_suffix(b"\0").unwrap_or(b);
    b.split(|&c| c == 0).map(|s| s.to_vec()).collect()
}

/// argv of a process (empty if gone or a zombie).
pub fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| split_nul(&b))
        .unwrap_or_default()
}

/// Environment of a process as `NAME=value` byte strings.
pub fn environ(pid: u32) -> Vec<Vec<u8>> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| split_nul(&b))
        .unwrap_or_default()
}

/// Every process on the machine (pid, ppid, state; cmdline lossy).
pub fn all_procs() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((state, ppid)) = proc_stat(pid) {
            out.push(ProcInfo {
                pid,
                ppid,
                state,
                cmdline: cmdline(pid)
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            });
        }
    }
    out
}

/// Is this the module's helper process (its argv[0])?
pub fn is_helper(p: &ProcInfo) -> bool {
    p.cmdline.first().map(String::as_str) == Some("streamwatch-helper")
}

/// All descendants of `root` (children, grandchildren, ...), with their state.
pub fn descendants(root: u32) -> Vec<ProcInfo> {
    let procs = all_procs();
    let mut wanted: HashSet<u32> = HashSet::from([root]);
    let mut out = Vec::new();
    // Repeat until no new process is found (the list is not in tree order).
    loop {
        let before = out.len();
        for p in &procs {
            if wanted.contains(&p.ppid) && !wanted.contains(&p.pid) {
                wanted.insert(p.pid);
                out.push(p.clone());
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------
// Worker checks for the standard handlers (argv = sh -c SCRIPT TAG key field value)
// ---------------------------------------------------------------------------

/// `(key, field, value)` of a live standard worker, read from its real argv.
pub fn worker_argv(pid: u32) -> Option<(String, String, String)> {
    let argv = cmdline(pid);
    if argv.len() < 7 || !pid_alive(pid) {
        return None;
    }
    let s = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    Some((s(&argv[4]), s(&argv[5]), s(&argv[6])))
}

/// Jobs in state `running` as `(key, field, value)`, where `value` is read from the
/// worker's real argv through /proc. A job whose pid is dead, or whose argv names
/// another key or field, shows up as an entry containing `!` so it never matches.
pub fn running_set(c: &mut redis::Connection) -> BTreeSet<(String, String, String)> {
    jobs(c)
        .iter()
        .filter(|j| get_str(j, "state") == "running")
        .map(|j| {
            let key = get_str(j, "key");
            let field = get_str(j, "field");
            let pid = get_int(j, "pid");
            match pid.and_then(|p| worker_argv(p as u32)) {
                Some((k, f, v)) if k == key && f == field => (key, field, v),
                Some((k, f, v)) => (key, field, format!("!argv names {k}/{f}/{v}")),
                None => (key, field, format!("!pid {pid:?} not a live worker")),
            }
        })
        .collect()
}

pub fn triples(v: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// Pids of jobs in state `running` (or any state with a pid).
pub fn job_pids(c: &mut redis::Connection) -> BTreeSet<u32> {
    jobs(c)
        .iter()
        .filter_map(|j| get_int(j, "pid"))
        .map(|p| p as u32)
        .collect()
}

/// Wait until the running jobs are exactly `expected` (checked through the workers'
/// real argv) and the only live worker processes of this server are those jobs' pids.
pub fn assert_workers(server: &Server, c: &mut redis::Connection, expected: &[(&str, &str, &str)]) {
    let expected = triples(expected);
    let deadline = Instant::now() + WAIT;
    loop {
        let set = running_set(c);
        let pids = job_pids(c);
        let procs = server.tagged_procs();
        if set == expected && procs == pids && pids.len() == expected.len() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "workers did not converge within {WAIT:?}\n  expected: {expected:?}\n  running jobs: {set:?}\n  job pids: {pids:?}\n  worker processes: {procs:?}\n  jobs: {:?}",
                jobs(c)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until none of `pids` is alive.
pub fn wait_gone(desc: &str, pids: &[u32]) {
    wait_until(desc, WAIT, || pids.iter().all(|&p| !pid_alive(p)));
}

/// The pid of the running job `key`/`field` (waits for it).
pub fn running_pid(c: &mut redis::Connection, key: &str, field: &str) -> u32 {
    wait_for(&format!("job {key}/{field} running"), WAIT, || {
        let j = job(c, key, field)?;
        if get_str(&j, "state") != "running" {
            return None;
        }
        let pid = get_int(&j, "pid")? as u32;
        pid_alive(pid).then_some(pid)
    })
}

/// SIGKILLs the listed pids on drop if they are still alive with the same argv, so a
/// failing test does not leave workers behind on the machine.
pub struct Reap(pub Vec<(u32, Vec<Vec<u8>>)>);

impl Reap {
    pub fn new() -> Reap {
        Reap(Vec::new())
    }

    pub fn add(&mut self, pid: u32) {
        self.0.push((pid, cmdline(pid)));
    }
}

impl Default for Reap {
    fn default() -> Self {
        Reap::new()
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        for (pid, argv) in &self.0 {
            if pid_alive(*pid) && !argv.is_empty() && cmdline(*pid) == *argv {
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Measuring programs (bench/, examples/): the stamp worker and streams
// ---------------------------------------------------------------------------

/// CLOCK_REALTIME in nanoseconds, the clock the stamp worker writes.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Handler `stamp` running `binary` (`examples/stamp.rs`), whose workers write when
/// they started to `<stamps>/<field>` (created here) and when they got SIGTERM to
/// `<stamps>/<field>.exit`.
pub fn stamp_handler(binary: &Path, stamps: &Path) -> String {
    fs::create_dir_all(stamps).expect("mkdir");
    format!(
        "[handler.stamp]\ncommand = [\"{}\"]\nenv = {{ STAMP_DIR = \"{}\" }}\nstop-grace-ms = 500\n",
        binary.display(),
        stamps.display()
    )
}

/// `examples/`: a server with the module, the `stamp` handler (its workers stamp into
/// `<dir>/stamps-<name>`, returned too), a watch on the key `watched`, and `toml`
/// (more handlers); SIGKILLed on drop. Both the module and the stamp worker are taken
/// from `target/release` of the current directory: run from the repository root after
/// `cargo build --release --examples`.
pub fn stamp_server(
    dir: &Path,
    name: &str,
    watched: &str,
    redis_args: &[&str],
    toml: &str,
) -> (Server, PathBuf) {
    let root = std::env::current_dir().expect("cwd");
    let stamps = dir.join(format!("stamps-{name}"));
    let config = format!(
        "{}\n{}{toml}",
        stamp_handler(&root.join("target/release/examples/stamp"), &stamps),
        watch_toml(watched, "stamp", None)
    );
    let server = Server::builder(&config)
        .module_path(root.join("target/release/libstreamwatch.so"))
        .redis_args(redis_args)
        .kill_on_drop()
        .start();
    (server, stamps)
}

/// Waits (up to 20 s) for a stamp file and returns the time in it.
pub fn wait_stamp(path: &Path) -> u128 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            if let Ok(ns) = s.trim().parse() {
                return ns;
            }
        }
        assert!(Instant::now() < deadline, "no stamp {}", path.display());
        std::thread::sleep(Duration::from_micros(50));
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
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
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

// ---------------------------------------------------------------------------
// Streams and their consumer group
// ---------------------------------------------------------------------------

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn xadd(c: &mut redis::Connection, key: &str, fields: &[(&str, &str)]) -> String {
    let mut args = vec!["XADD", key, "*"];
    for (f, v) in fields {
        args.extend([*f, *v]);
    }
    vstr(&ok(c, &args))
}

/// `n` entries `n=<i>` added in one round trip; returns their ids.
pub fn xadd_many(c: &mut redis::Connection, key: &str, from: usize, n: usize) -> Vec<String> {
    let mut p = redis::pipe();
    for i in from..from + n {
        p.cmd("XADD").arg(key).arg("*").arg("n").arg(i);
    }
    p.query(c).expect("XADD pipeline")
}

pub fn ids(c: &mut redis::Connection, key: &str) -> Vec<String> {
    stream_entries(c, key)
        .into_iter()
        .map(|e| e["_id"].clone())
        .collect()
}

/// The group's XINFO GROUPS map (empty if there is no such group).
pub fn group_info(c: &mut redis::Connection, key: &str, group: &str) -> HashMap<String, String> {
    let Ok(v) = run(c, &["XINFO", "GROUPS", key]) else {
        return HashMap::new();
    };
    to_array(&v)
        .iter()
        .map(|g| {
            to_map(g)
                .into_iter()
                .map(|(k, v)| (k, vstr(&v)))
                .collect::<HashMap<_, _>>()
        })
        .find(|g| g.get("name").map(String::as_str) == Some(group))
        .unwrap_or_default()
}

/// Every entry of `key` was delivered to `group` and none is pending.
pub fn drained(c: &mut redis::Connection, key: &str, group: &str) -> bool {
    let last = ids(c, key).pop().unwrap_or_default();
    let g = group_info(c, key, group);
    g.get("last-delivered-id") == Some(&last) && g.get("pending").map(String::as_str) == Some("0")
}

pub fn wait_drained(c: &mut redis::Connection, key: &str) {
    wait_until(&format!("every entry of {key} acknowledged"), WAIT, || {
        drained(c, key, "streamwatch")
    });
}

/// `STREAMWATCH.WATCH pattern HANDLER handler TYPE stream options...`
pub fn watch_stream_opts(
    c: &mut redis::Connection,
    pattern: &str,
    handler: &str,
    options: &[&str],
) {
    let mut args = vec![
        "STREAMWATCH.WATCH",
        pattern,
        "HANDLER",
        handler,
        "TYPE",
        "stream",
    ];
    args.extend_from_slice(options);
    ok(c, &args);
}

/// The `STREAMWATCH.WATCHES` map of the watch with this pattern.
pub fn watch_map(c: &mut redis::Connection, pattern: &str) -> Map {
    parse_maps(&ok(c, &["STREAMWATCH.WATCHES"]))
        .into_iter()
        .find(|m| get_str(m, "pattern") == pattern)
        .expect("watch listed")
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// A Sentinel (the server binary under test in `--sentinel` mode) monitoring one
/// primary as `sw`, quorum 1, down after 1 s; killed on drop.
pub struct Sentinel {
    child: Child,
    pub port: u16,
}

impl Sentinel {
    pub fn start(dir: &TempDir, primary_port: u16) -> Sentinel {
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor sw 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds sw 1000\n\
                 sentinel failover-timeout sw 10000\n",
                dir.path().display(),
                dir.path().join("sentinel.log").display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new(redis_server_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sentinel");
        let s = Sentinel { child, port };
        wait_until("sentinel answers", WAIT, || s.conn().is_some());
        s
    }

    fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()
    }

    /// The port Sentinel currently names as the primary of `sw`.
    pub fn primary_port(&self) -> Option<u16> {
        let mut c = self.conn()?;
        let v: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("sw")
            .query(&mut c)
            .ok()?;
        v.get(1)?.parse().ok()
    }

    /// How many replicas of `sw` Sentinel knows.
    pub fn knows_replicas(&self) -> usize {
        let Some(mut c) = self.conn() else { return 0 };
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("sw")
            .query::<redis::Value>(&mut c)
            .map(|v| to_array(&v).len())
            .unwrap_or(0)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `replica` a replica of `primary` and waits until the link is up.
pub fn replicate(replica: &Server, primary: &Server) {
    let mut r = replica.conn();
    ok(
        &mut r,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    );
    wait_until("replication link up", WAIT, || {
        info(&mut r, "replication")
            .get("master_link_status")
            .map(String::as_str)
            == Some("up")
    });
}

/// `INFO replication` of the server on `port`, on a fresh connection (Sentinel kills
/// the clients of a node it reconfigures); empty if it does not answer.
pub fn replication_of(port: u16) -> HashMap<String, String> {
    let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
    else {
        return HashMap::new();
    };
    match run(&mut c, &["INFO", "replication"]) {
        Ok(v) => vstr(&v)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// Whether the server on `port` is a primary (fresh connection).
pub fn is_primary(port: u16) -> bool {
    replication_of(port).get("role").map(String::as_str) == Some("master")
}
