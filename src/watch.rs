//! Watches: bindings of a key pattern to a handler, and their registry.
//!
//! The registry is owned by Redis's main thread: `STREAMWATCH.WATCH`/`UNWATCH` change it
//! and the command filter and keyspace callback read it to decide whether a key is
//! watched: without a lock, one binary search over the literal patterns and a prefix
//! check per other pattern for a key no watch covers. The supervisor thread never
//! touches it; it receives an immutable snapshot over its channel after every change.
//! Command watches are persisted and replicated as data (see `store`); the registry
//! follows that data.
//!
//! So does each watch's paused state (`STREAMWATCH.PAUSE pattern`): the patterns of the
//! paused watches are data too (`store::paused`), config watches included; the registry
//! keeps the set it last read and marks each watch by its pattern (`Watch::is_paused`).
//! The mark lives in the watch itself, not in a copy: the supervisor, whose snapshot
//! may be a message behind, sees a pause at once and starts nothing for a paused watch.

use crate::config::{self, Handler};
use crate::glob;
use crate::spec::{deadletter_problem, same_group, same_group_problem, Kind, Source, WatchSpec};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// A live watch. `id` is new for every WATCH (also with REPLACE), so jobs of a replaced
/// watch are told apart from the new watch's.
#[derive(Debug)]
pub struct Watch {
    pub id: u64,
    pub spec: WatchSpec,
    /// `spec.pattern`, parsed once: `covers` runs on the main thread for every write
    /// to a key the pattern index says may be watched.
    glob: glob::Glob,
    pub handler: Arc<Handler>,
    /// Number of jobs, kept by the supervisor for `STREAMWATCH.WATCHES`. Shared with
    /// the same watch given a new handler by RELOAD (`reload.rs`).
    pub jobs: Arc<AtomicUsize>,
    /// Stream watches: counters and gauges kept by the supervisor (shared likewise).
    pub queue: Arc<QueueStats>,
    /// Paused by `STREAMWATCH.PAUSE pattern`: set by the registry only (on the main
    /// thread), from the paused patterns it last read.
    paused: AtomicBool,
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

/// Keys no watch covers, whatever its pattern: the watches store (`store`), for a
/// stream watch the events stream (`config`) and dead-letter streams, and for a hash
/// watch the streams' outcomes (`outcomes`). The registry knows neither; the module's
/// load hands it the two checks once (`set_reserved`), plain functions, so `covers`
/// stays a few comparisons on the main thread's path of every write.
#[derive(Debug, Clone, Copy)]
pub struct Reserved {
    /// Is this key, in this database, the watches store?
    pub store: fn(i32, &[u8]) -> bool,
    /// Is this key the events stream?
    pub events: fn(&[u8]) -> bool,
}

mod reload;
pub use reload::reload;

static RESERVED: OnceLock<Reserved> = OnceLock::new();

/// Sets the reserved keys' checks (at load; later calls change nothing).
pub fn set_reserved(reserved: Reserved) {
    let _ = RESERVED.set(reserved);
}

fn reserved() -> Reserved {
    fn none(_: &[u8]) -> bool {
        false
    }
    fn none_in(_: i32, _: &[u8]) -> bool {
        false
    }
    RESERVED.get().copied().unwrap_or(Reserved {
        store: none_in,
        events: none,
    })
}

impl Watch {
    pub fn covers(&self, db: i32, key: &[u8]) -> bool {
        let reserved = reserved();
        self.spec.db.covers(db)
            && self.glob.matches(key)
            && !(reserved.store)(db, key)
            && match self.spec.kind {
                Kind::Hash => !crate::outcomes::is_outcomes_key(key),
                Kind::Stream => !(self.spec.stream.is_deadletter(key) || (reserved.events)(key)),
            }
    }
    pub fn job_count(&self) -> usize {
        self.jobs.load(Ordering::Relaxed)
    }
    /// Is this watch paused (`STREAMWATCH.PAUSE pattern`)? Its jobs are stopped and
    /// changes to its keys ignored until it is resumed.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
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
    /// The paused patterns as last read (see `set_paused`); patterns no watch has are
    /// kept and mean nothing until such a watch exists.
    paused: BTreeSet<Vec<u8>>,
}

const RETIRED_MAX: usize = 1024;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        watches: Snapshot::default(),
        patterns: Arc::default(),
        next_id: 1,
        retired: Vec::new(),
        paused: BTreeSet::new(),
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

/// Is `key` in `db` covered by any watch that is not paused? Called for every keyspace
/// event (a paused watch ignores changes; its resume looks at every key again).
pub fn any_covers(db: i32, key: &[u8]) -> bool {
    pattern_tags(key) != 0
        && with(|r| {
            r.watches
                .iter()
                .any(|w| w.covers(db, key) && !w.is_paused())
        })
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
    /// Marks each watch of `list` paused or not, by its pattern; true if any changed.
    fn mark_paused(&self, list: &[Arc<Watch>]) -> bool {
        let mut changed = false;
        for w in list {
            let paused = self.paused.contains(&w.spec.pattern);
            changed |= w.paused.swap(paused, Ordering::SeqCst) != paused;
        }
        changed
    }

    /// Makes `list` the watches.
    fn publish(&mut self, list: Vec<Arc<Watch>>) {
        self.mark_paused(&list);
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
        if let Some(w) = r.watches.iter().find(|w| same_group(&spec, &w.spec)) {
            return Err(same_group_problem(&spec, &w.spec));
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
            glob: glob::Glob::new(&spec.pattern),
            spec,
            handler,
            jobs: Arc::default(),
            queue: Arc::default(),
            paused: AtomicBool::new(false),
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

/// Can `STREAMWATCH.WATCH` add this command watch? (`replace`: may replace one.)
pub fn check_add(spec: &WatchSpec, replace: bool) -> Result<(), String> {
    let h = handler_of(spec)?;
    if let Some(problem) = config::handler_problem(spec, &h) {
        return Err(format!("ERR {problem} (HANDLER)"));
    }
    if let Some(problem) = deadletter_problem(spec) {
        return Err(format!("ERR {problem}"));
    }
    match find(&spec.pattern) {
        Some(w) if w.spec.source == Source::Config => return Err(from_config(&spec.pattern)),
        Some(_) if !replace => {
            return Err(format!(
                "ERR a watch with pattern '{}' already exists; use REPLACE (pattern)",
                String::from_utf8_lossy(&spec.pattern)
            ))
        }
        _ => {}
    }
    // The watch it replaces (same pattern) is no rival.
    let rival = snapshot()
        .iter()
        .find(|w| w.spec.pattern != spec.pattern && same_group(spec, &w.spec))
        .cloned();
    match rival {
        Some(w) => Err(format!("ERR {} (GROUP)", same_group_problem(spec, &w.spec))),
        None => Ok(()),
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
            let rival = list.iter().find(|w| same_group(&spec, &w.spec));
            if let Some(w) = rival.filter(|_| !old.iter().any(|w| w.spec == spec)) {
                // Kept (it is the data, and replicas follow it), but a stream both
                // cover is run by one of them only (see the supervisor). Said once,
                // when it comes.
                problems.push(format!(
                    "stored {}; a stream both cover runs under one of them only",
                    same_group_problem(&spec, &w.spec)
                ));
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
                Ok(h) => match config::handler_problem(&spec, &h) {
                    Some(problem) => {
                        problems.push(format!("stored watch '{pattern}' is ignored: {problem}"))
                    }
                    None => list.push(r.new_watch(spec, h)),
                },
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

/// Makes the paused patterns exactly `patterns` (read from the store) and marks the
/// watches by them. Returns the snapshot when a watch was paused or resumed by it.
pub fn set_paused(patterns: BTreeSet<Vec<u8>>) -> Option<Snapshot> {
    with(|r| {
        if r.paused == patterns {
            return None;
        }
        r.paused = patterns;
        let watches = r.watches.clone();
        r.mark_paused(&watches).then_some(watches)
    })
}

/// Is the pattern paused (as last read; a pattern no watch has may be)?
pub fn is_paused(pattern: &[u8]) -> bool {
    with(|r| r.paused.contains(pattern))
}

/// The paused patterns as last read, sorted.
pub fn paused_patterns() -> Vec<Vec<u8>> {
    with(|r| r.paused.iter().cloned().collect())
}
