//! The job environment: every run finds the server that runs it through
//! `STREAMWATCH_REDIS_URL` (TCP or unix socket, the run's database, followed on
//! `CONFIG SET port`), and gets `STREAMWATCH_KEY`, `_DB`, `_WATCH`, `_HANDLER` and
//! `_FIELD` (hash) or `_ID` + `_ATTEMPT` (stream). The jobs here are a small Python
//! client (standard library only) that connects back with the URL, as a user's job
//! would, and writes what it was given into a key.

mod common;

use common::*;
use std::path::Path;

/// Connects to `STREAMWATCH_REDIS_URL` (parsed as redis-py's `from_url` does) and sets
/// `seen:<field or id>` to the `STREAMWATCH_*` variables, `|`-separated.
const CLIENT: &str = r#"
import os, socket, sys, urllib.parse
url = os.environ["STREAMWATCH_REDIS_URL"]
u = urllib.parse.urlparse(url)
if u.scheme == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(urllib.parse.unquote(u.path))
    db = int(urllib.parse.parse_qs(u.query).get("db", ["0"])[0])
else:
    s = socket.create_connection((u.hostname, u.port))
    db = int(u.path.lstrip("/") or 0)
f = s.makefile("rb")
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    line = f.readline()
    if not line.startswith(b"+"):
        sys.exit("error: %r" % line)
env = os.environb
names = ["REDIS_URL", "KEY", "DB", "WATCH", "HANDLER", "FIELD", "ID", "ATTEMPT"]
value = b"|".join(env.get(b"STREAMWATCH_" + n.encode(), b"-") for n in names)
cmd("SELECT", db)
cmd("SET", b"seen:" + (env.get(b"STREAMWATCH_FIELD") or env[b"STREAMWATCH_ID"]), value)
"#;

/// A pool worker that writes its URL and handler to `$D/worker`, then acks entries.
const WORKER: &str = r#"
import json, os, sys
env = os.environ
with open(env["D"] + "/worker", "w") as w:
    w.write(env.get("STREAMWATCH_REDIS_URL", "-") + "|" + env.get("STREAMWATCH_HANDLER", "-") + "|" + env.get("STREAMWATCH_DB", "-"))
out = os.fdopen(3, "w")
for line in sys.stdin:
    out.write(json.dumps({"id": json.loads(line)["id"], "ok": True}) + "\n")
    out.flush()
"#;

/// Handlers `hjob` (hash) and `sjob` (stream) running the client, `pool` running the
/// worker; a hash watch on `h:*` and stream watches on `s` and `p`, all in db 3.
fn config(dir: &Path) -> String {
    let client = dir.join("client.py");
    let worker = dir.join("worker.py");
    std::fs::write(&client, CLIENT).unwrap();
    std::fs::write(&worker, WORKER).unwrap();
    let (client, worker, d) = (client.display(), worker.display(), dir.display());
    format!(
        "[handler.hjob]\ncommand = [\"python3\", \"{client}\"]\nrestart = \"never\"\n\
         [handler.sjob]\ncommand = [\"python3\", \"{client}\"]\n\
         [handler.pool]\ncommand = [\"python3\", \"{worker}\"]\npool = 1\nenv = {{ D = \"{d}\" }}\n\
         {}{}type = \"stream\"\n{}type = \"stream\"\n",
        watch_toml("h:*", "hjob", Some("3")),
        watch_toml("s", "sjob", Some("3")),
        watch_toml("p", "pool", Some("3")),
    )
}

/// What the job of `field_or_id` wrote, split (waits for it).
fn seen(c: &mut redis::Connection, field_or_id: &str) -> Vec<String> {
    let key = format!("seen:{field_or_id}");
    let v = wait_for(&format!("{key} written by the job"), WAIT, || {
        let v = run(c, &["GET", &key]).ok()?;
        (v != redis::Value::Nil).then(|| vstr(&v))
    });
    v.split('|').map(str::to_string).collect()
}

/// A hash job and a stream job connect back with their URL and write a key; a pool
/// worker gets the URL without a database.
fn jobs_connect_back(s: &Server, dir: &Path, url: &str) {
    let mut c = s.conn_db(3);
    ok(&mut c, &["HSET", "h:1", "f1", "v1"]);
    let hash = seen(&mut c, "f1");
    let want = [
        &format!("{url}3"),
        "h:1",
        "3",
        "h:*",
        "hjob",
        "f1",
        "-",
        "-",
    ];
    assert_eq!(hash, want);
    let id = xadd(&mut c, "s", &[("n", "1")]);
    let stream = seen(&mut c, &id);
    let want = [&format!("{url}3"), "s", "3", "s", "sjob", "-", &id, "1"];
    assert_eq!(stream, want);
    // A pool worker serves any database: its URL names none.
    xadd(&mut c, "p", &[("n", "1")]);
    let worker = wait_for("the pool worker's environment", WAIT, || {
        let w = std::fs::read_to_string(dir.join("worker")).ok()?;
        w.contains('|').then_some(w)
    });
    let base = url.trim_end_matches("/").trim_end_matches("?db=");
    assert_eq!(worker, format!("{base}|pool|-"));
}

#[test]
fn jobs_reach_the_server_over_tcp() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    jobs_connect_back(&s, dir.path(), &format!("redis://127.0.0.1:{}/", s.port));
}

#[test]
fn jobs_reach_the_server_over_its_unix_socket() {
    let dir = TempDir::new();
    let sock = dir.path().join("redis.sock");
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .redis_args(&[
            "--unixsocket",
            sock.to_str().unwrap(),
            "--unixsocketperm",
            "700",
        ])
        .start();
    // The socket is preferred to the TCP port.
    jobs_connect_back(&s, dir.path(), &format!("unix://{}?db=", sock.display()));
}

#[test]
fn a_relative_unix_socket_is_in_the_servers_dir() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .redis_args(&["--unixsocket", "r.sock"])
        .start();
    let mut c = s.conn_db(3);
    ok(&mut c, &["HSET", "h:1", "f1", "v1"]);
    let url = format!("unix://{}?db=3", dir.path().join("r.sock").display());
    assert_eq!(seen(&mut c, "f1")[0], url);
}

#[test]
fn the_url_follows_config_set_port() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .start();
    let mut c = s.conn_db(3);
    ok(&mut c, &["HSET", "h:1", "f1", "v1"]);
    assert_eq!(
        seen(&mut c, "f1")[0],
        format!("redis://127.0.0.1:{}/3", s.port)
    );
    // The server moves to another port (this connection stays): later runs follow.
    let port = free_port().to_string();
    ok(&mut c, &["CONFIG", "SET", "port", &port]);
    ok(&mut c, &["HSET", "h:1", "f2", "v2"]);
    assert_eq!(seen(&mut c, "f2")[0], format!("redis://127.0.0.1:{port}/3"));
    let id = xadd(&mut c, "s", &[("n", "1")]);
    assert_eq!(seen(&mut c, &id)[0], format!("redis://127.0.0.1:{port}/3"));
    // And back, so the harness finds the server where it started it.
    ok(&mut c, &["CONFIG", "SET", "port", &s.port.to_string()]);
    ok(&mut c, &["HSET", "h:1", "f3", "v3"]);
    assert_eq!(
        seen(&mut c, "f3")[0],
        format!("redis://127.0.0.1:{}/3", s.port)
    );
}

#[test]
fn a_handlers_own_variable_wins() {
    let dir = TempDir::new();
    let toml = config(dir.path()).replace(
        "restart = \"never\"\n",
        "restart = \"never\"\nenv = { STREAMWATCH_WATCH = \"mine\" }\n",
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn_db(3);
    ok(&mut c, &["HSET", "h:1", "f1", "v1"]);
    assert_eq!(seen(&mut c, "f1")[3], "mine");
}

#[test]
fn after_a_failover_the_new_primarys_runs_point_at_it() {
    let (d1, d2) = (TempDir::new(), TempDir::new());
    let p = Server::builder(&config(d1.path())).dir(d1.clone()).start();
    let r = Server::builder(&config(d2.path())).dir(d2.clone()).start();
    let mut rc = r.conn_db(3);
    replicate(&r, &p);
    let mut pc = p.conn_db(3);
    ok(&mut pc, &["HSET", "h:1", "f1", "v1"]);
    assert_eq!(
        seen(&mut pc, "f1")[0],
        format!("redis://127.0.0.1:{}/3", p.port)
    );
    // The replica is promoted: its runs reach it, not the old primary.
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    ok(&mut pc, &["REPLICAOF", "127.0.0.1", &r.port.to_string()]);
    ok(&mut rc, &["HSET", "h:1", "f2", "v2"]);
    assert_eq!(
        seen(&mut rc, "f2")[0],
        format!("redis://127.0.0.1:{}/3", r.port)
    );
}

/// Review 2: a `-` bind address is optional: the server skips it if it cannot bind
/// it, and listens on the others. The URL takes the first address whatever its `-`,
/// so here (192.0.2.1, TEST-NET-1, is on no interface) jobs get a URL nothing listens
/// on, and cannot connect back.
#[test]
fn an_optional_bind_address_the_server_could_not_bind_is_not_the_url() {
    let dir = TempDir::new();
    let s = Server::builder(&config(dir.path()))
        .dir(dir.clone())
        .redis_args(&["--bind", "-192.0.2.1", "127.0.0.1"])
        .start();
    let mut c = s.conn_db(3);
    ok(&mut c, &["HSET", "h:1", "f1", "v1"]);
    assert_eq!(
        seen(&mut c, "f1")[0],
        format!("redis://127.0.0.1:{}/3", s.port)
    );
}
