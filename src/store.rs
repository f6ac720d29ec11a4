//! Where command-made watches live: a plain Redis hash, `streamwatch:watches` in db 0.
//!
//! One field per watch: the field is the pattern, the value the watch's options as a
//! TOML table (the same keys as a `[[watch]]` table in the config file). Because the
//! store is ordinary data, Redis itself persists it (RDB, AOF with or without the RDB
//! preamble, `DEBUG RELOAD`) and replicates it (the commands' writes are propagated;
//! a full resync carries the key), and an RDB written with the module loads on a server
//! without it. The registry in `watch` follows the store: it is re-read when the key
//! changes (on a replica too, so `STREAMWATCH.WATCHES` agrees with the primary), when
//! loading ends, after a flush and after SWAPDB.
//!
//! In cluster mode there is no store (one key would live in one node's slot) and
//! watches come from the config file only.
//!
//! Everything here runs on Redis's main thread. A key with thousands of watches would
//! make the re-read O(watches); watches are few by design.

use crate::ffi;
use crate::supervisor::{self, Msg};
use crate::watch::{self, DbSel, Kind, OnChange, Snapshot, Source, WatchSpec};
use redis_module::key::KeyFlags;
use redis_module::{CallOptionsBuilder, CallResult, Context, ContextFlags, KeyType, ScanKeyCursor};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// The key, and the database it lives in.
pub const KEY: &[u8] = b"streamwatch:watches";
pub const DB: i32 = 0;

/// Is this the store itself (never treated as a watched hash)?
pub fn is_store(db: i32, key: &[u8]) -> bool {
    db == DB && key == KEY
}

/// A single key lives in one slot, owned by one node: a cluster has no place for it.
const IN_CLUSTER: &str = "ERR STREAMWATCH.WATCH and UNWATCH are not available in cluster mode: \
declare watches in the config file, the same file on every node";

/// Set while a command writes the store, so the keyspace callback leaves the re-read to
/// the command (which needs the result in order).
static WRITING: AtomicBool = AtomicBool::new(false);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    handler: String,
    #[serde(rename = "type")]
    kind: String,
    db: StoredDb,
    onchange: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredDb {
    One(i64),
    All(String),
}

fn encode(spec: &WatchSpec) -> String {
    let stored = Stored {
        handler: spec.handler.clone(),
        kind: spec.kind.name().to_string(),
        db: match spec.db {
            DbSel::One(d) => StoredDb::One(d.into()),
            DbSel::All => StoredDb::All("all".into()),
        },
        onchange: spec.onchange.name().to_string(),
    };
    toml::to_string(&stored).unwrap_or_default()
}

fn decode(pattern: &[u8], value: &[u8]) -> Result<WatchSpec, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let s: Stored = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let kind = match s.kind.as_str() {
        "hash" => Kind::Hash,
        other => return Err(format!("unsupported type '{other}'")),
    };
    let db = match s.db {
        StoredDb::One(d) => DbSel::One(i32::try_from(d).map_err(|_| format!("bad db {d}"))?),
        StoredDb::All(a) if a == "all" => DbSel::All,
        StoredDb::All(a) => return Err(format!("bad db '{a}'")),
    };
    let onchange =
        OnChange::parse(&s.onchange).ok_or_else(|| format!("bad onchange '{}'", s.onchange))?;
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    Ok(WatchSpec {
        pattern: pattern.to_vec(),
        handler: s.handler,
        kind,
        db,
        onchange,
        source: Source::Command,
    })
}

/// Runs `f` with db 0 selected on `ctx`, then selects the caller's database again.
fn in_store_db<R>(ctx: &Context, f: impl FnOnce() -> R) -> R {
    let before = ffi::selected_db(ctx);
    if before != DB {
        ffi::select_db(ctx, DB);
    }
    let r = f();
    if before != DB {
        ffi::select_db(ctx, before);
    }
    r
}

/// Writes (or, with `None`, deletes) one watch; the write is replicated and persisted
/// like any other. Then re-reads the store into the registry and returns the new
/// watches if they changed; telling the supervisor is the caller's part.
pub fn write(
    ctx: &Context,
    pattern: &[u8],
    spec: Option<&WatchSpec>,
) -> Result<Option<Snapshot>, String> {
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build();
    if ctx.get_flags().contains(ContextFlags::CLUSTER) {
        return Err(IN_CLUSTER.to_string());
    }
    WRITING.store(true, Ordering::SeqCst);
    let result: CallResult = in_store_db(ctx, || match spec {
        Some(spec) => {
            let value = encode(spec);
            ctx.call_ext("HSET", &opts, &[KEY, pattern, value.as_bytes()])
        }
        None => ctx.call_ext("HDEL", &opts, &[KEY, pattern]),
    });
    WRITING.store(false, Ordering::SeqCst);
    let snapshot = reload(ctx);
    result.map(|_| snapshot).map_err(|e| {
        format!(
            "ERR cannot write the watches key '{}': {}",
            String::from_utf8_lossy(KEY),
            e.to_utf8_string().unwrap_or_default()
        )
    })
}

/// The keyspace callback saw a change to the store (a replicated write, a user's own
/// HSET, DEL, RENAME, expiry...).
pub fn on_change(ctx: &Context) {
    if !WRITING.load(Ordering::SeqCst) {
        sync(ctx);
    }
}

/// Re-reads the store and makes the registry's command watches match it; tells the
/// supervisor when anything changed.
pub fn sync(ctx: &Context) {
    if let Some(snapshot) = reload(ctx) {
        supervisor::send(Msg::Watches(snapshot));
    }
}

fn reload(ctx: &Context) -> Option<Snapshot> {
    if ctx.get_flags().contains(ContextFlags::CLUSTER) {
        return None;
    }
    let entries = in_store_db(ctx, || {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let name = ctx.create_string(KEY);
        let key = ctx.open_key_with_flags(&name, KeyFlags::NOTOUCH);
        if key.key_type() == KeyType::Hash {
            ScanKeyCursor::new(key).for_each(|_, f, v| {
                entries.push((f.as_slice().to_vec(), v.as_slice().to_vec()));
            });
        }
        entries
    });
    let mut specs = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
    for (pattern, value) in entries {
        match decode(&pattern, &value) {
            Ok(spec) => specs.push(spec),
            Err(e) => problems.push(format!(
                "stored watch '{}' is ignored: {e}",
                String::from_utf8_lossy(&pattern)
            )),
        }
    }
    specs.sort_by(|a, b| a.pattern.cmp(&b.pattern));
    let (snapshot, more) = watch::set_command_watches(specs);
    for p in problems.iter().chain(more.iter()) {
        ctx.log_warning(&format!("streamwatch: {p}"));
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (db, onchange) in [
            (DbSel::One(3), OnChange::Restart),
            (DbSel::All, OnChange::Ignore),
        ] {
            let spec = WatchSpec {
                pattern: b"cams:\xff*".to_vec(),
                handler: "a \"quoted\" name".into(),
                kind: Kind::Hash,
                db,
                onchange,
                source: Source::Command,
            };
            let text = encode(&spec);
            assert_eq!(decode(&spec.pattern, text.as_bytes()), Ok(spec));
        }
    }

    #[test]
    fn bad_values_are_named() {
        assert!(decode(b"p", b"handler = 1").is_err());
        let e = decode(
            b"p",
            b"handler = \"w\"\ntype = \"list\"\ndb = 0\nonchange = \"restart\"",
        );
        assert_eq!(e, Err("unsupported type 'list'".into()));
        assert!(decode(b"p", b"\xff").is_err());
    }
}
