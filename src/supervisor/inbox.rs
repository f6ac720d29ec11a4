//! Everything the supervisor is told (`Msg`), and the side of it that runs on Redis's
//! main thread: commands send messages; the keyspace callback and the command filter
//! send hints, O(1) per write apart from copying the key name (and the fields and
//! values the command named): a key already hinted and not looked at yet only gains the
//! new fields, so a burst of writes to one key wakes the supervisor once.
//!
//! The supervisor thread takes a key's hint (`take_pending`) just before it looks at
//! the key, so a write after that point always sends a new hint.

use crate::ffi::Replier;
use crate::protocol::Report;
use crate::stats;
use crate::watch::Snapshot;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{LazyLock, Mutex, OnceLock};

/// Filters of `STREAMWATCH.JOBS`.
#[derive(Debug, Default)]
pub struct JobFilter {
    pub watch: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub state: Option<&'static str>,
    pub count: Option<usize>,
}

/// Everything the supervisor is told.
pub enum Msg {
    Dirty {
        db: i32,
        key: Vec<u8>,
    },
    ReconcileAll {
        reply: Option<Replier>,
    },
    Watches(Snapshot),
    Unwatch {
        watches: Snapshot,
        reply: Option<Replier>,
    },
    Jobs {
        filter: JobFilter,
        reply: Replier,
    },
    Pools {
        reply: Replier,
    },
    Job {
        db: i32,
        key: Vec<u8>,
        field: Vec<u8>,
        reply: Replier,
    },
    Restart {
        db: i32,
        key: Vec<u8>,
        field: Vec<u8>,
        reply: Replier,
    },
    /// `STREAMWATCH.WAIT`: `id` is an entry id (checked by the command).
    Wait {
        db: i32,
        key: Vec<u8>,
        id: Vec<u8>,
        timeout: Option<std::time::Duration>,
        reply: Replier,
    },
    /// A client in `STREAMWATCH.WAIT` disconnected (its `Replier::token`).
    WaiterGone {
        token: usize,
    },
    Cancel {
        db: i32,
        key: Vec<u8>,
        id: Vec<u8>,
        reply: Replier,
    },
    /// `STREAMWATCH.RELOAD` (see `reload.rs`).
    Reload {
        reply: Replier,
    },
    Pause,
    Resume,
    /// `STREAMWATCH.PAUSE pattern` / `RESUME pattern` changed that watch's paused state
    /// (`watches`: the registry after it, if it changed).
    WatchPaused {
        pattern: Vec<u8>,
        paused: bool,
        watches: Option<Snapshot>,
    },
    Role {
        primary: bool,
    },
    Report(Report),
    HelperGone,
}

pub(super) static TX: OnceLock<Sender<Msg>> = OnceLock::new();

/// The watches changed (what the store read, if anything changed): the supervisor
/// follows them.
pub fn follow_watches(changed: Option<Snapshot>) {
    if let Some(snapshot) = changed {
        send(Msg::Watches(snapshot));
    }
}

/// Sends a message to the supervisor; false if it is not running.
pub fn send(msg: Msg) -> bool {
    TX.get().is_some_and(|tx| tx.send(msg).is_ok())
}

static QUEUED_HINTS: AtomicUsize = AtomicUsize::new(0);
static OVERFLOWED: AtomicBool = AtomicBool::new(false);
/// Hints beyond this many unprocessed ones are dropped and replaced by one full
/// reconcile, so a stalled supervisor cannot make the server's memory grow.
const MAX_QUEUED_HINTS: usize = 100_000;

/// Hash fields (or field/value pairs), in one buffer: the command filter notes them for
#[derive(Debug, Default)]
pub struct FieldList {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FieldList {
    pub const fn new() -> FieldList {
        FieldList {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, field: &[u8]) {
        self.bytes.extend_from_slice(field);
        self.ends.push(self.bytes.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(a, &b)| &self.bytes[a..b])
    }
}

/// What one command did to the hash fields it names, as the command filter saw it.
#[derive(Debug, Default)]
pub struct Written {
    pub what: Wrote,
    /// The fields; with `Wrote::Values`, each field followed by its new value.
    pub list: FieldList,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// The fields changed to values the command computed (HINCRBY): read them.
    #[default]
    Unknown,
    /// The fields now hold the values in the command (HSET, HMSET, HSETNX: their event
    /// fires only if they wrote).
    Values,
    /// The fields are gone (HDEL).
    Deleted,
}

/// A look at a key is bounded by this many named fields; past it, the whole key.
pub const MAX_LOOK_FIELDS: usize = 1024;

/// What the look at a field will find there, from the commands since the last look.
#[derive(Debug)]
pub(super) enum Known {
    Value(Vec<u8>),
    Gone,
    /// Not known without reading it (under the GIL).
    Read,
}

/// What a hinted key's next look reads: the whole key, or only the fields that the
/// commands since the last look wrote (every hint must name them all, or it is `Key`).
/// When every named field's state is known from the commands themselves, the look
/// reads nothing at all and takes no GIL.
#[derive(Debug)]
pub(super) enum Look {
    Key,
    Fields(BTreeMap<Vec<u8>, Known>),
}

impl Look {
    pub(super) fn of(written: Option<Written>) -> Look {
        let mut look = Look::Fields(BTreeMap::new());
        look.add(written);
        look
    }

    /// A later command's writes: they win over what earlier ones said of a field.
    pub(super) fn add(&mut self, written: Option<Written>) {
        match (&mut *self, written) {
            (Look::Key, _) => {}
            (Look::Fields(_), None) => *self = Look::Key,
            (Look::Fields(map), Some(w)) => {
                let mut put = |f: &[u8], k: Known| match map.get_mut(f) {
                    Some(old) => *old = k,
                    None => {
                        map.insert(f.to_vec(), k);
                    }
                };
                match w.what {
                    Wrote::Values => {
                        let mut it = w.list.iter();
                        while let (Some(f), Some(v)) = (it.next(), it.next()) {
                            put(f, Known::Value(v.to_vec()));
                        }
                    }
                    Wrote::Deleted => w.list.iter().for_each(|f| put(f, Known::Gone)),
                    Wrote::Unknown => w.list.iter().for_each(|f| put(f, Known::Read)),
                }
                if map.len() > MAX_LOOK_FIELDS {
                    *self = Look::Key;
                }
            }
        }
    }
}

/// Keys hinted and not looked at yet: a burst of writes to one key sends one message
/// (and wakes the supervisor once), not one per write. The keyspace callback adds a
/// key (or more fields to it); the supervisor takes it just before it looks at the key
/// (`take_pending`), so a write after that point always sends a new hint.
type Pending = HashMap<i32, HashMap<Vec<u8>, Look>>;
static PENDING: LazyLock<Mutex<Pending>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to read of a key about to be looked at; the whole key if it is not pending
/// (a full reconcile cleared it).
pub(super) fn take_pending(db: i32, key: &[u8]) -> Look {
    pending()
        .get_mut(&db)
        .and_then(|keys| keys.remove(key))
        .unwrap_or(Look::Key)
}

/// Main thread, from the keyspace callback: O(1) apart from copying the key name (and
/// the fields and values the command wrote, when the command filter named them).
pub fn hint(db: i32, key: &[u8], written: Option<Written>) {
    stats::bump(&stats::EVENTS);
    if let Some(look) = pending().get_mut(&db).and_then(|keys| keys.get_mut(key)) {
        look.add(written); // the supervisor has not looked yet: that look will see this
        return;
    }
    if QUEUED_HINTS.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_HINTS {
        QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
        stats::bump(&stats::EVENTS_DROPPED);
        if !OVERFLOWED.swap(true, Ordering::Relaxed) {
            send(Msg::ReconcileAll { reply: None });
        }
        return;
    }
    // Marked before sending, so the supervisor's take always comes after the mark.
    pending()
        .entry(db)
        .or_default()
        .insert(key.to_vec(), Look::of(written));
    if !send(Msg::Dirty {
        db,
        key: key.to_vec(),
    }) {
        take_pending(db, key);
        QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The supervisor took a hint off its channel.
pub(super) fn hint_taken() {
    QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
}

/// A full reconcile is starting: it looks at every key, so the hints not taken yet only
/// repeat it, and hints may be queued again.
pub(super) fn all_taken() {
    OVERFLOWED.store(false, Ordering::Relaxed);
    pending().clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(what: Wrote, items: &[&str]) -> Option<Written> {
        let mut list = FieldList::new();
        items.iter().for_each(|i| list.push(i.as_bytes()));
        Some(Written { what, list })
    }

    #[test]
    fn hints_merge_with_the_last_write_winning() {
        let mut look = Look::of(written(Wrote::Values, &["f", "1", "g", "x"]));
        look.add(written(Wrote::Values, &["f", "2"]));
        look.add(written(Wrote::Deleted, &["f", "g"]));
        look.add(written(Wrote::Values, &["f", "3"]));
        look.add(written(Wrote::Unknown, &["n"]));
        let Look::Fields(map) = &look else {
            panic!("a look at the whole key: {look:?}");
        };
        let seen: Vec<String> = map
            .iter()
            .map(|(f, k)| format!("{}={k:?}", String::from_utf8_lossy(f)))
            .collect();
        assert_eq!(seen, ["f=Value([51])", "g=Gone", "n=Read"]);
        look.add(None); // a write the filter did not name: the whole key
        assert!(matches!(look, Look::Key));
        look.add(written(Wrote::Values, &["f", "4"]));
        assert!(matches!(look, Look::Key), "the whole key stays the look");
        let many: Vec<String> = (0..=MAX_LOOK_FIELDS).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            Look::of(written(Wrote::Deleted, &many)),
            Look::Key
        ));
    }
}
