//! Watches: bindings of a key pattern to a handler, and their registry.
//!
//! The registry is owned by Redis's main thread: `STREAMWATCH.WATCH`/`UNWATCH` change it
//! and the command filter and keyspace callback read it to decide whether a key is
//! watched: without a lock, one binary search over the literal patterns and a prefix
//! check per other pattern for a key no watch covers. The supervisor thread never
//! touches it; it receives an immutable snapshot over its channel after every change.
//! Command watches are persisted and replicated as data (see `store`); the registry
//! follows that data.

use crate::config::{self, Handler};
use crate::glob;
use crate::store;
use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hash,
    Stream,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::Stream => "stream",
        }
    }
}

/// Options of a stream watch (ignored by hash watches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpts {
    /// The consumer group the module reads through.
    pub group: Vec<u8>,
    /// Runs at once per stream; with 1, entries run in stream order.
    pub concurrency: u32,
    /// Attempts before an entry is dead-lettered.
    pub max_attempts: u32,
    /// The dead-letter stream; `None` means `<key>:dead`.
    pub deadletter: Option<Vec<u8>>,
}

impl Default for StreamOpts {
    fn default() -> Self {
        StreamOpts {
            group: b"streamwatch".to_vec(),
            concurrency: 1,
            max_attempts: 5,
            deadletter: None,
        }
    }
}

impl StreamOpts {
    /// Where an entry of stream `key` goes after its last failed attempt.
    pub fn deadletter_of(&self, key: &[u8]) -> Vec<u8> {
        match &self.deadletter {
            Some(d) => d.clone(),
            None => [key, b":dead"].concat(),
        }
    }

    /// A dead-letter stream is never itself a queue of the watch that feeds it.
    fn is_deadletter(&self, key: &[u8]) -> bool {
        match &self.deadletter {
            Some(d) => d == key,
            None => key.ends_with(b":dead"),
        }
    }
}

/// Which databases a watch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSel {
    One(i32),
    All,
}

impl DbSel {
    pub fn covers(self, db: i32) -> bool {
        match self {
            DbSel::One(d) => d == db,
            DbSel::All => true,
        }
    }
}

/// What a value change does to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    Restart,
    Ignore,
}

impl OnChange {
    pub fn parse(s: &str) -> Option<OnChange> {
        match s.to_ascii_lowercase().as_str() {
            "restart" => Some(OnChange::Restart),
            "ignore" => Some(OnChange::Ignore),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OnChange::Restart => "restart",
            OnChange::Ignore => "ignore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Command,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Command => "command",
        }
    }
}

/// A watch as declared (config file or command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub pattern: Vec<u8>,
    pub handler: String,
    pub kind: Kind,
    pub db: DbSel,
    pub onchange: OnChange,
    pub source: Source,
    pub stream: StreamOpts,
}

/// A live watch. `id` is new for every WATCH (also with REPLACE), so jobs of a replaced
/// watch are told apart from the new watch's.
#[derive(Debug)]
pub struct Watch {
    pub id: u64,
    pub spec: WatchSpec,
    pub handler: Arc<Handler>,
    /// Number of jobs, kept by the supervisor for `STREAMWATCH.WATCHES`.
    pub jobs: AtomicUsize,
    /// Stream watches: counters and gauges kept by the supervisor.
    pub queue: QueueStats,
}

/// What `STREAMWATCH.WATCHES` shows of a stream watch. Counters count since load;
/// `pending` and `lag` are the consumer groups' own figures, summed over the watch's
/// streams (-1: not known yet).
#[derive(Debug, Default)]
pub struct QueueStats {
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub pending: AtomicI64,
    pub lag: AtomicI64,
}

impl Watch {
    pub fn covers(&self, db: i32, key: &[u8]) -> bool {
        self.spec.db.covers(db)
            && glob::matches(&self.spec.pattern, key)
            && !store::is_store(db, key)
            && (self.spec.kind == Kind::Hash
                || !(self.spec.stream.is_deadletter(key) || config::is_events_key(key)))
    }
    pub fn job_count(&self) -> usize {
        self.jobs.load(Ordering::Relaxed)
    }
}

pub type Snapshot = Arc<Vec<Arc<Watch>>>;

struct Registry {
    watches: Snapshot,
    /// The watches' patterns, tagged with their kinds (see `patterns_of`).
    patterns: Arc<glob::Set>,
    next_id: u64,
    /// Recently removed command watches: one that comes back unchanged (the store is
    /// flushed and reloaded by DEBUG RELOAD or a full resync) keeps its identity, so
    /// its jobs are not restarted.
    retired: Vec<Arc<Watch>>,
}

const RETIRED_MAX: usize = 1024;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        watches: Snapshot::default(),
        patterns: Arc::default(),
        next_id: 1,
        retired: Vec::new(),
    })
});

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut g)
}

/// The current watches (cheap: one `Arc` clone).
pub fn snapshot() -> Snapshot {
    with(|r| r.watches.clone())
}

/// Is `key` in `db` covered by any watch? Called for every keyspace event.
pub fn any_covers(db: i32, key: &[u8]) -> bool {
    pattern_tags(key) != 0 && with(|r| r.watches.iter().any(|w| w.covers(db, key)))
}

/// Could a hash watch cover `key` in some database? The command filter's check, before
/// it copies anything (it does not know the database).
pub fn any_hash_watch_may_cover(key: &[u8]) -> bool {
    pattern_tags(key) & HASH != 0
}

/// Tags in `Registry::patterns`.
const HASH: u8 = 1;
const STREAM: u8 = 2;

fn patterns_of(watches: &[Arc<Watch>]) -> glob::Set {
    glob::Set::new(watches.iter().map(|w| {
        let tag = match w.spec.kind {
            Kind::Hash => HASH,
            Kind::Stream => STREAM,
        };
        (&w.spec.pattern[..], tag)
    }))
}

/// Bumped after every change of `Registry::patterns`.
static PATTERNS_VERSION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of `Registry::patterns` and its version: the questions every
    /// command and keyspace event asks take no lock while the watches stay the same.
    static PATTERNS: RefCell<(u64, Arc<glob::Set>)> = RefCell::new((u64::MAX, Arc::default()));
}

/// The kinds of the watches whose pattern `key` matches, as `HASH | STREAM` bits.
fn pattern_tags(key: &[u8]) -> u8 {
    let version = PATTERNS_VERSION.load(Ordering::Acquire);
    PATTERNS.with(|cell| {
        let mut seen = cell.borrow_mut();
        if seen.0 != version {
            *seen = (version, with(|r| r.patterns.clone()));
        }
        seen.1.tags(key)
    })
}

impl Registry {
    /// Makes `list` the watches.
    fn publish(&mut self, list: Vec<Arc<Watch>>) {
        self.patterns = Arc::new(patterns_of(&list));
        self.watches = Arc::new(list);
        PATTERNS_VERSION.fetch_add(1, Ordering::Release);
    }
}

/// Adds a config-file watch at load.
pub fn add_config(spec: WatchSpec) -> Result<Snapshot, String> {
    let handler = handler_of(&spec)?;
    with(|r| {
        if r.watches.iter().any(|w| w.spec.pattern == spec.pattern) {
            return Err(format!(
                "two watches with pattern '{}'",
                String::from_utf8_lossy(&spec.pattern)
            ));
        }
        let mut list: Vec<Arc<Watch>> = r.watches.as_ref().clone();
        list.push(r.new_watch(spec, handler));
        r.publish(list);
        Ok(r.watches.clone())
    })
}

fn handler_of(spec: &WatchSpec) -> Result<Arc<Handler>, String> {
    config::file()
        .handlers
        .get(&spec.handler)
        .cloned()
        .ok_or_else(|| format!("ERR unknown handler '{}' (HANDLER)", spec.handler))
}

impl Registry {
    fn new_watch(&mut self, spec: WatchSpec, handler: Arc<Handler>) -> Arc<Watch> {
        let id = self.next_id;
        self.next_id += 1;
        Arc::new(Watch {
            id,
            spec,
            handler,
            jobs: AtomicUsize::new(0),
            queue: QueueStats::default(),
        })
    }
}

/// The watch with this pattern, if any.
pub fn find(pattern: &[u8]) -> Option<Arc<Watch>> {
    with(|r| {
        r.watches
            .iter()
            .find(|w| w.spec.pattern == pattern)
            .cloned()
    })
}

/// Why a stream watch's dead-letter stream cannot be what it says: the one stream its
/// literal pattern names (that stream would be no queue at all, see `Watch::covers`).
pub fn deadletter_problem(spec: &WatchSpec) -> Option<String> {
    let dl = spec.stream.deadletter.as_ref()?;
    (spec.kind == Kind::Stream && glob::is_literal(&spec.pattern) && *dl == spec.pattern).then(
        || {
            format!(
                "the dead-letter stream '{}' is the stream the watch consumes; give another (DEADLETTER)",
                String::from_utf8_lossy(dl)
            )
        },
    )
}

/// Can `STREAMWATCH.WATCH` add this command watch? (`replace`: may replace one.)
pub fn check_add(spec: &WatchSpec, replace: bool) -> Result<(), String> {
    handler_of(spec)?;
    if let Some(problem) = deadletter_problem(spec) {
        return Err(format!("ERR {problem}"));
    }
    match find(&spec.pattern) {
        Some(w) if w.spec.source == Source::Config => Err(from_config(&spec.pattern)),
        Some(_) if !replace => Err(format!(
            "ERR a watch with pattern '{}' already exists; use REPLACE (pattern)",
            String::from_utf8_lossy(&spec.pattern)
        )),
        _ => Ok(()),
    }
}

/// Can `STREAMWATCH.UNWATCH` remove this watch? Returns it.
pub fn check_remove(pattern: &[u8]) -> Result<Arc<Watch>, String> {
    match find(pattern) {
        None => Err(format!(
            "ERR no watch with pattern '{}' (pattern)",
            String::from_utf8_lossy(pattern)
        )),
        Some(w) if w.spec.source == Source::Config => Err(from_config(pattern)),
        Some(w) => Ok(w),
    }
}

fn from_config(pattern: &[u8]) -> String {
    format!(
        "ERR watch '{}' comes from the config file; change it there (pattern)",
        String::from_utf8_lossy(pattern)
    )
}

/// Makes the command watches exactly `specs` (read from the store), keeping the
/// identity of every watch whose spec is unchanged. Specs that cannot be used (unknown
/// handler, pattern of a config watch) are skipped and returned as problems. Returns
/// the new snapshot when anything changed.
pub fn set_command_watches(specs: Vec<WatchSpec>) -> (Option<Snapshot>, Vec<String>) {
    let mut problems = Vec::new();
    let snapshot = with(|r| {
        let old = r.watches.clone();
        let mut list: Vec<Arc<Watch>> = old
            .iter()
            .filter(|w| w.spec.source == Source::Config)
            .cloned()
            .collect();
        for spec in specs {
            let pattern = String::from_utf8_lossy(&spec.pattern).into_owned();
            if list.iter().any(|w| w.spec.pattern == spec.pattern) {
                problems.push(format!(
                    "stored watch '{pattern}' is ignored: the config file has that pattern"
                ));
                continue;
            }
            if let Some(problem) = deadletter_problem(&spec) {
                problems.push(format!("stored watch '{pattern}' is ignored: {problem}"));
                continue;
            }
            if let Some(same) = old.iter().find(|w| w.spec == spec) {
                list.push(same.clone());
                continue;
            }
            if let Some(pos) = r.retired.iter().position(|w| w.spec == spec) {
                list.push(r.retired.remove(pos));
                continue;
            }
            match handler_of(&spec) {
                Ok(h) => list.push(r.new_watch(spec, h)),
                Err(_) => problems.push(format!(
                    "stored watch '{pattern}' is ignored: unknown handler '{}'",
                    spec.handler
                )),
            }
        }
        let changed =
            list.len() != old.len() || list.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            for w in old.iter() {
                if !list.iter().any(|n| Arc::ptr_eq(n, w)) {
                    r.retired.push(w.clone());
                }
            }
            let excess = r.retired.len().saturating_sub(RETIRED_MAX);
            r.retired.drain(..excess);
            r.publish(list);
            Some(r.watches.clone())
        } else {
            None
        }
    });
    (snapshot, problems)
}
