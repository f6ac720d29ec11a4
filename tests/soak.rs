//! Randomized soak: a seeded stream of every kind of change Redis can make to watched
//! keys (HSET/HSETNX/HDEL/HINCRBY(FLOAT), DEL/UNLINK, expiry, RENAME, MOVE, COPY, SET
//! over a hash, SWAPDB, FLUSHDB, MULTI/EXEC batches, Lua scripts) interleaved with
//! PAUSE/RESUME, BGSAVE and watch changes, over a few keys in three databases. Every
//! so often the test waits for quiescence and compares the live worker processes, read
//! from /proc (never from the module's own view), with the data itself: one worker per
//! field of every watched hash, with the field's current value, no other worker, no
//! zombie.
//!
//! A second run does the same while SIGKILLing the helper process now and then (as an
//! OOM killer would): it too must end in exactly the right workers, with no worker left
//! over from a dead helper.
//!
//! `SOAK_OPS` (default 1,500 here; `make soak` runs 100,000), `SOAK_KILL_OPS` for the
//! run with helper kills (default 1,500; `make soak` runs 10,000: each kill in a row
//! makes the next helper start later, up to 5 s) and `SOAK_SEED` (default: from the
//! clock) size and replay a run; a failure names its seed and operation.

mod common;

use common::*;
use std::collections::BTreeSet;

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const DBS: u64 = 3;
const KEYS: &[&str] = &["s:a", "s:b", "s:c", "s:d", "s:e", "t:a", "t:b", "t:c"];
const FIELDS: &[&str] = &["f1", "f2", "f3", "f4", "f5", "f6", "n"];
const VALUES: &[&str] = &["x", "y", "z", "1", "22"];

/// `(db, key, field, value)` of every live worker of this server, from /proc.
type Worker = (String, String, String, String);

fn live_workers(s: &Server) -> Vec<Worker> {
    s.tagged_procs()
        .into_iter()
        .filter_map(|pid| {
            let argv = cmdline(pid);
            // sh -c SCRIPT TAG key field value db
            (argv.len() >= 8).then(|| {
                let t = |i: usize| String::from_utf8_lossy(&argv[i]).into_owned();
                (t(7), t(4), t(5), t(6))
            })
        })
        .collect()
}

/// What the data says must run: every field of every hash key that a watch covers.
fn expected(c: &mut redis::Connection) -> BTreeSet<Worker> {
    // The `t:*` watch is made by command, so it lives in the store in db 0 (which
    // FLUSHDB and SWAPDB move or drop like any data).
    ok(c, &["SELECT", "0"]);
    let t_watched = vint(&ok(c, &["HEXISTS", "streamwatch:watches", "t:*"])) == Some(1);
    let mut out = BTreeSet::new();
    for db in 0..DBS {
        ok(c, &["SELECT", &db.to_string()]);
        for key in KEYS {
            if key.starts_with("t:") && !t_watched {
                continue;
            }
            // HGETALL also expires a key whose time is up (lazy expiry fires the event).
            let Ok(v) = run(c, &["HGETALL", key]) else {
                continue; // another type
            };
            for (f, v) in to_map(&v) {
                out.insert((db.to_string(), key.to_string(), f, vstr(&v)));
            }
        }
    }
    ok(c, &["SELECT", "0"]);
    out
}

/// One random change; errors (wrong type, missing key) are part of the game.
fn step(c: &mut redis::Connection, r: &mut Rng, paused: &mut bool) {
    let db = r.below(DBS).to_string();
    let _ = run(c, &["SELECT", &db]);
    let key = r.pick(KEYS);
    let other = r.pick(KEYS);
    let field = r.pick(FIELDS);
    let value = r.pick(VALUES);
    let db2 = r.below(DBS).to_string();
    let hash_op = |r: &mut Rng| -> Vec<String> {
        let (k, f, v) = (r.pick(KEYS), r.pick(FIELDS), r.pick(VALUES));
        let words: Vec<&str> = match r.below(3) {
            0 | 1 => vec!["HSET", k, f, v],
            _ => vec!["HDEL", k, f],
        };
        words.into_iter().map(String::from).collect()
    };
    let n = r.below(1000);
    let _ = match n {
        0..=299 => run(c, &["HSET", key, field, value]),
        300..=449 => run(c, &["HDEL", key, field]),
        450..=474 => run(c, &["HINCRBY", key, "n", "1"]),
        // After this one, HINCRBY on "n" fails ("not an integer"): a command that its
        // command filter saw but that changed nothing.
        475..=482 => run(c, &["HINCRBYFLOAT", key, "n", "0.5"]),
        483..=492 => run(c, &["HSETNX", key, field, value]),
        493..=499 => run(c, &["HDEL", key, field, "f6", "nope"]),
        500..=539 => run(c, &["DEL", key]),
        540..=569 => run(c, &["UNLINK", key]),
        570..=609 => run(c, &["PEXPIRE", key, &(1 + r.below(40)).to_string()]),
        610..=649 => run(c, &["RENAME", key, other]),
        650..=679 => run(c, &["MOVE", key, &db2]),
        680..=699 => run(c, &["COPY", key, other, "DB", &db2, "REPLACE"]),
        700..=719 => run(c, &["SET", key, "plain"]),
        720..=729 => run(c, &["SWAPDB", &db, &db2]),
        730..=734 => run(c, &["FLUSHDB"]),
        735..=804 => {
            let mut p = redis::pipe();
            p.atomic();
            for _ in 0..2 + r.below(4) {
                let words = hash_op(r);
                let mut cmd = redis::cmd(&words[0]);
                for w in &words[1..] {
                    cmd.arg(w);
                }
                p.add_command(cmd).ignore();
            }
            p.query::<()>(c).map(|_| redis::Value::Nil)
        }
        805..=874 => {
            let script = "for i = 1, #KEYS do \
                 if ARGV[i] == '' then redis.call('HDEL', KEYS[i], 'f1') \
                 else redis.call('HSET', KEYS[i], 'f2', ARGV[i]) end end";
            let (a, b) = (r.pick(&["s:a", "s:b", "s:c"]), r.pick(&["s:d", "s:e"]));
            let v = if r.below(3) == 0 { "" } else { value };
            run(c, &["EVAL", script, "2", a, b, v, value])
        }
        875..=884 => {
            *paused = !*paused;
            run(
                c,
                &[if *paused {
                    "STREAMWATCH.PAUSE"
                } else {
                    "STREAMWATCH.RESUME"
                }],
            )
        }
        885..=894 => run(c, &["BGSAVE"]),
        895..=904 => {
            let _ = run(c, &["SELECT", "0"]);
            if r.below(2) == 0 {
                run(
                    c,
                    &[
                        "STREAMWATCH.WATCH",
                        "t:*",
                        "HANDLER",
                        "w",
                        "DB",
                        "ALL",
                        "REPLACE",
                    ],
                )
            } else {
                run(c, &["STREAMWATCH.UNWATCH", "t:*"])
            }
        }
        _ => run(c, &["HSET", key, field, value, "f6", value]),
    };
}

fn converge(s: &Server, c: &mut redis::Connection, seed: u64, op: usize, paused: bool) {
    // Let short expiries pass, then read what must run (expiring what is due).
    std::thread::sleep(std::time::Duration::from_millis(60));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // Paused: nothing runs (and nothing is reconciled until RESUME).
        let want = if paused { BTreeSet::new() } else { expected(c) };
        let live = live_workers(s);
        let got: BTreeSet<Worker> = live.iter().cloned().collect();
        let zombies = s.zombies();
        if got == want && got.len() == live.len() && zombies.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<_> = want.difference(&got).collect();
            let extra: Vec<_> = got.difference(&want).collect();
            panic!(
                "soak seed {seed}: after operation {op} the workers differ from the data\n  \
                 missing: {missing:?}\n  extra: {extra:?}\n  duplicates: {}\n  zombies: {zombies:?}\n  \
                 replay with SOAK_SEED={seed} SOAK_OPS={op}",
                live.len() - got.len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn random_changes_always_end_in_the_right_workers() {
    soak(false);
}

#[test]
fn killing_the_helper_during_random_changes_still_ends_in_the_right_workers() {
    soak(true);
}

fn soak(kill_helper: bool) {
    let ops_var = if kill_helper {
        "SOAK_KILL_OPS"
    } else {
        "SOAK_OPS"
    };
    let ops: usize = std::env::var(ops_var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let what = if kill_helper { " and helper kills" } else { "" };
    eprintln!("soak: seed {seed}, {ops} operations{what}");
    let script = r#"trap 'exit 0' TERM; while :; do sleep 1; done"#;
    let toml = format!(
        "[handler.w]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\", \"{{key}}\", \"{{field}}\", \"{{value}}\", \"{{db}}\"]\nstop-grace-ms = 2000\nbackoff-initial-ms = 10\n\n[[watch]]\npattern = \"s:*\"\nhandler = \"w\"\ndb = \"all\"\n"
    );
    let s = Server::builder(&toml).start();
    let mut c = s.conn();
    let mut r = Rng(seed);
    // Helper kills come from a stream of their own: the operations stay those of the
    // seed without kills.
    let mut kills = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut killed = 0;
    let mut paused = false;
    // Checked often, and without a RESUME or any other full reconcile first, so a
    // change the module failed to notice shows up as a mismatch.
    let every = 40;
    for op in 1..=ops {
        step(&mut c, &mut r, &mut paused);
        if kill_helper && kills.below(100) == 0 {
            if let Some(pid) = s.helper() {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed += 1;
            }
        }
        if op % every == 0 || op == ops {
            converge(&s, &mut c, seed, op, paused);
        }
    }
    eprintln!("soak: seed {seed}, {ops} operations{what} ({killed} kills), 0 mismatches");
}
