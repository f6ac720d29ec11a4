//! Callbacks Redis calls on its main thread: keyspace events and server events.
//!
//! Each does O(1) work (plus one pattern check per watch) and never blocks: it notes
//! what changed and wakes the supervisor thread, which does the real work. An event
//! never names the field; the supervisor re-reads the key (level-triggered).

use crate::ffi;
use crate::store;
use crate::supervisor::{self, Msg};
use crate::watch;
use redis_module::server_events::{FlushSubevent, LoadingSubevent, ServerRole};
use redis_module::{Context, NotifyEvent};
use redis_module_macros::{flush_event_handler, loading_event_handler, role_changed_event_handler};

/// Any change to any key: HSET, HDEL, DEL, EXPIRE firing, eviction, RENAME/MOVE/COPY/
/// RESTORE (both sides), SET over the key, hash field expiry, and the same inside
/// MULTI/EXEC or scripts.
pub fn on_keyspace(ctx: &Context, _class: NotifyEvent, _event: &str, key: &[u8]) {
    ffi::callback("keyspace event", || {
        let db = ffi::selected_db(ctx);
        if store::is_store(db, key) {
            store::on_change(ctx);
        } else if watch::any_covers(db, key) {
            supervisor::hint(db, key);
        }
    });
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
        if sub == LoadingSubevent::Ended {
            store::sync(ctx);
            supervisor::send(Msg::ReconcileAll { reply: None });
        }
    });
}

/// FLUSHDB/FLUSHALL fire no per-key events.
#[flush_event_handler]
fn on_flush(ctx: &Context, sub: FlushSubevent) {
    ffi::callback("flush event", || {
        if sub == FlushSubevent::Ended {
            store::on_flush(ctx);
            supervisor::send(Msg::ReconcileAll { reply: None });
        }
    });
}

/// SWAPDB fires no per-key events either (subscribed through `ffi`).
pub fn on_swapdb(ctx: &Context) {
    store::on_flush(ctx);
    supervisor::send(Msg::ReconcileAll { reply: None });
}
