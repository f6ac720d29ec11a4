//! Job outcomes: every finished stream entry has one (acked, dead, cancelled: attempts,
//! result, error, progress, output), kept in Redis for a bounded retention and
//! replicated; `STREAMWATCH.JOB key id` answers for any entry of a watched stream,
//! `STREAMWATCH.WAIT` blocks its client until the outcome, `STREAMWATCH.CANCEL` ends an
//! entry without (more) running. The handlers are shell scripts that wait for marker
//! files, so each test decides when an entry may finish.

mod common;

use common::*;
use redis::Value;
use std::path::Path;
use std::thread;

/// Handler `job`: prints a line, reports progress and a result on fd 3, then waits for
/// `$D/go` (if the entry has a `wait` field), then exits with the entry's `code`.
fn config(dir: &Path, extra: &str) -> String {
    let script = r#"
read -r entry
echo "working on $1"
echo '{"progress": {"step": 1}}' >&3
case "$entry" in *'"wait"'*) while [ ! -e "$D/go" ]; do sleep 0.02; done ;; esac
echo "$1" >> "$D/ran"
echo '{"result": {"id": "'"$1"'", "n": 7}}' >&3
case "$entry" in *'"code":"1"'*) echo "failing $1"; exit 1 ;; esac
exit 0"#;
    format!(
        "[handler.job]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{id}}\"]\nenv = {{ D = \"{}\" }}\nbackoff-initial-ms = 20\n{extra}\n\n[[watch]]\npattern = \"q\"\nhandler = \"job\"\ntype = \"stream\"\nmax-attempts = 2\nconcurrency = 2\n",
        dir.display()
    )
}

fn start(dir: &std::sync::Arc<TempDir>) -> Server {
    Server::builder(&config(dir.path(), ""))
        .dir(dir.clone())
        .start()
}

fn job_of(c: &mut redis::Connection, id: &str) -> Option<Map> {
    match run(c, &["STREAMWATCH.JOB", "q", id]).expect("JOB") {
        Value::Nil => None,
        v => Some(to_map(&v)),
    }
}

fn state_of(c: &mut redis::Connection, id: &str) -> String {
    job_of(c, id).map_or("nil".into(), |m| get_str(&m, "state"))
}

/// STREAMWATCH.WAIT on its own connection, in a thread: `.join()` gives its reply.
struct Waiting(thread::JoinHandle<redis::RedisResult<Value>>);

impl Waiting {
    fn join(self) -> Result<Value, String> {
        self.0.join().unwrap().map_err(|e| e.to_string())
    }
}

fn wait_in_thread(s: &Server, id: &str, timeout: &str) -> Waiting {
    let mut c = s.conn();
    let id = id.to_string();
    let timeout = timeout.to_string();
    Waiting(thread::spawn(move || {
        run(&mut c, &["STREAMWATCH.WAIT", "q", &id, "TIMEOUT", &timeout])
    }))
}

#[test]
fn an_acked_entry_keeps_its_result_progress_and_output() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    let id = xadd(&mut c, "q", &[("x", "1")]);
    wait_until("acked", WAIT, || state_of(&mut c, &id) == "acked");
    let m = job_of(&mut c, &id).unwrap();
    assert_eq!(get_int(&m, "attempts"), Some(1));
    assert_eq!(get_str(&m, "result"), format!(r#"{{"id":"{id}","n":7}}"#));
    assert_eq!(get_str(&m, "progress"), r#"{"step":1}"#);
    assert!(get_str(&m, "output").contains(&format!("working on {id}")));
    assert_eq!(m.get("error"), Some(&Value::Nil));
    assert_eq!(get_str(&m, "watch"), "q");
    assert!(get_int(&m, "finished_ms").unwrap() > 0);
    // Kept in Redis: one field of the stream's outcomes.
    assert_eq!(vint(&ok(&mut c, &["HLEN", "q:outcomes"])), Some(1));
    // WAIT on a finished entry answers at once; nil for an entry not in the stream.
    let w = to_map(&ok(&mut c, &["STREAMWATCH.WAIT", "q", &id]));
    assert_eq!(get_str(&w, "state"), "acked");
    let none = run(&mut c, &["STREAMWATCH.WAIT", "q", "1-1", "TIMEOUT", "100"]).unwrap();
    assert_eq!(none, Value::Nil);
    assert_eq!(job_of(&mut c, "1-1"), None);
}

#[test]
fn wait_is_released_by_ack_by_dead_letter_and_by_timeout() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    let good = xadd(&mut c, "q", &[("wait", "1")]);
    let bad = xadd(&mut c, "q", &[("wait", "1"), ("code", "1")]);
    wait_until("both running", WAIT, || {
        state_of(&mut c, &good) == "running" && state_of(&mut c, &bad) == "running"
    });
    let short = wait_in_thread(&s, &good, "200");
    let waits: Vec<_> = (0..3).map(|_| wait_in_thread(&s, &good, "0")).collect();
    let dead = wait_in_thread(&s, &bad, "0");
    // The timeout answers nil while the entry still runs.
    assert_eq!(short.join().unwrap(), Value::Nil);
    // Other clients are served meanwhile: WAIT blocks only its own client.
    assert_eq!(vstr(&ok(&mut c, &["PING"])), "PONG");
    std::fs::write(dir.path().join("go"), "").unwrap();
    for w in waits {
        let m = to_map(&w.join().unwrap());
        assert_eq!(get_str(&m, "state"), "acked");
        assert_eq!(get_str(&m, "id"), good);
    }
    let m = to_map(&dead.join().unwrap());
    assert_eq!(get_str(&m, "state"), "dead");
    assert_eq!(get_int(&m, "attempts"), Some(2));
    assert!(get_str(&m, "error").contains("code 1"), "{m:?}");
    assert!(get_str(&m, "output").contains(&format!("failing {bad}")));
    let dl = stream_entries(&mut c, "q:dead");
    assert_eq!(dl.len(), 1);
}

#[test]
fn cancel_stops_a_running_entry_and_skips_a_queued_one() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    // Two run (CONCURRENCY 2) and wait for `go`; the third waits for a slot.
    let a = xadd(&mut c, "q", &[("wait", "1")]);
    let b = xadd(&mut c, "q", &[("wait", "1")]);
    let queued = xadd(&mut c, "q", &[("x", "1")]);
    wait_until("two running", WAIT, || {
        state_of(&mut c, &a) == "running" && state_of(&mut c, &b) == "running"
    });
    assert_eq!(state_of(&mut c, &queued), "queued");
    let pid = wait_for("a's pid", WAIT, || get_int(&job_of(&mut c, &a)?, "pid")) as u32;
    let waiting = wait_in_thread(&s, &a, "0");
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &queued])),
        Some(1)
    );
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &a])), Some(1));
    wait_gone("the cancelled run", &[pid]);
    let m = to_map(&waiting.join().unwrap());
    assert_eq!(get_str(&m, "state"), "cancelled");
    wait_until("queued one cancelled", WAIT, || {
        state_of(&mut c, &queued) == "cancelled"
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    assert_eq!(
        lines(&dir.path().join("ran")),
        vec![b.clone()],
        "only b ran"
    );
    // Finished entries cannot be cancelled; bad ids are refused.
    assert_eq!(vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &b])), Some(0));
    assert!(err(&mut c, &["STREAMWATCH.CANCEL", "q", "nope"]).contains("'nope'"));
    let cancelled = events(&mut c)
        .into_iter()
        .filter(|e| e["event"] == "cancelled")
        .count();
    assert_eq!(cancelled, 2);
}

#[test]
fn cancel_before_the_entry_is_read_acks_it_without_running() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    ok(&mut c, &["STREAMWATCH.PAUSE"]);
    let id = xadd(&mut c, "q", &[("x", "1")]);
    // Paused: the queue is stopped, the entry unread; CANCEL needs a queue, so resume
    // with both slots busy first.
    ok(&mut c, &["STREAMWATCH.RESUME"]);
    wait_until("ran", WAIT, || lines(&dir.path().join("ran")).len() == 1);
    let a = xadd(&mut c, "q", &[("wait", "1")]);
    let b = xadd(&mut c, "q", &[("wait", "1")]);
    wait_until("two running", WAIT, || {
        state_of(&mut c, &a) == "running" && state_of(&mut c, &b) == "running"
    });
    let later: Vec<String> = (0..6).map(|_| xadd(&mut c, "q", &[("x", "2")])).collect();
    let last = later.last().unwrap().clone();
    assert_eq!(state_of(&mut c, &last), "queued");
    assert_eq!(
        vint(&ok(&mut c, &["STREAMWATCH.CANCEL", "q", &last])),
        Some(1)
    );
    assert_eq!(state_of(&mut c, &last), "cancelled");
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_drained(&mut c, "q");
    let ran = lines(&dir.path().join("ran"));
    assert!(!ran.contains(&last), "{ran:?}");
    assert_eq!(ran.len(), 1 + 2 + 5);
    assert_eq!(state_of(&mut c, &id), "acked");
}

#[test]
fn outcomes_are_evicted_past_the_configured_bound() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    ok(&mut c, &["CONFIG", "SET", "streamwatch.outcomes-max", "4"]);
    let ids: Vec<String> = (0..10).map(|_| xadd(&mut c, "q", &[("x", "1")])).collect();
    wait_drained(&mut c, "q");
    let kept = |c: &mut redis::Connection| -> i64 {
        ["q:outcomes", "q:outcomes:old"]
            .iter()
            .map(|k| vint(&ok(c, &["HLEN", k])).unwrap_or(0))
            .sum()
    };
    // Between half and all of the bound, give or take one flush's worth (two entries
    // run at once); the oldest are gone.
    let n = kept(&mut c);
    assert!((2..=6).contains(&n), "{n} outcomes kept");
    // The most recent keep their whole outcome (two run at once, so which of the last
    // two finished last may vary); the oldest are only "acked" (what the group says),
    // without a result.
    let all: Vec<Vec<String>> = ["q:outcomes", "q:outcomes:old"]
        .iter()
        .map(|k| {
            redis::cmd("HKEYS")
                .arg(*k)
                .query(&mut c)
                .unwrap_or_default()
        })
        .collect();
    let whole = ids[8..]
        .iter()
        .filter(|id| job_of(&mut c, id).unwrap().contains_key("result"))
        .count();
    assert!(whole >= 1, "{ids:?} {all:?}");
    for id in &ids[..3] {
        let m = job_of(&mut c, id).unwrap();
        assert_eq!(get_str(&m, "state"), "acked");
        assert!(!m.contains_key("result"), "{id}: {m:?}");
    }
    wait_until("the outcomes expire after the retention", WAIT, || {
        vint(&ok(&mut c, &["PTTL", "q:outcomes:old"])).unwrap_or(-1) > 0
    });
    // 0 keeps none.
    ok(&mut c, &["CONFIG", "SET", "streamwatch.outcomes-max", "0"]);
    ok(&mut c, &["DEL", "q:outcomes", "q:outcomes:old"]);
    let id = xadd(&mut c, "q", &[("x", "1")]);
    wait_drained(&mut c, "q");
    assert_eq!(
        vint(&ok(&mut c, &["EXISTS", "q:outcomes", "q:outcomes:old"])),
        Some(0)
    );
    assert_eq!(state_of(&mut c, &id), "acked");
}

#[test]
fn a_pool_workers_result_and_progress_are_kept() {
    let dir = TempDir::new();
    let worker = r#"while read -r line; do
  id=$(printf '%s' "$line" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  echo "serving $id"
  printf '{"id":"%s","progress":[1,2]}\n' "$id" >&3
  printf '{"id":"%s","ok":true,"result":{"served":"%s"}}\n' "$id" "$id" >&3
done"#;
    let toml = format!(
        "[handler.pool]\ncommand = [\"/bin/sh\", \"-c\", '''{worker}''', \"{TAG}\"]\npool = 1\n\n[[watch]]\npattern = \"q\"\nhandler = \"pool\"\ntype = \"stream\"\n"
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let id = xadd(&mut c, "q", &[("x", "1")]);
    let m = to_map(&ok(
        &mut c,
        &["STREAMWATCH.WAIT", "q", &id, "TIMEOUT", "20000"],
    ));
    assert_eq!(get_str(&m, "state"), "acked");
    assert_eq!(get_str(&m, "result"), format!(r#"{{"served":"{id}"}}"#));
    assert_eq!(get_str(&m, "progress"), "[1,2]");
    assert!(get_str(&m, "output").contains(&format!("serving {id}")));
}

#[test]
fn outcomes_are_replicated_and_wait_follows_a_failover() {
    let (d1, d2) = (TempDir::new(), TempDir::new());
    let p = Server::builder(&config(d1.path(), ""))
        .dir(d1.clone())
        .start();
    let r = Server::builder(&config(d2.path(), ""))
        .dir(d2.clone())
        .start();
    let mut rc = r.conn();
    replicate(&r, &p);
    let mut pc = p.conn();
    let done = xadd(&mut pc, "q", &[("x", "1")]);
    wait_until("acked", WAIT, || state_of(&mut pc, &done) == "acked");
    // The replica has the outcome: JOB and WAIT answer from it.
    wait_until("outcome replicated", WAIT, || {
        state_of(&mut rc, &done) == "acked"
    });
    let m = to_map(&ok(&mut rc, &["STREAMWATCH.WAIT", "q", &done]));
    assert_eq!(get_str(&m, "result"), format!(r#"{{"id":"{done}","n":7}}"#));
    // An entry still running on the primary when it fails over.
    let id = xadd(&mut pc, "q", &[("wait", "1")]);
    wait_until("running", WAIT, || state_of(&mut pc, &id) == "running");
    let waiting = wait_in_thread(&p, &id, "0");
    wait_until("replica has the entry", WAIT, || {
        state_of(&mut rc, &id) == "queued"
    });
    ok(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    ok(&mut pc, &["REPLICAOF", "127.0.0.1", &r.port.to_string()]);
    // The old primary's waiting client is told to ask the new one, and does.
    // (Redis itself unblocks it as the role changes: `UNBLOCKED ... master ->
    // replica`; else the module's own error names the primary.)
    let told = waiting.join().unwrap_err();
    assert!(
        told.contains("primary") || told.contains("replica"),
        "{told}"
    );
    std::fs::write(d2.path().join("go"), "").unwrap();
    let m = to_map(&ok(
        &mut rc,
        &["STREAMWATCH.WAIT", "q", &id, "TIMEOUT", "20000"],
    ));
    assert_eq!(get_str(&m, "state"), "acked");
    wait_until("the demoted node has the outcome", WAIT, || {
        state_of(&mut pc, &id) == "acked"
    });
}

#[test]
fn wait_and_cancel_refuse_bad_arguments() {
    let dir = TempDir::new();
    let s = start(&dir);
    let mut c = s.conn();
    assert!(err(&mut c, &["STREAMWATCH.WAIT", "q", "x-1"]).contains("'x-1'"));
    assert!(err(&mut c, &["STREAMWATCH.WAIT", "q", "1-0", "TIMEOUT", "-1"]).contains("TIMEOUT"));
    assert!(err(&mut c, &["STREAMWATCH.WAIT", "q", "1-0", "SOON", "1"]).contains("SOON"));
    assert!(err(&mut c, &["STREAMWATCH.WAIT", "q"]).contains("wrong number"));
    // Inside MULTI WAIT cannot block.
    let mut m = s.conn();
    let id = xadd(&mut m, "q", &[("wait", "1")]);
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("STREAMWATCH.WAIT")
        .arg("q")
        .arg(&id)
        .query(&mut m)
        .unwrap_or_default();
    assert!(
        !matches!(replies.first(), Some(Value::Map(_))),
        "{replies:?}"
    );
}
