//! The peer: what people build today instead of streamwatch. A client process that
//! subscribes to keyspace notifications of one hash over pub/sub and, on every event,
//! reads the whole hash (HGETALL), diffs it against its children, and spawns or kills
//! worker processes (SIGTERM, then waits for the exit). It is run by the benchmark as a
//! separate process (`bench peer PORT KEY WORKER STAMP_DIR`) with the same worker
//! program as the module's handler, against a plain redis-server.

use std::collections::hash_map::{Entry, HashMap};
use std::io::Write;
use std::process::{Child, Command};

fn spawn(worker: &str, dir: &str, field: &[u8]) -> Option<Child> {
    Command::new(worker)
        .env("STAMP_DIR", dir)
        .env("STREAMWATCH_FIELD", String::from_utf8_lossy(field).as_ref())
        .spawn()
        .ok()
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

pub fn main(args: &[String]) {
    let [port, key, worker, dir] = args else {
        eprintln!("usage: bench peer PORT KEY WORKER STAMP_DIR");
        std::process::exit(2);
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut con = client.get_connection().expect("connect");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("KA")
        .query(&mut con)
        .expect("CONFIG SET notify-keyspace-events");
    let mut sub = client.get_connection().expect("connect");
    let mut pubsub = sub.as_pubsub();
    pubsub
        .subscribe(format!("__keyspace@0__:{key}"))
        .expect("subscribe");
    let mut children: HashMap<Vec<u8>, (Vec<u8>, Child)> = HashMap::new();
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        // Level-triggered like the module: any event means "read the hash again".
        let fields: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
            .arg(key)
            .query(&mut con)
            .expect("HGETALL");
        let gone: Vec<Vec<u8>> = children
            .iter()
            .filter(|(f, (v, _))| fields.get(*f) != Some(v))
            .map(|(f, _)| f.clone())
            .collect();
        for f in gone {
            if let Some((_, child)) = children.remove(&f) {
                stop(child);
            }
        }
        for (f, v) in fields {
            if let Entry::Vacant(slot) = children.entry(f) {
                if let Some(child) = spawn(worker, dir, slot.key()) {
                    slot.insert((v, child));
                }
            }
        }
        if pubsub.get_message().is_err() {
            break;
        }
    }
    for (_, (_, child)) in children {
        stop(child);
    }
}
