//! Which watches are paused (`STREAMWATCH.PAUSE pattern`): a plain hash next to the
//! store, `streamwatch:paused` in db 0 (in cluster mode `streamwatch:paused{swN}`, with
//! the hash tag of the shard's store, so in the same slot). One field per paused watch:
//! the field is the pattern, the value `1` (only the fields are read).
//!
//! It holds config-file watches as well as command watches, which is why it is a key of
//! its own and not a part of the store's values: being data, a pause is saved (RDB,
//! AOF, `DEBUG RELOAD`) and replicated like the watches, so a promoted replica keeps it.
//! It is followed exactly like the store (`store::reload` reads both, the keyspace
//! callback re-reads on a change to either, so do the end of a load, a flush and
//! SWAPDB). A field whose pattern no watch has changes nothing; `UNWATCH` removes its
//! watch's field, and a `WATCH` that makes a new watch removes one left for its pattern.
//!
//! Like the store, it runs on Redis's main thread; in cluster mode a primary's registry
//! is the truth and `ensure` keeps the key beside the store.

use super::{in_store_db, read, MAX_FIELDS, WRITING};
use crate::ffi;
use crate::watch::{self, Snapshot};
use redis_module::{CallOptionsBuilder, CallResult, Context};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// The key (outside a cluster), in `store::DB`.
pub const KEY: &[u8] = b"streamwatch:paused";

/// The paused key that goes with the store key `store`: the same hash tag, if any.
pub fn name_for(store: &[u8]) -> Vec<u8> {
    let tag = store.strip_prefix(super::KEY).unwrap_or_default();
    [KEY, tag].concat()
}

/// The paused key's name on this node (`None`: in a cluster, the shard serves no slot).
pub fn name(ctx: &Context) -> Option<Vec<u8>> {
    super::name(ctx).map(|store| name_for(&store))
}

/// Reads the paused patterns that go with the store key `store` into the registry.
/// Returns the watches if one was paused or resumed by it.
pub(super) fn reload(ctx: &Context, store: &[u8]) -> Option<Snapshot> {
    let patterns: BTreeSet<Vec<u8>> = read(ctx, &name_for(store))?
        .into_iter()
        .map(|(pattern, _)| pattern)
        .collect();
    watch::set_paused(patterns)
}

/// Pauses (adds the pattern) or resumes (removes it) one watch; the write is replicated
/// and persisted like any other, and refused as a script's write would be (a replica,
/// `min-replicas-to-write` not met, a failed save). Then re-reads the store and the
/// paused patterns into the registry and returns the watches if they changed; telling
/// the supervisor is the caller's part.
pub fn write(ctx: &Context, pattern: &[u8], paused: bool) -> Result<Option<Snapshot>, String> {
    let store = super::name(ctx).ok_or_else(|| {
        "ERR this node's shard serves no hash slot, so it has nowhere to keep paused watches"
            .to_string()
    })?;
    let key = name_for(&store);
    if in_store_db(ctx, || ffi::hash_len(ctx, &key)).is_some_and(|n| n > MAX_FIELDS) {
        return Err(format!(
            "ERR the paused watches key '{}' has more than {MAX_FIELDS} fields, so it is not \
             read: DEL it (every watch resumes) or remove the fields that are not patterns",
            String::from_utf8_lossy(&key)
        ));
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .script_mode()
        .build();
    WRITING.store(true, Ordering::SeqCst);
    let result: CallResult = in_store_db(ctx, || {
        if paused {
            ctx.call_ext("HSET", &opts, &[key.as_slice(), pattern, b"1"])
        } else {
            ctx.call_ext("HDEL", &opts, &[key.as_slice(), pattern])
        }
    });
    WRITING.store(false, Ordering::SeqCst);
    let snapshot = super::reload(ctx);
    result.map(|_| snapshot).map_err(|e| {
        format!(
            "ERR cannot write the paused watches key '{}': {}",
            String::from_utf8_lossy(&key),
            e.to_utf8_string().unwrap_or_default()
        )
    })
}

/// Cluster primary, from `store::ensure`: the paused key beside the store key `store`
/// holds exactly the registry's paused patterns; the one beside the store's previous
/// name `last` (a reshard moved it) is removed.
pub(super) fn ensure(ctx: &Context, store: &[u8], last: &[u8]) {
    let key = name_for(store);
    let wanted = watch::paused_patterns();
    let have: Option<Vec<Vec<u8>>> = read(ctx, &key).map(|entries| {
        let mut have: Vec<Vec<u8>> = entries.into_iter().map(|(p, _)| p).collect();
        have.sort();
        have
    });
    let opts = CallOptionsBuilder::new().replicate().build();
    in_store_db(ctx, || {
        if !last.is_empty() && last != store {
            let _: CallResult = ctx.call_ext("DEL", &opts, &[name_for(last).as_slice()]);
        }
        if have.as_ref() != Some(&wanted) {
            let _: CallResult = ctx.call_ext("DEL", &opts, &[key.as_slice()]);
            if !wanted.is_empty() {
                let mut args: Vec<&[u8]> = vec![&key];
                for p in &wanted {
                    args.push(p);
                    args.push(b"1");
                }
                let _: CallResult = ctx.call_ext("HSET", &opts, args.as_slice());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_beside_the_store() {
        assert_eq!(name_for(b"streamwatch:watches"), KEY);
        assert_eq!(
            name_for(b"streamwatch:watches{sw12}"),
            b"streamwatch:paused{sw12}"
        );
        for key in [
            &b"streamwatch:paused"[..],
            b"streamwatch:paused{sw3}",
            b"streamwatch:watches",
            b"streamwatch:watches{sw0}",
        ] {
            assert!(super::super::is_store(0, key), "{key:?}");
            assert!(!super::super::is_store(1, key), "{key:?}");
        }
        for key in [&b"streamwatch:pausedx"[..], b"streamwatch:paused{", b"x"] {
            assert!(!super::super::is_store(0, key), "{key:?}");
        }
    }
}
