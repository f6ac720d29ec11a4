//! Callbacks Redis calls on its main thread: keyspace events and server events.
//!
//! Each does O(1) work and never blocks: it asks the watches' pattern index whether a
//! key could be watched (`watch::any_covers`, no lock), notes what changed and wakes
//! the supervisor thread, which does the real work.
//!
//! A keyspace event names the key, never the field. For the commands that write hash
//! fields by name (HSET, HMSET, HSETNX, HDEL, HINCRBY, HINCRBYFLOAT) on a watched key,
//! a command filter notes the fields (and the values HSET writes) just before the
//! command runs, and the event that command fires hands them on: the supervisor then
//! knows what changed without reading the hash (HSET, HDEL), or reads just those fields
//! (HINCRBY). Any other event (DEL, RENAME, EXPIRE, a command inside MULTI/EXEC, ...)
//! makes it re-read the whole key: it stays level-triggered.

use crate::address;
use crate::ffi::{self, CommandArgs, EventName};
use crate::store;
use crate::supervisor::{self, FieldList, Msg, Written, Wrote, MAX_LOOK_FIELDS};
use crate::watch;
use redis_module::server_events::{FlushSubevent, LoadingSubevent, ServerRole};
use redis_module::{Context, NotifyEvent};
use redis_module_macros::{
    config_changed_event_handler, flush_event_handler, loading_event_handler,
    role_changed_event_handler,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Any change to any key: HSET, HDEL, DEL, EXPIRE firing, eviction, RENAME/MOVE/COPY/
/// RESTORE (both sides), SET over the key, hash field expiry, and the same inside
/// MULTI/EXEC or scripts.
/// (Subscribed through `ffi`, which runs it under the panic guard.)
pub fn on_keyspace(ctx: &Context, event: EventName, key: &[u8]) {
    let db = ffi::selected_db(ctx);
    if store::is_store(db, key) {
        supervisor::follow_watches(store::on_change(ctx));
    } else if watch::any_covers(db, key) {
        // While an AOF loads, commands skip the filter: any note is not theirs.
        let noted = take_noted(event, key).filter(|_| !LOADING.load(Ordering::Relaxed));
        supervisor::hint(db, key, noted);
    }
}

/// The events `on_keyspace` is subscribed to: every class of change to a key.
pub const KEYSPACE_EVENTS: NotifyEvent = NotifyEvent::GENERIC
    .union(NotifyEvent::STRING)
    .union(NotifyEvent::LIST)
    .union(NotifyEvent::SET)
    .union(NotifyEvent::HASH)
    .union(NotifyEvent::ZSET)
    .union(NotifyEvent::EXPIRED)
    .union(NotifyEvent::EVICTED)
    .union(NotifyEvent::STREAM)
    .union(NotifyEvent::MODULE);

/// The fields the command now running writes, as the command filter saw them, until
/// that command's event takes them. Only touched by whoever holds the GIL.
struct Noted {
    /// The event the command fires ("hset" for HSET, HMSET and HSETNX).
    event: &'static str,
    key: Vec<u8>,
    written: Written,
}

static NOTED: Mutex<Noted> = Mutex::new(Noted {
    event: "",
    key: Vec::new(),
    written: Written {
        what: Wrote::Unknown,
        list: FieldList::new(),
    },
});
/// Between the start and the end of a load (see `on_loading`).
static LOADING: AtomicBool = AtomicBool::new(false);
/// Values bigger than this (all of one command's together) are read back instead of
/// being copied on the main thread.
const MAX_NOTED_BYTES: usize = 64 * 1024;
/// Whether `NOTED` holds anything: most commands need not lock it.
static IS_NOTED: AtomicBool = AtomicBool::new(false);

fn noted() -> MutexGuard<'static, Noted> {
    NOTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hash commands whose fields are named by their arguments: the event each fires,
/// where its fields are (`first`, then every `step`-th argument up to the end), and
/// what it leaves in them.
fn hash_writer(name: &[u8], argc: usize) -> Option<(&'static str, usize, usize, Wrote)> {
    if !name.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'h')) {
        return None;
    }
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let pairs = argc >= 4 && argc.is_multiple_of(2);
    if ((is("HSET") || is("HMSET")) && pairs) || (is("HSETNX") && argc == 4) {
        Some(("hset", 2, 2, Wrote::Values))
    } else if is("HDEL") && argc >= 3 {
        Some(("hdel", 2, 1, Wrote::Deleted))
    } else if is("HINCRBY") && argc == 4 {
        Some(("hincrby", 2, 2, Wrote::Unknown))
    } else if is("HINCRBYFLOAT") && argc == 4 {
        Some(("hincrbyfloat", 2, 2, Wrote::Unknown))
    } else {
        None
    }
}

/// The command filter: before every command, note the fields a write to a watched hash
/// names (or forget the last note). O(arguments), no I/O; for a key no watch could
/// cover, one look-up in the watches' pattern index and nothing copied.
pub fn on_command(args: &CommandArgs) {
    let argc = args.len();
    let writer = hash_writer(args.get(0), argc)
        .filter(|&(_, first, step, _)| (argc - first).div_ceil(step) <= MAX_LOOK_FIELDS)
        .filter(|_| watch::any_hash_watch_may_cover(args.get(1)));
    let Some((event, first, step, what)) = writer else {
        if IS_NOTED.load(Ordering::Relaxed) {
            IS_NOTED.store(false, Ordering::Relaxed);
            noted().event = "";
        }
        return;
    };
    let mut n = noted();
    n.event = event;
    n.key.clear();
    n.key.extend_from_slice(args.get(1));
    let w = &mut n.written;
    w.list.clear();
    w.what = what;
    if what == Wrote::Values {
        let size: usize = (first + 1..argc)
            .step_by(2)
            .map(|i| args.get(i).len())
            .sum();
        if size <= MAX_NOTED_BYTES {
            (first..argc).for_each(|i| w.list.push(args.get(i)));
        } else {
            w.what = Wrote::Unknown;
        }
    }
    if w.what != Wrote::Values {
        (first..argc)
            .step_by(step)
            .for_each(|i| w.list.push(args.get(i)));
    }
    IS_NOTED.store(true, Ordering::Relaxed);
}

/// What the noted command wrote, if this event is the one it fires on the noted key
/// (taken, so a second event of the same command, such as the `del` after an HDEL that
/// empties the hash, means a look at the whole key).
fn take_noted(event: EventName, key: &[u8]) -> Option<Written> {
    if !IS_NOTED.load(Ordering::Relaxed) {
        return None;
    }
    let mut n = noted();
    if !event.is(n.event) || n.key != key {
        return None;
    }
    n.event = "";
    IS_NOTED.store(false, Ordering::Relaxed);
    Some(std::mem::take(&mut n.written))
}

#[role_changed_event_handler]
fn on_role_changed(_ctx: &Context, role: ServerRole) {
    ffi::callback("role change", || {
        supervisor::send(Msg::Role {
            primary: role == ServerRole::Primary,
        });
    });
}

/// RDB loading fires no per-key events, so the end of any load means a full look.
#[loading_event_handler]
fn on_loading(ctx: &Context, sub: LoadingSubevent) {
    ffi::callback("loading event", || {
        let ended = matches!(sub, LoadingSubevent::Ended | LoadingSubevent::Failed);
        LOADING.store(!ended, Ordering::Relaxed);
        if sub == LoadingSubevent::Ended {
            supervisor::follow_watches(store::sync(ctx));
            supervisor::send(Msg::ReconcileAll { reply: None });
        }
    });
}

/// FLUSHDB/FLUSHALL fire no per-key events.
#[flush_event_handler]
fn on_flush(ctx: &Context, sub: FlushSubevent) {
    ffi::callback("flush event", || {
        if sub == FlushSubevent::Ended {
            supervisor::follow_watches(store::on_flush(ctx));
            supervisor::send(Msg::ReconcileAll { reply: None });
        }
    });
}

/// `CONFIG SET` of a listener (`port`, `bind`, ...): runs started from now on get the
/// new `STREAMWATCH_REDIS_URL`. A few `CONFIG GET`s, no I/O.
#[config_changed_event_handler]
fn on_config_changed(ctx: &Context, names: &[&str]) {
    ffi::callback("config change event", || {
        let listener = |n: &&str| address::CONFIGS.iter().any(|c| c.eq_ignore_ascii_case(n));
        if names.iter().any(listener) {
            address::refresh(ctx);
        }
    });
}

/// SWAPDB fires no per-key events either (subscribed through `ffi`).
pub fn on_swapdb(ctx: &Context) {
    supervisor::follow_watches(store::on_flush(ctx));
    supervisor::send(Msg::ReconcileAll { reply: None });
}
