//! Watches: bindings of a key pattern to a handler, and their registry.
//!
//! The registry is owned by Redis's main thread: `STREAMWATCH.WATCH`/`UNWATCH` change it
//! and the keyspace callback reads it to decide, in O(watches), whether a key is
//! watched. The supervisor thread never touches it; it receives an immutable snapshot
//! over its channel after every change. A watch's spec is plain data so that a later
//! version can persist and replicate it.

use crate::config::{self, Handler};
use crate::glob;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hash,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
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
}

impl Watch {
    pub fn covers(&self, db: i32, key: &[u8]) -> bool {
        self.spec.db.covers(db) && glob::matches(&self.spec.pattern, key)
    }
    pub fn job_count(&self) -> usize {
        self.jobs.load(Ordering::Relaxed)
    }
}

pub type Snapshot = Arc<Vec<Arc<Watch>>>;

struct Registry {
    watches: Snapshot,
    next_id: u64,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        watches: Snapshot::default(),
        next_id: 1,
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
    with(|r| r.watches.iter().any(|w| w.covers(db, key)))
}

/// Adds a watch; with `replace`, an existing command watch of the same pattern goes.
pub fn add(spec: WatchSpec, replace: bool) -> Result<Snapshot, String> {
    let handler = config::file()
        .handlers
        .get(&spec.handler)
        .cloned()
        .ok_or_else(|| format!("ERR unknown handler '{}' (HANDLER)", spec.handler))?;
    with(|r| {
        let mut list: Vec<Arc<Watch>> = r.watches.as_ref().clone();
        if let Some(pos) = list.iter().position(|w| w.spec.pattern == spec.pattern) {
            if list[pos].spec.source == Source::Config && spec.source == Source::Command {
                return Err(format!(
                    "ERR watch '{}' comes from the config file; change it there (pattern)",
                    String::from_utf8_lossy(&spec.pattern)
                ));
            }
            if !replace {
                return Err(format!(
                    "ERR a watch with pattern '{}' already exists; use REPLACE (pattern)",
                    String::from_utf8_lossy(&spec.pattern)
                ));
            }
            list.remove(pos);
        }
        let id = r.next_id;
        r.next_id += 1;
        list.push(Arc::new(Watch {
            id,
            spec,
            handler,
            jobs: AtomicUsize::new(0),
        }));
        r.watches = Arc::new(list);
        Ok(r.watches.clone())
    })
}

/// Removes a command watch by pattern; returns the new list and the removed watch.
pub fn remove(pattern: &[u8]) -> Result<(Snapshot, Arc<Watch>), String> {
    with(|r| {
        let pos = r
            .watches
            .iter()
            .position(|w| w.spec.pattern == pattern)
            .ok_or_else(|| {
                format!(
                    "ERR no watch with pattern '{}' (pattern)",
                    String::from_utf8_lossy(pattern)
                )
            })?;
        if r.watches[pos].spec.source == Source::Config {
            return Err(format!(
                "ERR watch '{}' comes from the config file; change it there (pattern)",
                String::from_utf8_lossy(pattern)
            ));
        }
        let mut list = r.watches.as_ref().clone();
        let removed = list.remove(pos);
        r.watches = Arc::new(list);
        Ok((r.watches.clone(), removed))
    })
}
