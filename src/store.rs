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
//! In cluster mode one key would live in one node's slot, so each shard keeps its own
//! store, `streamwatch:watches{swN}` in one of its slots (its replicas compute the same
//! name and follow it). `STREAMWATCH.WATCH` is sent to every primary. A primary's
//! registry is the truth there: the supervisor rewrites the store when a reshard
//! carries the key away or the shard's slots change (`ensure`).
//!
//! Next to the store, `paused` keeps the patterns of the paused watches
//! (`STREAMWATCH.PAUSE pattern`) the same way, and is followed with it.
//!
//! Everything here runs on Redis's main thread. A key with thousands of watches would
//! make the re-read O(watches); watches are few by design.

use crate::cluster;
use crate::ffi;
use crate::spec::{self, Ack, DbSel, Kind, Opt, Options, Source, Syntax, Value, WatchSpec};
use crate::watch::{self, Snapshot};
use redis_module::key::KeyFlags;
use redis_module::{CallOptionsBuilder, CallResult, Context, ContextFlags, KeyType, ScanKeyCursor};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub mod paused;

/// The key, and the database it lives in.
pub const KEY: &[u8] = b"streamwatch:watches";
pub const DB: i32 = 0;

/// Is this a store, or the paused watches' key next to one (never treated as a watched
/// key; a change to either means a re-read)? In cluster mode each shard has its own,
/// `streamwatch:watches{swN}` and `streamwatch:paused{swN}`.
pub fn is_store(db: i32, key: &[u8]) -> bool {
    let named = |base: &[u8]| {
        key.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || (rest.starts_with(b"{") && rest.ends_with(b"}")))
    };
    db == DB && (named(KEY) || named(paused::KEY))
}

/// The store's name on this node: `streamwatch:watches`, or in cluster mode this
/// shard's own key, in one of the shard's slots (`None`: the shard serves no slot).
pub fn name(ctx: &Context) -> Option<Vec<u8>> {
    if !cluster::enabled(ctx) {
        return Some(KEY.to_vec());
    }
    let base = String::from_utf8_lossy(KEY);
    cluster::own_key(ctx, &base, &cluster::shard(ctx)).map(String::into_bytes)
}

/// Does the registry follow the store? Everywhere except on a cluster primary, whose
/// registry is the truth and whose store the supervisor keeps in an owned slot (a
/// reshard can carry the key away; see `ensure`).
fn follows_store(ctx: &Context) -> bool {
    !cluster::enabled(ctx) || !ctx.get_flags().contains(ContextFlags::MASTER)
}

/// The name last written by `ensure`, to remove it when the store moves.
static LAST_NAME: Mutex<Vec<u8>> = Mutex::new(Vec::new());

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    #[serde(
        default,
        rename = "max-attempts",
        skip_serializing_if = "Option::is_none"
    )]
    max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadletter: Option<String>,
    /// Written only when not the default `0` (a store without it stays readable by a
    /// module that predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    /// Written only when not the default `keep`, like `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<String>,
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
        group: None,
        concurrency: None,
        max_attempts: None,
        deadletter: None,
        start: None,
        ack: None,
    };
    let stored = match spec.kind {
        Kind::Hash => stored,
        Kind::Stream => {
            let o = &spec.stream;
            Stored {
                group: Some(String::from_utf8_lossy(&o.group).into_owned()),
                concurrency: Some(o.concurrency),
                max_attempts: Some(o.max_attempts),
                deadletter: o
                    .deadletter
                    .as_ref()
                    .map(|d| String::from_utf8_lossy(d).into_owned()),
                start: (o.start != b"0").then(|| String::from_utf8_lossy(&o.start).into_owned()),
                ack: (o.ack != Ack::Keep).then(|| o.ack.name().to_string()),
                ..stored
            }
        }
    };
    toml::to_string(&stored).unwrap_or_default()
}

fn decode(pattern: &[u8], value: &[u8]) -> Result<WatchSpec, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let s: Stored = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let db = match &s.db {
        StoredDb::One(d) => Value::Int(*d),
        StoredDb::All(a) => Value::Text(a.as_bytes()),
    };
    fn string(v: &String) -> Value<'_> {
        Value::Text(v.as_bytes())
    }
    let int = |n: u32| Value::Int(n.into());
    let mut o = Options::new(Syntax::Stored);
    for (opt, value) in [
        (Opt::Handler, Some(string(&s.handler))),
        (Opt::Type, Some(string(&s.kind))),
        (Opt::Db, Some(db)),
        (Opt::OnChange, Some(string(&s.onchange))),
        (Opt::Group, s.group.as_ref().map(string)),
        (Opt::Concurrency, s.concurrency.map(int)),
        (Opt::MaxAttempts, s.max_attempts.map(int)),
        (Opt::Deadletter, s.deadletter.as_ref().map(string)),
        (Opt::Start, s.start.as_ref().map(string)),
        (Opt::Ack, s.ack.as_ref().map(string)),
    ] {
        if let Some(value) = value {
            o.set(opt, value)?;
        }
    }
    let parsed = o.finish()?;
    if let Some(problem) = spec::pattern_problem(Syntax::Stored, pattern) {
        return Err(problem.into());
    }
    Ok(parsed.into_spec(pattern.to_vec(), Source::Command, DbSel::One(DB)))
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
    let key = name(ctx).ok_or_else(|| {
        "ERR this node's shard serves no hash slot, so it has nowhere to keep watches".to_string()
    })?;
    WRITING.store(true, Ordering::SeqCst);
    let result: CallResult = in_store_db(ctx, || match spec {
        Some(spec) => {
            let value = encode(spec);
            ctx.call_ext("HSET", &opts, &[&key, pattern, value.as_bytes()])
        }
        None => ctx.call_ext("HDEL", &opts, &[&key, pattern]),
    });
    WRITING.store(false, Ordering::SeqCst);
    let snapshot = reload(ctx);
    result.map(|_| snapshot).map_err(|e| {
        format!(
            "ERR cannot write the watches key '{}': {}",
            String::from_utf8_lossy(&key),
            e.to_utf8_string().unwrap_or_default()
        )
    })
}

/// The keyspace callback saw a change to the store (a replicated write, a user's own
/// HSET, DEL, RENAME, expiry...). Returns the new watches if they changed.
#[must_use = "the supervisor must be sent a changed snapshot"]
pub fn on_change(ctx: &Context) -> Option<Snapshot> {
    if !WRITING.load(Ordering::SeqCst) && follows_store(ctx) {
        sync(ctx)
    } else {
        None
    }
}

/// After a flush or SWAPDB: the store may be gone with the data. Returns the new
/// watches if they changed.
#[must_use = "the supervisor must be sent a changed snapshot"]
pub fn on_flush(ctx: &Context) -> Option<Snapshot> {
    if follows_store(ctx) {
        sync(ctx)
    } else {
        None
    }
}

/// Re-reads the store and makes the registry's command watches match it. Returns the
/// new watches if they changed; telling the supervisor is the caller's part.
#[must_use = "the supervisor must be sent a changed snapshot"]
pub fn sync(ctx: &Context) -> Option<Snapshot> {
    reload(ctx)
}

/// The most fields the store (or the paused key) is read with. Watches are few; a
/// client that may write the key could otherwise make every write to it a read of
/// millions of fields on the main thread.
pub(super) const MAX_FIELDS: usize = 10_000;
/// A longer value (a watch's options are a short TOML table) is read as empty, so it
/// is ignored as a watch that does not decode, without being copied.
const MAX_VALUE: usize = 64 * 1024;

/// The entries of the store key `name` (a key of another type has none); `None`, with
/// a log line, when it has more than `MAX_FIELDS` fields: the registry then stays as
/// it was.
fn read(ctx: &Context, name: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    in_store_db(ctx, || {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let n = ffi::hash_len(ctx, name).unwrap_or(0);
        if n > MAX_FIELDS {
            ffi::log_warning(format!(
                "streamwatch: '{}' has {n} fields, more than {MAX_FIELDS}: not read, the \
                 watches stay as they were",
                String::from_utf8_lossy(name)
            ));
            return None;
        }
        let name = ffi::string(ctx, name);
        let key = ctx.open_key_with_flags(&name, KeyFlags::NOTOUCH);
        if key.key_type() == KeyType::Hash {
            ScanKeyCursor::new(key).for_each(|_, f, v| {
                let v = v.as_slice();
                let v = if v.len() > MAX_VALUE { &[][..] } else { v };
                entries.push((f.as_slice().to_vec(), v.to_vec()));
            });
        }
        Some(entries)
    })
}

/// Cluster primary, called by the supervisor (GIL held) after slot ownership is read:
/// makes this shard's store hold exactly the registry's command watches, under the
/// name for the slots owned now. A reshard that carried the key away, or a new first
/// slot, ends here with the key rewritten (and the old name removed).
pub fn ensure(ctx: &Context) {
    if follows_store(ctx) {
        return;
    }
    let Some(key) = name(ctx) else { return };
    let mut wanted: Vec<(Vec<u8>, Vec<u8>)> = watch::snapshot()
        .iter()
        .filter(|w| w.spec.source == Source::Command)
        .map(|w| (w.spec.pattern.clone(), encode(&w.spec).into_bytes()))
        .collect();
    wanted.sort();
    let mut have = read(ctx, &key);
    if let Some(have) = have.as_mut() {
        have.sort();
    }
    let mut last = LAST_NAME.lock().unwrap_or_else(|p| p.into_inner());
    let opts = CallOptionsBuilder::new().replicate().build();
    in_store_db(ctx, || {
        if !last.is_empty() && *last != key {
            let _: CallResult = ctx.call_ext("DEL", &opts, &[last.as_slice()]);
        }
        if have.as_ref() != Some(&wanted) {
            let _: CallResult = ctx.call_ext("DEL", &opts, &[key.as_slice()]);
            if !wanted.is_empty() {
                let mut args: Vec<&[u8]> = vec![&key];
                for (p, v) in &wanted {
                    args.push(p);
                    args.push(v);
                }
                let _: CallResult = ctx.call_ext("HSET", &opts, args.as_slice());
            }
        }
    });
    paused::ensure(ctx, &key, &last);
    *last = key;
}

fn reload(ctx: &Context) -> Option<Snapshot> {
    let Some(key) = name(ctx) else {
        let resumed = watch::set_paused(Default::default());
        return watch::set_command_watches(Vec::new()).0.or(resumed);
    };
    // First the paused patterns, so that a watch the store adds starts out paused.
    let marked = paused::reload(ctx, &key);
    let Some(entries) = read(ctx, &key) else {
        return marked;
    };
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
        ffi::log_warning(format!("streamwatch: {p}"));
    }
    snapshot.or(marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{OnChange, StreamOpts};

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
                stream: StreamOpts::default(),
            };
            let text = encode(&spec);
            assert_eq!(decode(&spec.pattern, text.as_bytes()), Ok(spec));
        }
        let spec = WatchSpec {
            pattern: b"jobs:*".to_vec(),
            handler: "h".into(),
            kind: Kind::Stream,
            db: DbSel::One(0),
            onchange: OnChange::Restart,
            source: Source::Command,
            stream: StreamOpts {
                group: b"g".to_vec(),
                concurrency: 4,
                max_attempts: 2,
                deadletter: Some(b"failed".to_vec()),
                start: b"$".to_vec(),
                ack: Ack::Delete,
            },
        };
        let text = encode(&spec);
        assert!(text.contains("start = \"$\""), "{text}");
        assert!(text.contains("ack = \"delete\""), "{text}");
        assert_eq!(decode(&spec.pattern, text.as_bytes()), Ok(spec.clone()));
        // The default start is not written.
        let spec = WatchSpec {
            stream: StreamOpts::default(),
            ..spec
        };
        let text = encode(&spec);
        assert!(
            !text.contains("start =") && !text.contains("ack ="),
            "{text}"
        );
        assert_eq!(decode(&spec.pattern, text.as_bytes()), Ok(spec));
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
