//! The `STREAMWATCH.*` commands: argument parsing and replies, on the main thread.
//!
//! Each command's arguments are parsed first, by a pure function over their bytes
//! (`parse_*`: no Redis, no registry, so `make fuzz` runs them on hostile input), into a
//! typed request; the handler then executes it. Commands that only read what the main
//! thread owns (watches, handlers, counters) answer at once. Commands about jobs block
//! the calling client and let the supervisor answer; because they travel on the same
//! channel as key hints, a client that writes a key and then asks about jobs sees the
//! effect of its write.

use crate::acl::{self, Caller};
use crate::config;
use crate::ffi::{CmdError, Outcome, Replier, Reply};
use crate::replay;
use crate::spec::{self, DbSel, Kind, OnChange, Opt, Options, Source, StreamOpts, Syntax, Value};
use crate::stats;
use crate::store;
use crate::supervisor::{self, JobFilter, Msg};
use crate::watch;
use redis_module::{Context, ContextFlags, RedisString};
use std::sync::atomic::{AtomicI32, Ordering};

type CmdResult = Result<Outcome, CmdError>;

mod follow;
mod pause;
pub use follow::{cancel, wait};
#[cfg(any(test, fuzzing))]
pub use follow::{parse_cancel, parse_wait};
#[cfg(any(test, fuzzing))]
pub use pause::parse_pause;

/// Number of databases (`databases` config), read at load.
pub static DATABASES: AtomicI32 = AtomicI32::new(16);

fn err<T>(msg: impl Into<String>) -> Result<T, CmdError> {
    Err(CmdError::Msg(msg.into()))
}

fn reply(r: Reply) -> CmdResult {
    Ok(Outcome::Reply(r))
}

/// A command's arguments as the parsers take them: the command name first.
fn argv(args: &[RedisString]) -> Vec<&[u8]> {
    args.iter().map(|a| a.as_slice()).collect()
}

fn text(a: &[u8]) -> String {
    String::from_utf8_lossy(a).into_owned()
}

/// Walks `[NAME value ...]` options with clear errors.
struct Opts<'a> {
    args: &'a [&'a [u8]],
    i: usize,
}

impl<'a> Opts<'a> {
    fn new(args: &'a [&'a [u8]], from: usize) -> Self {
        Opts { args, i: from }
    }

    /// The next option name, upper-cased.
    fn next_name(&mut self) -> Option<String> {
        let a = self.args.get(self.i)?;
        self.i += 1;
        Some(text(a).to_ascii_uppercase())
    }

    fn value(&mut self, name: &str) -> Result<&'a [u8], CmdError> {
        let v = self
            .args
            .get(self.i)
            .ok_or_else(|| CmdError::Msg(format!("ERR {name} needs a value")))?;
        self.i += 1;
        Ok(v)
    }

    fn positive(&mut self, name: &str) -> Result<i64, CmdError> {
        let v = text(self.value(name)?);
        match v.parse::<i64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => err(format!("ERR {name} must be a positive integer, got '{v}'")),
        }
    }

    fn db(&mut self) -> Result<i32, CmdError> {
        let v = text(self.value("DB")?);
        parse_db(&v)
    }
}

fn parse_db(v: &str) -> Result<i32, CmdError> {
    let max = DATABASES.load(Ordering::Relaxed);
    match v.parse::<i32>() {
        Ok(n) if (0..max).contains(&n) => Ok(n),
        _ => err(format!(
            "ERR DB must be a database number from 0 to {}, got '{v}'",
            max.saturating_sub(1)
        )),
    }
}

// ---- parsing: pure functions of the arguments ----

/// `STREAMWATCH.WATCH`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchArgs {
    pub pattern: Vec<u8>,
    pub handler: String,
    pub kind: Kind,
    /// `None`: the database the client has selected.
    pub db: Option<DbSel>,
    pub onchange: OnChange,
    pub stream: StreamOpts,
    pub replace: bool,
}

/// `STREAMWATCH.JOB` and `STREAMWATCH.RESTART`: `key field [DB n]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFieldArgs {
    pub key: Vec<u8>,
    pub field: Vec<u8>,
    /// `None`: the database the client has selected.
    pub db: Option<i32>,
}

/// `STREAMWATCH.WATCH pattern HANDLER name [TYPE hash|stream] [DB n|ALL]
/// [ONCHANGE restart|ignore] [GROUP g] [DEADLETTER d] [CONCURRENCY n] [MAX-ATTEMPTS n]
/// [START 0|$|id] [ACK keep|delete] [REPLACE]`.
pub fn parse_watch(args: &[&[u8]]) -> Result<WatchArgs, CmdError> {
    let pattern = match args {
        [_, pattern, _, _, ..] => pattern.to_vec(),
        _ => return Err(CmdError::Arity),
    };
    let syntax = Syntax::Command {
        databases: DATABASES.load(Ordering::Relaxed),
    };
    if let Some(problem) = spec::pattern_problem(syntax, &pattern) {
        return err(format!("ERR {problem}"));
    }
    let with_err = |e: String| CmdError::Msg(format!("ERR {e}"));
    let mut options = Options::new(syntax);
    let mut replace = false;
    let mut o = Opts::new(args, 2);
    while let Some(name) = o.next_name() {
        match Opt::from_word(&name) {
            Some(opt) => options
                .set(opt, Value::Text(o.value(&name)?))
                .map_err(with_err)?,
            None if name == "REPLACE" => replace = true,
            None => return err(format!("ERR unknown option '{name}'")),
        }
    }
    let p = options.finish().map_err(with_err)?;
    Ok(WatchArgs {
        pattern,
        handler: p.handler,
        kind: p.kind,
        db: p.db,
        onchange: p.onchange,
        stream: p.stream,
        replace,
    })
}

/// `STREAMWATCH.UNWATCH pattern`: the pattern.
pub fn parse_unwatch(args: &[&[u8]]) -> Result<Vec<u8>, CmdError> {
    match args {
        [_, pattern] => Ok(pattern.to_vec()),
        _ => Err(CmdError::Arity),
    }
}

/// `STREAMWATCH.JOBS [WATCH pattern] [KEY key] [STATE state] [COUNT n]`.
pub fn parse_jobs(args: &[&[u8]]) -> Result<JobFilter, CmdError> {
    let mut filter = JobFilter::default();
    let mut o = Opts::new(args, 1);
    while let Some(name) = o.next_name() {
        match name.as_str() {
            "WATCH" => filter.watch = Some(o.value("WATCH")?.to_vec()),
            "KEY" => filter.key = Some(o.value("KEY")?.to_vec()),
            "STATE" => {
                let v = text(o.value("STATE")?).to_ascii_lowercase();
                let state = stats::state_index(&v)
                    .and_then(|i| stats::STATES.get(i))
                    .ok_or_else(|| {
                        CmdError::Msg(format!(
                            "ERR STATE must be one of {}, got '{v}'",
                            stats::STATES.join(", ")
                        ))
                    })?;
                filter.state = Some(state);
            }
            "COUNT" => {
                filter.count = Some(usize::try_from(o.positive("COUNT")?).unwrap_or(usize::MAX))
            }
            _ => return err(format!("ERR unknown option '{name}'")),
        }
    }
    Ok(filter)
}

/// `key field [DB n]`, shared by `STREAMWATCH.JOB` and `STREAMWATCH.RESTART`.
pub fn parse_key_field(args: &[&[u8]]) -> Result<KeyFieldArgs, CmdError> {
    let (key, field) = match args {
        [_, key, field] | [_, key, field, _, _] => (key.to_vec(), field.to_vec()),
        _ => return Err(CmdError::Arity),
    };
    let mut db = None;
    let mut o = Opts::new(args, 3);
    while let Some(name) = o.next_name() {
        match name.as_str() {
            "DB" => db = Some(o.db()?),
            _ => return err(format!("ERR unknown option '{name}'")),
        }
    }
    Ok(KeyFieldArgs { key, field, db })
}

/// `STREAMWATCH.REPLAY key [COUNT n] [DB n]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayArgs {
    pub key: Vec<u8>,
    /// Entries to move at most: 1 to `replay::MAX_COUNT`, default `replay::DEFAULT_COUNT`.
    pub count: usize,
    /// `None`: the database the client has selected.
    pub db: Option<i32>,
}

/// `STREAMWATCH.REPLAY key [COUNT n] [DB n]`.
pub fn parse_replay(args: &[&[u8]]) -> Result<ReplayArgs, CmdError> {
    let [_, key, ..] = args else {
        return Err(CmdError::Arity);
    };
    let (max, mut count, mut db) = (replay::MAX_COUNT, replay::DEFAULT_COUNT, None);
    let mut o = Opts::new(args, 2);
    while let Some(name) = o.next_name() {
        match name.as_str() {
            "COUNT" => {
                let v = text(o.value("COUNT")?);
                count = match v.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => n,
                    _ => {
                        return err(format!(
                            "ERR COUNT must be an integer from 1 to {max}, got '{v}'"
                        ))
                    }
                };
            }
            "DB" => db = Some(o.db()?),
            _ => return err(format!("ERR unknown option '{name}'")),
        }
    }
    let key = key.to_vec();
    Ok(ReplayArgs { key, count, db })
}

/// The commands without arguments: WATCHES, HANDLERS, RECONCILE, STATUS.
pub fn parse_no_args(args: &[&[u8]]) -> Result<(), CmdError> {
    match args {
        [_] => Ok(()),
        _ => Err(CmdError::Arity),
    }
}

// ---- execution ----

fn current_db(ctx: &Context) -> i32 {
    crate::ffi::selected_db(ctx)
}

/// Blocks the client for a supervisor answer, or explains why it cannot.
fn block(ctx: &Context, name: &str) -> Result<Replier, CmdError> {
    Replier::block(ctx).ok_or_else(|| {
        CmdError::Msg(format!(
            "ERR {name} cannot be used inside MULTI or a script"
        ))
    })
}

fn ask(msg: Msg) -> CmdResult {
    if supervisor::send(msg) {
        Ok(Outcome::Blocked)
    } else {
        err("ERR streamwatch supervisor is not running")
    }
}

/// The checks of a command that changes what runs (see `acl`): may the caller run it,
/// and (WATCH, UNWATCH) write the watches store?
fn admin(ctx: &Context, command: &str, writes_store: bool) -> Result<(), CmdError> {
    let caller = Caller::current(ctx);
    acl::check_admin(ctx, &caller, command)?;
    if writes_store {
        if let Some(key) = store::name(ctx) {
            caller.check_write(ctx, &key, "the watches key")?;
        }
    }
    Ok(())
}

pub fn watch(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let w = parse_watch(&argv(&args))?;
    admin(ctx, "streamwatch.watch", true)?;
    // A watch on databases the caller may not use would run handlers on their data.
    let current = current_db(ctx);
    let caller = Caller::current(ctx);
    match w.db {
        Some(DbSel::One(db)) => caller.check_db(ctx, db, current)?,
        Some(DbSel::All) => {
            for db in 0..DATABASES.load(Ordering::Relaxed) {
                caller.check_db(ctx, db, current)?;
            }
        }
        None => {}
    }
    let spec = spec::Parsed {
        handler: w.handler,
        kind: w.kind,
        db: w.db,
        onchange: w.onchange,
        stream: w.stream,
    }
    .into_spec(w.pattern, Source::Command, DbSel::One(current));
    watch::check_add(&spec, w.replace)?;
    pause::clear_stale(ctx, &spec.pattern)?;
    supervisor::follow_watches(store::write(ctx, &spec.pattern, Some(&spec))?);
    reply(Reply::Ok)
}

pub fn unwatch(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let pattern = parse_unwatch(&argv(&args))?;
    admin(ctx, "streamwatch.unwatch", true)?;
    let removed = watch::check_remove(&pattern)?;
    let watches = store::write(ctx, &pattern, None)?.unwrap_or_else(watch::snapshot);
    pause::forget(ctx, &pattern);
    match Replier::block(ctx) {
        Some(r) => ask(Msg::Unwatch {
            watches,
            reply: Some(r),
        }),
        None => {
            // Inside MULTI or a script: answer with the jobs the watch had.
            supervisor::send(Msg::Unwatch {
                watches,
                reply: None,
            });
            reply(Reply::Int(removed.job_count() as i64))
        }
    }
}

pub fn watches(_ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    parse_no_args(&argv(&args))?;
    let list = watch::snapshot()
        .iter()
        .map(|w| {
            let mut m = vec![
                ("pattern".into(), Reply::str(&w.spec.pattern)),
                ("handler".into(), Reply::str(&w.spec.handler)),
                ("type".into(), Reply::str(w.spec.kind.name())),
                (
                    "db".into(),
                    match w.spec.db {
                        DbSel::One(d) => Reply::Int(d as i64),
                        DbSel::All => Reply::str("all"),
                    },
                ),
                ("options".into(), options(w)),
                ("source".into(), Reply::str(w.spec.source.name())),
                ("paused".into(), Reply::Bool(w.is_paused())),
                ("jobs".into(), Reply::Int(w.job_count() as i64)),
            ];
            if w.spec.kind == Kind::Stream {
                let q = &w.queue;
                let n =
                    |a: &std::sync::atomic::AtomicU64| Reply::Int(a.load(Ordering::Relaxed) as i64);
                let g = |a: &std::sync::atomic::AtomicI64| Reply::Int(a.load(Ordering::Relaxed));
                m.extend([
                    ("pending".into(), g(&q.pending)),
                    ("lag".into(), g(&q.lag)),
                    ("acked".into(), n(&q.acked)),
                    ("retried".into(), n(&q.retried)),
                    ("dead-lettered".into(), n(&q.dead_lettered)),
                ]);
            }
            Reply::Map(m)
        })
        .collect();
    reply(Reply::Array(list))
}

/// A watch's options as `STREAMWATCH.WATCHES` shows them.
fn options(w: &watch::Watch) -> Reply {
    match w.spec.kind {
        Kind::Hash => Reply::Map(vec![(
            "onchange".into(),
            Reply::str(w.spec.onchange.name()),
        )]),
        Kind::Stream => {
            let o = &w.spec.stream;
            Reply::Map(vec![
                ("group".into(), Reply::str(&o.group)),
                ("concurrency".into(), Reply::Int(o.concurrency.into())),
                ("max-attempts".into(), Reply::Int(o.max_attempts.into())),
                (
                    "deadletter".into(),
                    match &o.deadletter {
                        Some(d) => Reply::str(d),
                        None => Reply::str("<key>:dead"),
                    },
                ),
                ("start".into(), Reply::str(&o.start)),
                ("ack".into(), Reply::str(o.ack.name())),
            ])
        }
    }
}

pub fn handlers(_ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    parse_no_args(&argv(&args))?;
    let ms = |d: std::time::Duration| Reply::Int(d.as_millis() as i64);
    let list = config::file()
        .handlers
        .values()
        .map(|h| {
            let mut m = vec![
                ("name".into(), Reply::str(&h.name)),
                (
                    "command".into(),
                    Reply::Array(h.command.iter().map(Reply::str).collect()),
                ),
                (
                    "env".into(),
                    Reply::Map(
                        h.env
                            .iter()
                            .map(|(k, v)| (k.clone(), Reply::str(v)))
                            .collect(),
                    ),
                ),
                ("cwd".into(), h.cwd.as_ref().map_or(Reply::Nil, Reply::str)),
                ("restart".into(), Reply::str(h.restart.name())),
                ("backoff-initial-ms".into(), ms(h.backoff_initial)),
                ("backoff-max-ms".into(), ms(h.backoff_max)),
                ("stable-after-ms".into(), ms(h.stable_after)),
                ("max-failures".into(), Reply::Int(h.max_failures as i64)),
                ("stop-signal".into(), Reply::str(&h.stop_signal_name)),
                ("stop-grace-ms".into(), ms(h.stop_grace)),
                ("timeout-ms".into(), ms(h.timeout)),
                ("log-lines".into(), Reply::Int(h.log_lines() as i64)),
                ("pool".into(), Reply::Int(h.pool.into())),
                ("max-requests".into(), Reply::Int(h.max_requests as i64)),
                ("heartbeat-ms".into(), ms(h.heartbeat)),
                (
                    "no-restart-exit-codes".into(),
                    exit_codes(&h.no_restart_exit_codes),
                ),
            ];
            m.extend(limits_reply(&h.limits));
            Reply::Map(m)
        })
        .collect();
    reply(Reply::Array(list))
}

fn exit_codes(codes: &[u8]) -> Reply {
    Reply::Array(codes.iter().map(|&c| Reply::Int(c.into())).collect())
}

/// A handler's limits in `STREAMWATCH.HANDLERS`: each option, nil when not set (a
/// resource limit "unlimited", or bytes, seconds or a count).
fn limits_reply(l: &crate::limits::Limits) -> Vec<(String, Reply)> {
    use crate::protocol::{Rlimit, UNLIMITED};
    let opt = |v: Option<u64>| match v {
        None => Reply::Nil,
        Some(UNLIMITED) => Reply::str("unlimited"),
        Some(n) => Reply::Int(n.min(i64::MAX as u64) as i64),
    };
    let mut m = vec![
        ("nice".into(), Reply::opt_int(l.nice.map(i64::from))),
        ("oom-score-adj".into(), Reply::Int(l.oom_score_adj.into())),
    ];
    m.extend(Rlimit::ALL.map(|r| (r.option().to_string(), opt(l.rlimit(r)))));
    m.push(("memory-max".into(), opt(l.memory_max)));
    let cpu = l.cpu_max.map(|p| Reply::str(format!("{p}%")));
    m.push(("cpu-max".into(), cpu.unwrap_or(Reply::Nil)));
    m
}

/// `STREAMWATCH.POOLS`: per pool handler, its workers (busy, idle, starting), their
/// pids, restarts and the entries they did.
pub fn pools(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    parse_no_args(&argv(&args))?;
    let r = block(ctx, "STREAMWATCH.POOLS")?;
    ask(Msg::Pools { reply: r })
}

pub fn jobs(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let mut filter = parse_jobs(&argv(&args))?;
    let caller = Caller::current(ctx);
    let current = current_db(ctx);
    if let Some(key) = &filter.key {
        caller.check_run_in(ctx, current, &[b"STREAMWATCH.JOB", key, b"x"], key)?;
    }
    let mut r = block(ctx, "STREAMWATCH.JOBS")?;
    // The caller sees the jobs it could ask `JOB` about, and COUNT counts those: the
    // list is filtered on the main thread, where Redis can be asked.
    if caller.name().is_some() {
        let count = filter.count.take();
        let mut judge = acl::JobJudge::new(caller, current);
        r = r.filtered(Box::new(move |ctx, list| {
            visible_jobs(&mut |db, key| judge.may_see(ctx, db, key), list, count)
        }));
    }
    ask(Msg::Jobs { filter, reply: r })
}

/// The entries of a `JOBS` reply whose database and key pass `may_see`, at most `count`.
fn visible_jobs(
    may_see: &mut dyn FnMut(i32, &[u8]) -> bool,
    list: Reply,
    count: Option<usize>,
) -> Reply {
    let Reply::Array(items) = list else {
        return list; // an error
    };
    let mut visible = |item: &Reply| {
        let Reply::Map(m) = item else {
            return false;
        };
        let field = |name: &str| m.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        match (field("db"), field("key")) {
            (Some(Reply::Int(db)), Some(Reply::Bulk(key))) => {
                i32::try_from(*db).is_ok_and(|db| may_see(db, key))
            }
            _ => false,
        }
    };
    Reply::Array(
        items
            .into_iter()
            .filter(|item| visible(item))
            .take(count.unwrap_or(usize::MAX))
            .collect(),
    )
}

/// `DB n` of JOB, WAIT, RESTART, CANCEL and REPLAY, for a database other than the connection's (in
/// its own, the server has checked the command and its key): the caller must be allowed
/// to use the database and to run the command (`args`, its key first) on the key there.
fn check_other_db(ctx: &Context, db: Option<i32>, args: &[&[u8]]) -> Result<i32, CmdError> {
    let current = current_db(ctx);
    let db = db.unwrap_or(current);
    if db != current {
        let caller = Caller::current(ctx);
        caller.check_db(ctx, db, current)?;
        let key = args.get(1).copied().unwrap_or_default();
        caller.check_run_in(ctx, db, args, key)?;
    }
    Ok(db)
}

pub fn job(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let a = parse_key_field(&argv(&args))?;
    let db = check_other_db(ctx, a.db, &[b"STREAMWATCH.JOB", &a.key, &a.field])?;
    let r = block(ctx, "STREAMWATCH.JOB")?;
    ask(Msg::Job {
        db,
        key: a.key,
        field: a.field,
        reply: r,
    })
}

pub fn restart(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let a = parse_key_field(&argv(&args))?;
    admin(ctx, "streamwatch.restart", false)?;
    let db = check_other_db(ctx, a.db, &[b"STREAMWATCH.RESTART", &a.key, &a.field])?;
    let r = block(ctx, "STREAMWATCH.RESTART")?;
    ask(Msg::Restart {
        db,
        key: a.key,
        field: a.field,
        reply: r,
    })
}

/// `STREAMWATCH.REPLAY`: checked here, done by `replay` (on this thread, atomically).
pub fn replay(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let a = parse_replay(&argv(&args))?;
    admin(ctx, "streamwatch.replay", false)?;
    let db = check_other_db(ctx, a.db, &[b"STREAMWATCH.REPLAY", &a.key])?;
    reply(Reply::Int(replay::run(ctx, db, &a.key, a.count)?))
}

/// `STREAMWATCH.PAUSE [pattern]` (see `pause`).
pub fn pause(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    pause::pause_or_resume(ctx, args, true)
}

/// `STREAMWATCH.RESUME [pattern]` (see `pause`).
pub fn resume(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    pause::pause_or_resume(ctx, args, false)
}

pub fn reconcile(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    parse_no_args(&argv(&args))?;
    admin(ctx, "streamwatch.reconcile", false)?;
    let r = block(ctx, "STREAMWATCH.RECONCILE")?;
    ask(Msg::ReconcileAll { reply: Some(r) })
}

/// `STREAMWATCH.RELOAD`: the supervisor re-reads the config file (`supervisor/reload.rs`).
pub fn reload(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    parse_no_args(&argv(&args))?;
    admin(ctx, "streamwatch.reload", false)?;
    let r = block(ctx, "STREAMWATCH.RELOAD")?;
    ask(Msg::Reload { reply: r })
}

fn role(ctx: &Context) -> &'static str {
    if ctx.get_flags().contains(ContextFlags::MASTER) {
        "primary"
    } else {
        "replica"
    }
}

pub fn status(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    #[cfg(feature = "panic-test")]
    if args.len() == 2 && args[1].as_slice() == b"PANIC" {
        panic!("panic-test: a bug in a command");
    }
    parse_no_args(&argv(&args))?;
    let n = |c| Reply::Int(stats::get(c) as i64);
    let jobs = stats::STATES
        .iter()
        .zip(stats::JOBS_BY_STATE.iter())
        .map(|(s, c)| (s.to_string(), n(c)))
        .collect();
    reply(Reply::Map(vec![
        ("version".into(), Reply::str(env!("CARGO_PKG_VERSION"))),
        ("role".into(), Reply::str(role(ctx))),
        (
            "paused".into(),
            Reply::Bool(stats::PAUSED.load(Ordering::Relaxed)),
        ),
        ("gate".into(), Reply::str(supervisor::gate().name())),
        ("watches".into(), Reply::Int(watch::snapshot().len() as i64)),
        ("jobs".into(), Reply::Map(jobs)),
        ("jobs_over_limit".into(), n(&stats::JOBS_OVER_LIMIT)),
        (
            "counters".into(),
            Reply::Map(vec![
                ("events".into(), n(&stats::EVENTS)),
                ("reconciles".into(), n(&stats::RECONCILES)),
                ("runs_started".into(), n(&stats::RUNS_STARTED)),
                ("exits".into(), n(&stats::EXITS)),
                ("failures".into(), n(&stats::FAILURES)),
                ("events_dropped".into(), n(&stats::EVENTS_DROPPED)),
                ("output_dropped".into(), n(&stats::OUTPUT_DROPPED)),
            ]),
        ),
    ]))
}

/// The `INFO streamwatch` section. The crate's builder API cannot address a module's
/// default section (`# streamwatch`), so the older field API is used.
#[allow(deprecated)]
pub fn info(ctx: &redis_module::InfoContext) {
    let primary = stats::PRIMARY.load(Ordering::Relaxed);
    let _ = ctx.add_info_section(None);
    let _ = ctx.add_info_field_str("role", if primary { "primary" } else { "replica" });
    let _ = ctx.add_info_field_str("gate", supervisor::gate().name());
    let n = |c| stats::get(c) as i64;
    let fields: [(&str, i64); 12] = [
        ("paused", stats::PAUSED.load(Ordering::Relaxed) as i64),
        ("watches", watch::snapshot().len() as i64),
        ("jobs", stats::total_jobs() as i64),
        ("jobs_running", n(&stats::JOBS_BY_STATE[1])),
        ("jobs_over_limit", n(&stats::JOBS_OVER_LIMIT)),
        ("runs_started", n(&stats::RUNS_STARTED)),
        ("exits", n(&stats::EXITS)),
        ("failures", n(&stats::FAILURES)),
        ("events", n(&stats::EVENTS)),
        ("events_dropped", n(&stats::EVENTS_DROPPED)),
        ("output_dropped", n(&stats::OUTPUT_DROPPED)),
        ("memory", crate::ffi::allocated() as i64),
    ];
    for (name, v) in fields {
        let _ = ctx.add_info_field_long_long(name, v);
    }
}
