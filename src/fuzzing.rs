//! The fuzz harnesses: one function per `cargo fuzz` target (fuzz/fuzz_targets/*.rs,
//! run by `make fuzz`). Each takes one input's bytes, runs the real parser on it and
//! asserts what must hold of the result; a failure is a panic, which the fuzzer reports
//! as a crash. The unit test below runs every file of fuzz/corpus and fuzz/regressions
//! through the same functions, so `make test` (stable Rust) replays them all.
//!
//! Inputs are text where that helps the seeds stay readable: for `commands` and
//! `template` one line is one argument (a final newline is ignored); for `glob` the
//! first line is a pattern and the rest, as it is, a key.
//!
//! Compiled only for tests and for cargo-fuzz (which builds every crate with
//! `--cfg fuzzing`); never part of the module.
#![cfg(any(test, fuzzing))]

use crate::commands::{self, KeyFieldArgs, ReplayArgs, WatchArgs};
use crate::config;
use crate::ffi::CmdError;
use crate::glob;
use crate::spec::{DbSel, Kind, OnChange, Source, StreamOpts};
use crate::stats;
use crate::template::{self, MAX_ARG_STRLEN};
use std::sync::atomic::Ordering;

/// A harness: one input, checked.
pub type Harness = fn(&[u8]);

/// The targets, by name: fuzz/fuzz_targets/<name>.rs, fuzz/corpus/<name>/.
pub const TARGETS: [(&str, Harness); 4] = [
    ("commands", commands),
    ("config", config),
    ("template", template),
    ("glob", glob),
];

/// One argument per line.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n').collect()
}

// ---- commands ----

/// The input is a command line, one argument per line, the command name first; every
/// command's parser runs on it (the name is Redis's business, not the parsers').
pub fn commands(data: &[u8]) {
    let args = lines(data);
    watch(&args);
    unwatch(&args);
    jobs(&args);
    key_field(&args);
    wait(&args);
    cancel(&args);
    replay(&args);
    no_args(&args);
    pause(&args);
}

/// An error is a wrong arity exactly when `arity_ok` is false, else an `ERR ` message.
fn check_error(e: CmdError, arity_ok: bool, args: &[&[u8]]) {
    match e {
        CmdError::Arity => assert!(!arity_ok, "{args:?}: arity error for a good arity"),
        CmdError::Msg(m) => {
            assert!(arity_ok, "{args:?}: {m:?} for a wrong arity");
            assert!(m.starts_with("ERR "), "{args:?}: error {m:?} lacks 'ERR '");
        }
    }
}

fn databases() -> i32 {
    commands::DATABASES.load(Ordering::Relaxed)
}

fn watch(args: &[&[u8]]) {
    let w = match commands::parse_watch(args) {
        Ok(w) => w,
        Err(e) => return check_error(e, args.len() >= 4, args),
    };
    assert!(args.len() >= 4);
    assert_eq!(Some(&w.pattern[..]), args.get(1).copied());
    assert!(!w.pattern.is_empty());
    match w.kind {
        Kind::Hash => assert_eq!(w.stream, StreamOpts::default(), "{args:?}"),
        Kind::Stream => assert_eq!(w.onchange, OnChange::Restart, "{args:?}"),
    }
    let s = &w.stream;
    assert!(s.concurrency > 0 && s.max_attempts > 0 && !s.group.is_empty());
    assert!(std::str::from_utf8(&s.group).is_ok());
    assert!(crate::spec::start_id(&s.start), "{args:?}");
    assert!(s
        .deadletter
        .as_deref()
        .is_none_or(|d| !d.is_empty() && std::str::from_utf8(d).is_ok()));
    if let Some(DbSel::One(d)) = w.db {
        assert!((0..databases()).contains(&d), "{args:?}: db {d}");
    }
    // What was understood, written out in full, is understood the same way.
    let canonical = canonical_watch(&w);
    let argv: Vec<&[u8]> = canonical.iter().map(Vec::as_slice).collect();
    match commands::parse_watch(&argv) {
        Ok(again) => assert_eq!(again, w, "{args:?} vs {argv:?}"),
        Err(e) => panic!("{args:?} parsed, its canonical form {argv:?} did not: {e:?}"),
    }
}

fn canonical_watch(w: &WatchArgs) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![b"STREAMWATCH.WATCH".to_vec(), w.pattern.clone()];
    let mut opt = |name: &str, value: &[u8]| {
        v.push(name.as_bytes().to_vec());
        v.push(value.to_vec());
    };
    opt("HANDLER", w.handler.as_bytes());
    opt("TYPE", w.kind.name().as_bytes());
    match w.db {
        Some(DbSel::One(d)) => opt("DB", d.to_string().as_bytes()),
        Some(DbSel::All) => opt("DB", b"all"),
        None => {}
    }
    match w.kind {
        Kind::Hash => opt("ONCHANGE", w.onchange.name().as_bytes()),
        Kind::Stream => {
            let s = &w.stream;
            opt("GROUP", &s.group);
            opt("CONCURRENCY", s.concurrency.to_string().as_bytes());
            opt("MAX-ATTEMPTS", s.max_attempts.to_string().as_bytes());
            if let Some(d) = &s.deadletter {
                opt("DEADLETTER", d);
            }
            opt("START", &s.start);
            opt("ACK", s.ack.name().as_bytes());
        }
    }
    if w.replace {
        v.push(b"REPLACE".to_vec());
    }
    v
}

fn unwatch(args: &[&[u8]]) {
    match commands::parse_unwatch(args) {
        Ok(p) => assert_eq!(Some(&p[..]), args.get(1).copied()),
        Err(e) => check_error(e, args.len() == 2, args),
    }
}

fn jobs(args: &[&[u8]]) {
    match commands::parse_jobs(args) {
        Ok(f) => {
            assert!(f.count.is_none_or(|n| n > 0));
            assert!(f.state.is_none_or(|s| stats::STATES.contains(&s)));
        }
        Err(e) => check_error(e, true, args),
    }
}

fn key_field(args: &[&[u8]]) {
    match commands::parse_key_field(args) {
        Ok(KeyFieldArgs { key, field, db }) => {
            assert!(args.len() == 3 || args.len() == 5);
            assert_eq!(Some(&key[..]), args.get(1).copied());
            assert_eq!(Some(&field[..]), args.get(2).copied());
            assert_eq!(db.is_some(), args.len() == 5);
            assert!(db.is_none_or(|d| (0..databases()).contains(&d)));
        }
        Err(e) => check_error(e, args.len() == 3 || args.len() == 5, args),
    }
}

/// An entry id the follow commands accept: `<ms>-<seq>`, both numbers.
fn is_entry_id(id: &[u8]) -> bool {
    let s = std::str::from_utf8(id).unwrap_or("");
    s.split_once('-')
        .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
}

fn wait(args: &[&[u8]]) {
    match commands::parse_wait(args) {
        Ok(w) => {
            assert!((3..=7).contains(&args.len()) && args.len() % 2 == 1);
            assert_eq!(Some(&w.key[..]), args.get(1).copied());
            assert_eq!(Some(&w.id[..]), args.get(2).copied());
            assert!(is_entry_id(&w.id));
            assert!(w.db.is_none_or(|d| (0..databases()).contains(&d)));
        }
        Err(e) => check_error(e, (3..=7).contains(&args.len()), args),
    }
}

fn cancel(args: &[&[u8]]) {
    match commands::parse_cancel(args) {
        Ok(a) => assert!(is_entry_id(&a.field), "{args:?}"),
        Err(e) => check_error(e, args.len() == 3 || args.len() == 5, args),
    }
}

fn replay(args: &[&[u8]]) {
    match commands::parse_replay(args) {
        Ok(ReplayArgs { key, count, db }) => {
            assert!(args.len() >= 2 && args.len().is_multiple_of(2), "{args:?}");
            assert_eq!(Some(&key[..]), args.get(1).copied());
            assert!((1..=crate::replay::MAX_COUNT).contains(&count), "{args:?}");
            assert!(db.is_none_or(|d| (0..databases()).contains(&d)));
        }
        Err(e) => check_error(e, args.len() >= 2, args),
    }
}

fn pause(args: &[&[u8]]) {
    match commands::parse_pause(args) {
        Ok(p) => assert_eq!(p.as_deref(), args.get(1).copied(), "{args:?}"),
        Err(e) => check_error(e, args.len() <= 2, args),
    }
}

fn no_args(args: &[&[u8]]) {
    match commands::parse_no_args(args) {
        Ok(()) => assert_eq!(args.len(), 1),
        Err(e) => check_error(e, args.len() == 1, args),
    }
}

// ---- config ----

const CONFIG_PATH: &str = "/etc/streamwatch/fuzz.toml";

/// The input is a config file (bytes that are not UTF-8 replaced, as a file holding
/// them is refused before parsing).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Whatever this machine's cgroups: `memory-max` and `cpu-max` are possible here.
    let cgroups = |_: &[&str]| Ok("/sys/fs/cgroup/fuzz".to_string());
    let c = match config::parse_with(CONFIG_PATH, &text, &cgroups) {
        Ok(c) => c,
        Err(e) => {
            // "<path>: line <n>: <problem>", n a line of the file.
            let rest = e
                .strip_prefix(CONFIG_PATH)
                .and_then(|r| r.strip_prefix(": line "))
                .and_then(|r| r.split_once(": "));
            let Some((n, _problem)) = rest else {
                panic!("error {e:?} does not name the file and the line");
            };
            let n: usize = n.parse().unwrap_or(0);
            assert!(
                (1..=text.matches('\n').count() + 1).contains(&n),
                "{e:?}: no such line"
            );
            return;
        }
    };
    for (name, h) in &c.handlers {
        assert_eq!(&h.name, name);
        assert!(h.command.first().is_some_and(|c| !c.is_empty()), "{name}");
        assert!(h.cwd.as_ref().is_none_or(|c| c.starts_with('/')), "{name}");
        assert!((1..=64).contains(&h.stop_signal), "{name}");
        assert!(h.backoff_max >= h.backoff_initial, "{name}");
        let l = &h.limits;
        assert!(l.nice.is_none_or(|n| (-20..=19).contains(&n)), "{name}");
        assert!((-1000..=1000).contains(&l.oom_score_adj), "{name}");
        let cgroup = l.memory_max.is_some() || l.cpu_max.is_some();
        assert_eq!(l.cgroup_parent.is_some(), cgroup, "{name}");
        for n in [0, 1, 2, 30, 31, 32, u32::MAX] {
            assert!(h.backoff(n) <= h.backoff_max, "{name}: backoff({n})");
        }
        // What a run of it would get (the arguments and environment of one run).
        let vars: [(&str, &[u8]); 4] = [
            ("{key}", b"k"),
            ("{field}", b"f"),
            ("{value}", b"v"),
            ("{db}", b"0"),
        ];
        let argv: Vec<Vec<u8>> = h
            .command
            .iter()
            .map(|a| template::substitute(a, &vars))
            .collect();
        let env: Vec<(Vec<u8>, Vec<u8>)> = h
            .env
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), template::substitute(v, &vars)))
            .collect();
        check_unspawnable(&argv, &env);
    }
    for (i, w) in c.watches.iter().enumerate() {
        assert!(c.handlers.contains_key(&w.handler), "{}", w.handler);
        assert!(!w.pattern.is_empty());
        assert_eq!(w.source, Source::Config);
        assert!(c.watches[..i].iter().all(|x| x.pattern != w.pattern));
        if w.kind == Kind::Hash {
            assert_eq!(w.stream, StreamOpts::default());
        }
        let s = &w.stream;
        assert!(s.concurrency > 0 && s.max_attempts > 0 && !s.group.is_empty());
        assert!(s.deadletter.as_ref().is_none_or(|d| !d.is_empty()));
        assert!(matches!(w.db, DbSel::All) || matches!(w.db, DbSel::One(d) if d >= 0));
    }
}

// ---- glob ----

/// How long one match may take when fuzzing, by input length: far more than a
/// pattern × key matcher needs, far less than one that backtracks exponentially takes
/// (which it does on inputs of a few dozen bytes already). The fuzz build, with its
/// sanitizer and coverage, is many times slower than a release build, and the worst
/// inputs of 4 KB (libFuzzer's default largest) take a pattern × key matcher a few
/// million steps: near the tight bound there, so they get a looser one.
const GLOB_BOUNDS: [(usize, std::time::Duration); 2] = [
    (1024, std::time::Duration::from_millis(50)),
    (4096, std::time::Duration::from_millis(500)),
];

/// The input is a pattern, a newline, then the key (the rest, newlines and all).
/// `glob::matches` must say what the reference (Redis's own algorithm) says, `glob::Set`
/// the same, and, when fuzzing (not in the tests, which assert no timing), a match must
/// not take longer than `GLOB_BOUNDS` allow: it runs on Redis's main thread for every
/// write.
pub fn glob(data: &[u8]) {
    let (pattern, key) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let show = || format!("{} against {}", pattern.escape_ascii(), key.escape_ascii());
    let timed = || {
        let start = std::time::Instant::now();
        let hit = glob::matches(std::hint::black_box(pattern), std::hint::black_box(key));
        (hit, start.elapsed())
    };
    let (got, took) = timed();
    if let Some(want) = glob::reference(pattern, key) {
        assert_eq!(got, want, "{}", show());
    }
    let set = glob::Set::new([(pattern, 1)]);
    assert_eq!(set.tags(key) == 1, got, "Set: {}", show());
    // Two patterns meet where some key matches both: the key written as a literal
    // pattern meets `pattern` exactly when it matches (for a non-empty key, within
    // Redis's limit on `*`s; beyond it `may_overlap` may only say yes too often).
    if !key.is_empty() && data.len() <= 2000 {
        let literal: Vec<u8> = key
            .iter()
            .flat_map(|&b| match b {
                b'*' | b'?' | b'[' | b'\\' => vec![b'\\', b],
                _ => vec![b],
            })
            .collect();
        let meet = glob::may_overlap(pattern, &literal);
        assert_eq!(
            meet,
            glob::may_overlap(&literal, pattern),
            "symmetric: {}",
            show()
        );
        if got || pattern.iter().filter(|&&b| b == b'*').count() <= 1000 {
            assert_eq!(meet, got, "may_overlap: {}", show());
        }
    }
    let bound = GLOB_BOUNDS.iter().find(|(len, _)| data.len() <= *len);
    if let (true, Some(&(_, bound))) = (cfg!(fuzzing), bound) {
        if took > bound {
            // Once more, so that being descheduled once is no failure.
            let (_, again) = timed();
            assert!(again <= bound, "{took:?}, then {again:?}, for {}", show());
        }
    }
}

// ---- template ----

/// Placeholders a hash job's command has; more come in pairs as `{field:<name>}`.
const NAMES: [&str; 5] = ["{key}", "{field}", "{value}", "{db}", "{id}"];

/// The input is a template line, then the values of `NAMES` one per line, then any
/// further lines in pairs: a stream field's name and its value.
pub fn template(data: &[u8]) {
    let mut parts = lines(data).into_iter();
    let template = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let values: Vec<&[u8]> = parts.collect();
    let mut vars: Vec<(String, &[u8])> = NAMES
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.to_string(), *v))
        .collect();
    let extra = values.get(NAMES.len()..).unwrap_or_default();
    for pair in extra.chunks_exact(2) {
        if let [name, value] = pair {
            let name = format!("{{field:{}}}", String::from_utf8_lossy(name));
            vars.push((name, value));
        }
    }
    let vars: Vec<(&str, &[u8])> = vars.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let out = template::substitute(&template, &vars);

    // No placeholder, or nothing to put there: the template comes out as it is.
    if !template.contains('{') || vars.is_empty() {
        assert_eq!(out, template.as_bytes());
    }
    assert_eq!(template::substitute(&template, &[]), template.as_bytes());
    // Each placeholder written as itself changes nothing.
    let same: Vec<(&str, &[u8])> = vars.iter().map(|(n, _)| (*n, n.as_bytes())).collect();
    assert_eq!(template::substitute(&template, &same), template.as_bytes());
    // A template that is just a placeholder becomes its value (the first of the vars
    // it starts with, as vars are tried in order). The first 64 (quadratic, and an
    // input of short lines has thousands).
    for (i, (name, value)) in vars.iter().enumerate().take(64) {
        let shadowed = vars[..i].iter().any(|(n, _)| name.starts_with(n));
        if !shadowed {
            assert_eq!(template::substitute(name, &vars), *value, "{name}");
        }
    }
    // Values are put in, not expanded again: the output is at most the template with
    // every byte replaced by the longest value.
    let longest = vars.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(1);
    assert!(out.len() <= template.len().saturating_mul(longest));

    let mut argv: Vec<Vec<u8>> = vec![out];
    argv.extend(vars.iter().map(|(_, v)| v.to_vec()));
    let env: Vec<(Vec<u8>, Vec<u8>)> = vars
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
        .collect();
    check_unspawnable(&argv, &env);
    // An input whose first byte is 0 to 3: a length around the limit, from
    // MAX_ARG_STRLEN - 2 to MAX_ARG_STRLEN + 1 bytes (not every time: it is slow).
    if let Some(b @ 0..=3) = data.first().copied() {
        let len = MAX_ARG_STRLEN - 2 + usize::from(b);
        check_unspawnable(&[vec![b'a'; len]], &[]);
        check_unspawnable(&[], &[(b"A".to_vec(), vec![b'a'; len])]);
    }
}

/// `unspawnable` refuses exactly what execve cannot take, and says which part.
fn check_unspawnable(argv: &[Vec<u8>], env: &[(Vec<u8>, Vec<u8>)]) {
    let bad_arg = argv
        .iter()
        .position(|a| a.contains(&0) || a.len() >= MAX_ARG_STRLEN);
    let bad_env = env
        .iter()
        .any(|(k, v)| k.contains(&0) || v.contains(&0) || k.len() + v.len() + 1 >= MAX_ARG_STRLEN);
    match (template::unspawnable(argv, env), bad_arg) {
        (Some(why), Some(i)) => assert!(why.starts_with(&format!("argument {i} ")), "{why}"),
        (Some(why), None) => {
            assert!(bad_env, "{why}");
            assert!(why.starts_with("environment variable "), "{why}");
        }
        (None, _) => assert!(bad_arg.is_none() && !bad_env),
    }
}

#[cfg(test)]
mod tests {
    use super::{lines, TARGETS};
    use crate::commands;
    use crate::spec::{DbSel, Kind};
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = fuzz_dir().join("corpus").join(target).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The seeds of real commands and configs are understood as written (a harness
    /// whose parser refused everything would pass every input).
    #[test]
    fn seeds_mean_what_they_say() {
        let data = seed("commands", "watch-stream");
        let w = commands::parse_watch(&lines(&data)).expect("watch-stream parses");
        assert_eq!(w.kind, Kind::Stream);
        assert_eq!(w.db, Some(DbSel::All));
        assert_eq!((w.stream.concurrency, w.stream.max_attempts), (2, 3));
        let data = seed("commands", "jobs");
        let f = commands::parse_jobs(&lines(&data)).expect("jobs parses");
        assert_eq!((f.state, f.count), (Some("running"), Some(10)));
        let data = seed("commands", "job");
        let j = commands::parse_key_field(&lines(&data)).expect("job parses");
        assert_eq!(
            (&j.key[..], &j.field[..], j.db),
            (&b"cams"[..], &b"cam1"[..], Some(15))
        );
        let data = seed("commands", "wait");
        let w = commands::parse_wait(&lines(&data)).expect("wait parses");
        assert_eq!(
            (&w.id[..], w.timeout_ms, w.db),
            (&b"1700000000000-0"[..], 5000, Some(2))
        );
        let data = seed("commands", "replay");
        let r = commands::parse_replay(&lines(&data)).expect("replay parses");
        assert_eq!((&r.key[..], r.count, r.db), (&b"jobs"[..], 1000, Some(3)));
        let data = seed("config", "demo.toml");
        let text = String::from_utf8_lossy(&data);
        let c = crate::config::parse("demo.toml", &text).expect("demo.toml parses");
        assert_eq!((c.handlers.len(), c.watches.len()), (2, 2));
        let data = seed("config", "limits.toml");
        let text = String::from_utf8_lossy(&data);
        let c = crate::config::parse("limits.toml", &text).expect("limits.toml parses");
        let l = &c.handlers["transcode"].limits;
        assert_eq!(
            (l.nice, l.oom_score_adj, l.rlimits.len()),
            (Some(10), 500, 5)
        );
    }

    /// Every seed and every input that once crashed a target, through its harness.
    #[test]
    fn corpus_and_regressions_pass() {
        let root = fuzz_dir();
        let mut ran = 0;
        for dir in ["corpus", "regressions"] {
            for (name, harness) in TARGETS {
                let Ok(files) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for f in files {
                    let path = f.expect("readable directory").path();
                    let data = std::fs::read(&path).expect("readable input");
                    let run = std::panic::catch_unwind(|| harness(&data));
                    assert!(run.is_ok(), "{name} fails on {}", path.display());
                    ran += 1;
                }
            }
        }
        assert!(ran >= 4 * 3, "only {ran} inputs under {}", root.display());
    }
}
