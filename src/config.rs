//! Configuration: the module configs (`CONFIG GET/SET streamwatch.*`) and the TOML file
//! with handlers and static watches.
//!
//! Handlers exist only in the file the server was started with (read again by the
//! admin command `STREAMWATCH.RELOAD`), so a client that can write keys can never make
//! the server run a program of its choosing. A file that does
//! not parse, names an unknown handler, has an empty `command` or an unknown key is
//! rejected with one message naming the file, the line and the problem. So is an
//! unknown placeholder (`{feild}`, see `template`), and a watch whose handler uses a
//! placeholder its kind of job does not have (`{value}` for a stream watch).

use crate::limits::{self, CgroupFinder, Limits};
use crate::protocol::Rlimit;
use crate::spec::{self, DbSel, Kind, Opt, Options, Source, Syntax, Value, WatchSpec};
use crate::template::{placeholders, Placeholder};
use redis_module::configuration::{ConfigurationContext, ConfigurationValue};
use redis_module::{RedisError, RedisString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;
use toml::Spanned;

mod start_paused;
mod supervision;
pub use start_paused::{StartPaused, START_PAUSED};
use supervision::exit_codes;

// ---- module configs (registered in lib.rs) ----

pub static CONFIG_PATH: StringConfig = StringConfig::new();
pub static EVENTS_KEY: StringConfig = StringConfig::new();
pub static EVENTS_MAXLEN: AtomicI64 = AtomicI64::new(10_000);
pub static MAX_JOBS: AtomicI64 = AtomicI64::new(10_000);
pub static LOG_LINES: AtomicI64 = AtomicI64::new(100);
/// How many outcomes each stream keeps, and how long after its last one (`outcomes.rs`).
pub static OUTCOMES_MAX: AtomicI64 = AtomicI64::new(10_000);
pub static OUTCOMES_TTL_MS: AtomicI64 = AtomicI64::new(86_400_000);
/// At most this many hash jobs restart at once after a RELOAD (0: all at once).
pub static RELOAD_BATCH: AtomicI64 = AtomicI64::new(0);

/// A string module config. The crate's own `Mutex<String>` config hands its value to
/// Redis through a C string, which panics (and so aborts the server) on a NUL byte that
/// `CONFIG SET` accepted; this one refuses such a value at `CONFIG SET` and never
/// builds a C string.
pub struct StringConfig(Mutex<String>);

impl StringConfig {
    pub const fn new() -> StringConfig {
        StringConfig(Mutex::new(String::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConfigurationValue<RedisString> for StringConfig {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create_from_slice(std::ptr::null_mut(), self.lock().as_bytes())
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        *self.lock() = checked_config_value(val.as_slice())?.to_string();
        Ok(())
    }
}

/// A string config's new value, if it can be one: UTF-8 without NUL bytes.
fn checked_config_value(bytes: &[u8]) -> Result<&str, RedisError> {
    if bytes.contains(&0) {
        return Err(RedisError::Str("the value contains a NUL byte"));
    }
    std::str::from_utf8(bytes).map_err(|_| RedisError::Str("the value is not UTF-8"))
}

/// The current value of a string module config.
pub fn get(cell: &StringConfig) -> String {
    cell.lock().clone()
}

/// Is `key` the events stream (or, in cluster mode, a node's copy `events-key{swN}`)?
/// Stream watches never treat it as a queue.
pub fn is_events_key(key: &[u8]) -> bool {
    let base = EVENTS_KEY.lock();
    let base = base.as_bytes();
    !base.is_empty()
        && key.starts_with(base)
        && (key.len() == base.len() || key[base.len()..].starts_with(b"{sw"))
}

pub fn events_maxlen() -> i64 {
    EVENTS_MAXLEN.load(Ordering::Relaxed)
}

pub fn max_jobs() -> usize {
    MAX_JOBS.load(Ordering::Relaxed).max(0) as usize
}

pub fn default_log_lines() -> usize {
    LOG_LINES.load(Ordering::Relaxed).max(0) as usize
}

// ---- the TOML file ----

/// The parsed file: read at load, replaced by `STREAMWATCH.RELOAD` (see
/// `supervisor/reload.rs`), which swaps it under the GIL together with the watches
/// that use its handlers.
static FILE: LazyLock<RwLock<Arc<Config>>> = LazyLock::new(RwLock::default);

/// The config file as last read (one `Arc` clone).
pub fn file() -> Arc<Config> {
    FILE.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Makes `config` the file's contents (at load, and by RELOAD).
pub fn set_file(config: Config) {
    *FILE.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
}

#[derive(Debug, Default)]
pub struct Config {
    pub handlers: BTreeMap<String, Arc<Handler>>,
    pub watches: Vec<WatchSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn name(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }
}

/// A named recipe for what a job runs. Two are equal when every option is: RELOAD
/// restarts the jobs of a handler that is not equal to its old self.
#[derive(Debug, PartialEq)]
pub struct Handler {
    pub name: String,
    /// The program (resolved when it was relative to the config file) and arguments.
    pub command: Vec<String>,
    /// The program as the file wrote it, when `command[0]` is its resolution
    /// (`./worker.py`): spawn errors name both.
    pub program_as_written: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub restart: Restart,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub max_failures: u32,
    pub stop_signal: i32,
    pub stop_signal_name: String,
    pub stop_grace: Duration,
    pub timeout: Duration,
    pub log_lines: Option<usize>,
    /// Stream watches only: this many long-lived workers, fed one entry at a time (0:
    /// a process per entry). See `supervisor/pools.rs`.
    pub pool: u32,
    /// A pool worker is recycled after this many entries (0: never).
    pub max_requests: u64,
    /// A run that writes nothing this long is hung: stopped, and a failure (0: never).
    pub heartbeat: Duration,
    /// A run exiting with one of these ends its hash job `failed` (0: `exited`) without
    /// a restart, and its stream entry without a retry (dead-lettered).
    pub no_restart_exit_codes: Vec<u8>,
    /// `nice`, `oom-score-adj`, `limit-*`, `memory-max`, `cpu-max` (see `limits`).
    pub limits: Limits,
}

/// The most workers a pool may have.
pub const MAX_POOL: u32 = 1024;

impl Handler {
    /// Delay before the restart that follows `failures` consecutive failed runs.
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }

    pub fn log_lines(&self) -> usize {
        self.log_lines.unwrap_or_else(default_log_lines)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    handler: BTreeMap<String, HandlerToml>,
    #[serde(default)]
    watch: Vec<Spanned<WatchToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HandlerToml {
    command: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    cwd: Option<String>,
    #[serde(default = "always")]
    restart: Restart,
    #[serde(default = "ms250")]
    backoff_initial_ms: u64,
    #[serde(default = "ms30000")]
    backoff_max_ms: u64,
    #[serde(default = "ms10000")]
    stable_after_ms: u64,
    #[serde(default)]
    max_failures: u32,
    #[serde(default = "term")]
    stop_signal: Spanned<String>,
    #[serde(default = "ms5000")]
    stop_grace_ms: u64,
    #[serde(default)]
    timeout_ms: u64,
    log_lines: Option<usize>,
    pool: Option<Spanned<u32>>,
    #[serde(default)]
    max_requests: u64,
    #[serde(default)]
    heartbeat_ms: u64,
    no_restart_exit_codes: Option<Spanned<Vec<i64>>>,
    /// Lets a placeholder choose the program (see `program_placeholder`).
    #[serde(default)]
    allow_program_placeholder: bool,
    nice: Option<Spanned<i64>>,
    oom_score_adj: Option<Spanned<i64>>,
    limit_as: Option<Spanned<DbToml>>,
    limit_nofile: Option<Spanned<DbToml>>,
    limit_cpu: Option<Spanned<DbToml>>,
    limit_nproc: Option<Spanned<DbToml>>,
    limit_core: Option<Spanned<DbToml>>,
    memory_max: Option<Spanned<DbToml>>,
    cpu_max: Option<Spanned<DbToml>>,
}

impl HandlerToml {
    /// Its limit options, for `limits::check`.
    fn limits(&self) -> limits::Raw<'_> {
        let int = |v: &Option<Spanned<i64>>| v.as_ref().map(|v| (*v.get_ref(), v.span().start));
        fn value(v: &Spanned<DbToml>) -> (limits::Value<'_>, usize) {
            let value = match v.get_ref() {
                DbToml::Num(n) => limits::Value::Num(*n),
                DbToml::Word(s) => limits::Value::Text(s),
            };
            (value, v.span().start)
        }
        let rlimits = [
            (Rlimit::As, &self.limit_as),
            (Rlimit::Nofile, &self.limit_nofile),
            (Rlimit::Cpu, &self.limit_cpu),
            (Rlimit::Nproc, &self.limit_nproc),
            (Rlimit::Core, &self.limit_core),
        ];
        limits::Raw {
            nice: int(&self.nice),
            oom_score_adj: int(&self.oom_score_adj),
            rlimits: rlimits
                .into_iter()
                .filter_map(|(r, v)| v.as_ref().map(value).map(|(v, at)| (r, v, at)))
                .collect(),
            memory_max: self.memory_max.as_ref().map(value),
            cpu_max: self.cpu_max.as_ref().map(value),
        }
    }
}

fn always() -> Restart {
    Restart::Always
}
fn ms250() -> u64 {
    250
}
fn ms30000() -> u64 {
    30_000
}
fn ms10000() -> u64 {
    10_000
}
fn ms5000() -> u64 {
    5_000
}
fn term() -> Spanned<String> {
    Spanned::new(0..0, "TERM".to_string())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DbToml {
    Num(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WatchToml {
    pattern: String,
    handler: Spanned<String>,
    #[serde(rename = "type", default)]
    kind: Option<Spanned<String>>,
    db: Option<Spanned<DbToml>>,
    onchange: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    max_attempts: Option<Spanned<i64>>,
    deadletter: Option<Spanned<String>>,
    start: Option<Spanned<DbToml>>,
    ack: Option<Spanned<String>>,
}

/// Signal names accepted by `stop-signal` (with or without `SIG`), or a number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        other => other.parse().ok().filter(|n| (1..=64).contains(n))?,
    };
    Some(n)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses the file's text; the error names the file, the line and the problem.
/// `memory-max` and `cpu-max` are checked against this machine (`limits::cgroup_parent`).
pub fn parse(path: &str, text: &str) -> Result<Config, String> {
    parse_with(path, text, &limits::cgroup_parent)
}

/// `parse`, with `cgroups` saying where runs' cgroups can be made, or why not.
pub fn parse_with(path: &str, text: &str, cgroups: CgroupFinder) -> Result<Config, String> {
    let at = |offset: usize, msg: String| format!("{path}: line {}: {msg}", line_of(text, offset));
    let raw: FileToml = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        format!(
            "{path}: line {line}: {}",
            e.message().trim().replace('\n', " ")
        )
    })?;

    let base = std::path::Path::new(path)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let resolve = |p: &str| base.join(p).to_string_lossy().into_owned();
    let mut handlers = BTreeMap::new();
    for (name, h) in raw.handler {
        let limits = limits::check(&h.limits(), cgroups)
            .map_err(|(offset, e)| at(offset, format!("handler '{name}' has {e}")))?;
        let span = h.command.span();
        let args = h.command.into_inner();
        let env_values = h.env.iter().map(|(k, v)| (format!("env ({k})"), v));
        let templates = (args.iter().enumerate())
            .map(|(i, a)| (format!("command (argument {i})"), a))
            .chain(env_values);
        for (place, t) in templates {
            if let Some(p) = placeholders(t.get_ref())
                .into_iter()
                .find(|p| matches!(p, Placeholder::Unknown(_)))
            {
                return Err(at(
                    t.span().start,
                    format!(
                        "handler '{name}' has an unknown placeholder {} in its {place}; the \
                         placeholders are {{key}} {{db}}, for hash jobs {{field}} {{value}}, \
                         for stream jobs {{id}} {{field:NAME}}",
                        p.text()
                    ),
                ));
            }
        }
        let mut command: Vec<String> = args.into_iter().map(Spanned::into_inner).collect();
        if command.is_empty() || command[0].is_empty() {
            return Err(at(
                span.start,
                format!("handler '{name}' has an empty command"),
            ));
        }
        if let Some(p) = program_placeholder(&command[0]).filter(|_| !h.allow_program_placeholder) {
            return Err(at(
                span.start,
                format!(
                    "handler '{name}' has the placeholder {p} in its program (the command's \
                     first element), so whoever writes the key would choose what runs; set \
                     allow-program-placeholder = true if that is meant"
                ),
            ));
        }
        // Relative paths are relative to the config file, not to the server's --dir.
        // (`./w.py` becomes `<dir>/w.py`; the error of a run that cannot start names both.)
        let relative = match command[0].strip_prefix("./") {
            Some(rest) => Some(resolve(rest)),
            None => command[0].starts_with("../").then(|| resolve(&command[0])),
        };
        let program_as_written = relative.map(|r| std::mem::replace(&mut command[0], r));
        let cwd = h
            .cwd
            .map(|c| if c.starts_with('/') { c } else { resolve(&c) });
        let pool_span = h.pool.as_ref().map_or(span.clone(), |p| p.span());
        let pool = h.pool.map_or(0, Spanned::into_inner);
        if pool > MAX_POOL {
            return Err(at(
                pool_span.start,
                format!("handler '{name}' has pool = {pool}; at most {MAX_POOL}"),
            ));
        }
        if pool == 0 && h.max_requests > 0 {
            return Err(at(
                span.start,
                format!("handler '{name}' has max-requests but no pool (pool = N)"),
            ));
        }
        if pool > 0 {
            let args = command.iter().chain(h.env.values().map(Spanned::get_ref));
            if let Some(p) = args.filter_map(|a| first_placeholder(a)).next() {
                return Err(at(
                    span.start,
                    format!(
                        "handler '{name}' is a pool (pool = {pool}) but uses the placeholder \
                         {p}: a pool worker serves many entries, each given on its stdin"
                    ),
                ));
            }
        }
        let no_restart =
            exit_codes(&name, pool, h.no_restart_exit_codes).map_err(|(o, e)| at(o, e))?;
        let sig_span = h.stop_signal.span();
        let stop_signal = parse_signal(h.stop_signal.get_ref()).ok_or_else(|| {
            at(
                sig_span.start,
                format!(
                    "handler '{name}' has an unknown stop-signal '{}'",
                    h.stop_signal.get_ref()
                ),
            )
        })?;
        handlers.insert(
            name.clone(),
            Arc::new(Handler {
                name,
                command,
                program_as_written,
                env: h
                    .env
                    .into_iter()
                    .map(|(k, v)| (k, v.into_inner()))
                    .collect(),
                cwd,
                restart: h.restart,
                backoff_initial: Duration::from_millis(h.backoff_initial_ms),
                backoff_max: Duration::from_millis(h.backoff_max_ms.max(h.backoff_initial_ms)),
                stable_after: Duration::from_millis(h.stable_after_ms),
                max_failures: h.max_failures,
                stop_signal,
                stop_signal_name: h.stop_signal.into_inner(),
                stop_grace: Duration::from_millis(h.stop_grace_ms),
                timeout: Duration::from_millis(h.timeout_ms),
                log_lines: h.log_lines,
                pool,
                max_requests: h.max_requests,
                heartbeat: Duration::from_millis(h.heartbeat_ms),
                no_restart_exit_codes: no_restart,
                limits,
            }),
        );
    }

    let mut watches = Vec::new();
    for w in raw.watch {
        let wspan = w.span();
        let w = w.into_inner();
        let hspan = w.handler.span();
        let handler = w.handler.into_inner();
        if !handlers.contains_key(&handler) {
            return Err(at(
                hspan.start,
                format!("watch '{}' names an unknown handler '{handler}'", w.pattern),
            ));
        }
        if let Some(problem) = spec::pattern_problem(Syntax::File, w.pattern.as_bytes()) {
            return Err(at(wspan.start, problem.into()));
        }
        // The table's options for the shared parser, each with where it is.
        fn string(v: &Spanned<String>) -> (Value<'_>, usize) {
            (Value::Text(v.get_ref().as_bytes()), v.span().start)
        }
        fn int(v: &Spanned<i64>) -> (Value<'_>, usize) {
            (Value::Int(*v.get_ref()), v.span().start)
        }
        // A number or a word (`db`: a number or "all"; `start`: 0, "$" or an id).
        fn num_or_word(d: &Spanned<DbToml>) -> (Value<'_>, usize) {
            match d.get_ref() {
                DbToml::Num(n) => (Value::Int(*n), d.span().start),
                DbToml::Word(s) => (Value::Text(s.as_bytes()), d.span().start),
            }
        }
        let db = w.db.as_ref().map(num_or_word);
        let mut o = Options::new(Syntax::File);
        let set = |o: &mut Options, opt: Opt, v: Option<(Value, usize)>| match v {
            Some((value, offset)) => o.set(opt, value).map_err(|e| at(offset, e)),
            None => Ok(()),
        };
        let handler_value = (Value::Text(handler.as_bytes()), hspan.start);
        set(&mut o, Opt::Handler, Some(handler_value))?;
        set(&mut o, Opt::Type, w.kind.as_ref().map(string))?;
        set(&mut o, Opt::Db, db)?;
        set(&mut o, Opt::OnChange, w.onchange.as_ref().map(string))?;
        // A stream-only option on a hash watch is named before any value is checked.
        let stream_opts = [
            (Opt::Group, w.group.as_ref().map(string)),
            (Opt::Concurrency, w.concurrency.as_ref().map(int)),
            (Opt::MaxAttempts, w.max_attempts.as_ref().map(int)),
            (Opt::Deadletter, w.deadletter.as_ref().map(string)),
            (Opt::Start, w.start.as_ref().map(num_or_word)),
            (Opt::Ack, w.ack.as_ref().map(string)),
        ];
        for (opt, v) in &stream_opts {
            if let Some((_, offset)) = v {
                o.applies(*opt).map_err(|e| at(*offset, e))?;
            }
        }
        let [group, concurrency, max_attempts, deadletter, start, ack] =
            stream_opts.map(|(_, v)| v);
        set(&mut o, Opt::Group, group)?;
        set(&mut o, Opt::Start, start)?;
        set(&mut o, Opt::Ack, ack)?;
        set(&mut o, Opt::Deadletter, deadletter)?;
        set(&mut o, Opt::Concurrency, concurrency)?;
        set(&mut o, Opt::MaxAttempts, max_attempts)?;
        let parsed = o.finish().map_err(|e| at(wspan.start, e))?;
        if watches
            .iter()
            .any(|x: &WatchSpec| x.pattern == w.pattern.as_bytes())
        {
            return Err(at(
                wspan.start,
                format!("watch pattern '{}' appears twice", w.pattern),
            ));
        }
        let spec = parsed.into_spec(w.pattern.into_bytes(), Source::Config, DbSel::One(0));
        if let Some(problem) = handler_problem(&spec, &handlers[&handler]) {
            return Err(at(hspan.start, problem));
        }
        if let Some(problem) = spec::deadletter_problem(&spec) {
            let offset = w
                .deadletter
                .as_ref()
                .map_or(wspan.start, |d| d.span().start);
            return Err(at(offset, problem));
        }
        if let Some(other) = watches.iter().find(|x| spec::same_group(&spec, x)) {
            let offset = w.group.as_ref().map_or(wspan.start, |g| g.span().start);
            return Err(at(offset, spec::same_group_problem(&spec, other)));
        }
        watches.push(spec);
    }
    Ok(Config { handlers, watches })
}

/// Why a watch cannot use handler `h`: a pool serves stream watches only
/// (`pool_problem`), and a handler's placeholders must be ones its jobs have
/// (`placeholder_problem`). Checked for every watch, from the file, a command or
/// the store.
pub fn handler_problem(spec: &WatchSpec, h: &Handler) -> Option<String> {
    pool_problem(spec, h).or_else(|| placeholder_problem(spec, h))
}

/// Why a watch cannot use handler `h`: a pool serves stream watches only.
pub fn pool_problem(spec: &WatchSpec, h: &Handler) -> Option<String> {
    (h.pool > 0 && spec.kind != Kind::Stream).then(|| {
        format!(
            "handler '{}' is a pool (pool = {}), which serves stream watches only: give the watch TYPE stream",
            h.name, h.pool
        )
    })
}

/// Why a watch cannot use handler `h`: it uses a placeholder of the other kind of
/// job (`{field}`, `{value}`: hash jobs; `{id}`, `{field:NAME}`: stream jobs).
pub fn placeholder_problem(spec: &WatchSpec, h: &Handler) -> Option<String> {
    let templates = h.command.iter().chain(h.env.iter().map(|(_, v)| v));
    let wrong = templates.flat_map(|t| placeholders(t)).find(|p| {
        matches!(
            (p, spec.kind),
            (Placeholder::Hash(_), Kind::Stream) | (Placeholder::Stream(_), Kind::Hash)
        )
    })?;
    let (has, other) = match spec.kind {
        Kind::Hash => ("stream", "hash"),
        Kind::Stream => ("hash", "stream"),
    };
    Some(format!(
        "handler '{}' uses the placeholder {}, which only {has} jobs have, so {other} watch \
         '{}' cannot use it",
        h.name,
        wrong.text(),
        String::from_utf8_lossy(&spec.pattern)
    ))
}

/// The first placeholder in a program name (`{value}`, `{field:url}`, ...), if any.
fn program_placeholder(program: &str) -> Option<&str> {
    first_placeholder(program)
}

/// The first placeholder in an argument (`{value}`, `{field:url}`, ...), if any.
fn first_placeholder(arg: &str) -> Option<&str> {
    placeholders(arg)
        .into_iter()
        .find(|p| !matches!(p, Placeholder::Unknown(_)))
        .map(Placeholder::text)
}

/// Reads and parses the file named by the `config` module config (none: empty config).
pub fn load(path: &str) -> Result<Config, String> {
    if path.is_empty() {
        return Ok(Config::default());
    }
    let text = read_text(path).map_err(|e| format!("{path}: line 0: {e}"))?;
    parse(path, &text)
}

/// The longest config file read: far more than any set of handlers needs, and a bound
/// on what a file replaced by mistake (a log, a disk image) costs to read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The file's text, if it is a regular file of at most `MAX_FILE_BYTES`. Opened without
/// blocking and checked before it is read, so a FIFO, a device (`/dev/zero`) or a
/// directory put at the path is refused at once instead of blocking the reader (the
/// supervisor thread, for `STREAMWATCH.RELOAD`) forever or filling the memory.
fn read_text(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_big = || format!("larger than {} MiB", MAX_FILE_BYTES >> 20);
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big()); // it grew while read
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
