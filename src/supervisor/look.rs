//! What this node is (primary or not, paused, the slots it owns) and the reads of hash
//! keys that looks are made of, each under short GIL holds: the whole hash (in slices,
//! so a big hash never stalls the server), some named fields, or every watched key of
//! a database (`scan_db`). Each hold checks the role first: a demoted node reads
//! nothing.

use super::gil;
use crate::cluster;
use crate::ffi;
use crate::stats;
use crate::watch::{Snapshot, Watch};
use redis_module::{ContextFlags, DetachedFromClient, ThreadSafeContext};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Fields of a hash read per GIL hold (a bigger hash is read in slices).
const HASH_SLICE: usize = 256;

pub(super) type Tsc = ThreadSafeContext<DetachedFromClient>;

/// What the supervisor knows of this node.
pub(super) struct Node {
    pub primary: bool,
    pub paused: bool,
    /// In cluster mode, the slots this node owns (only their keys have jobs).
    pub owned: Option<cluster::Owned>,
    pub databases: i32,
    /// This node's consumer name in stream watches' groups.
    pub consumer: Vec<u8>,
}

impl Default for Node {
    fn default() -> Node {
        Node {
            primary: false,
            paused: false,
            owned: None,
            databases: 16,
            consumer: b"streamwatch".to_vec(),
        }
    }
}

/// What a look at a key found.
pub(super) enum Observed {
    /// Not a primary: act on nothing, stop everything.
    NotActive,
    /// The dataset is being loaded: leave the key alone; the end of loading brings a
    /// full reconcile.
    Loading,
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Node {
    pub(super) fn set_primary(&mut self, primary: bool) {
        self.primary = primary;
        stats::PRIMARY.store(primary, Ordering::Relaxed);
    }

    /// Reads the role, `databases`, this node's consumer name and the runs' server
    /// address (`address`); returns the server's `dir`.
    pub(super) fn read_server_facts(&mut self, tsc: &Tsc) -> Option<String> {
        let ctx = gil::lock(tsc);
        self.set_primary(ctx.get_flags().contains(ContextFlags::MASTER));
        let config = |name: &str| match ctx.call("CONFIG", &["GET", name]) {
            Ok(redis_module::RedisValue::Array(v)) => match v.get(1) {
                Some(
                    redis_module::RedisValue::SimpleString(s)
                    | redis_module::RedisValue::BulkString(s),
                ) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        if let Some(n) = config("databases").and_then(|s| s.parse().ok()) {
            self.databases = n;
        }
        // One consumer per node, the same across its restarts.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let port = config("port").unwrap_or_default();
        self.consumer = format!("streamwatch@{}:{port}", host.trim()).into_bytes();
        crate::address::refresh(&ctx);
        config("dir")
    }

    /// Under the GIL, before (each slice of) a look: `Err` if there is nothing to read.
    fn check_locked(
        &mut self,
        ctx: &redis_module::Context,
        db: i32,
        key: &[u8],
    ) -> Result<(), Observed> {
        let flags = ctx.get_flags();
        if !flags.contains(ContextFlags::MASTER) {
            self.set_primary(false);
            return Err(Observed::NotActive);
        }
        if flags.contains(ContextFlags::LOADING) {
            return Err(Observed::Loading);
        }
        if let Some(owned) = &self.owned {
            // A key in a slot this node does not own (yet) has no jobs here.
            if !cluster::key_slot(ctx, key).is_some_and(|s| owned.contains(s)) {
                return Err(Observed::Fields(Vec::new()));
            }
        }
        if !ffi::select_db(ctx, db) {
            return Err(Observed::Fields(Vec::new()));
        }
        Ok(())
    }

    /// Reads a key's hash fields; `hold` gains the time the GIL was held.
    pub(super) fn read_hash(
        &mut self,
        tsc: &Tsc,
        db: i32,
        key: &[u8],
        hold: &mut Duration,
    ) -> Observed {
        let mut scan = ffi::HashScan::new();
        let mut fields = Vec::new();
        let mut slices = 0;
        loop {
            let ctx = gil::lock(tsc);
            let step = match self.check_locked(&ctx, db, key) {
                Err(observed) => Err(observed),
                Ok(()) => Ok(scan.step(&ctx, key, HASH_SLICE, &mut fields)),
            };
            *hold += ctx.held();
            drop(ctx);
            slices += 1;
            match step {
                Err(observed) => return observed,
                Ok(None) => {
                    fields.clear(); // not a hash (any more): no fields
                    break;
                }
                Ok(Some(false)) => break,
                Ok(Some(true)) => {}
            }
        }
        if slices > 1 {
            // Read in several holds: a field can come twice (the last value wins).
            let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut unique: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(fields.len());
            for (f, v) in fields {
                match seen.get(&f) {
                    Some(&i) => unique[i].1 = v,
                    None => {
                        seen.insert(f.clone(), unique.len());
                        unique.push((f, v));
                    }
                }
            }
            fields = unique;
        }
        Observed::Fields(fields)
    }

    /// The values of the named fields (`None`: no such field). What the commands wrote
    /// is known for most (HSET, HDEL): then nothing is read and no GIL taken, outside a
    /// cluster (where slot ownership is checked under the GIL). Otherwise they are read
    /// in one short GIL hold, whatever the size of the hash. `Err(None)`: the key is not
    /// a hash (any more), so the whole key must be looked at.
    pub(super) fn read_named(
        &mut self,
        tsc: &Tsc,
        db: i32,
        key: &[u8],
        names: &BTreeMap<Vec<u8>, super::inbox::Known>,
        hold: &mut Duration,
    ) -> Result<Vec<Option<Vec<u8>>>, Option<Observed>> {
        use super::inbox::Known;
        let known = self.owned.is_none() && !names.values().any(|k| matches!(k, Known::Read));
        if known {
            return Ok(names
                .values()
                .map(|k| match k {
                    Known::Value(v) => Some(v.clone()),
                    _ => None,
                })
                .collect());
        }
        let ctx = gil::lock(tsc);
        let values = match self.check_locked(&ctx, db, key) {
            Err(observed) => Err(Some(observed)),
            Ok(()) => {
                ffi::hash_get_fields(&ctx, key, names.keys().map(|f| f.as_slice())).ok_or(None)
            }
        };
        *hold += ctx.held();
        values
    }
}

/// Every key a watch that is not paused covers, in every database (`databases` of
/// them): the literal patterns as they are, the others found by `scan_db`.
pub(super) fn watched_keys(tsc: &Tsc, databases: i32, watches: &Snapshot) -> Vec<(i32, Vec<u8>)> {
    let mut keys = Vec::new();
    for db in 0..databases {
        let watches: Vec<&Watch> = watches
            .iter()
            .filter(|w| w.spec.db.covers(db) && !w.is_paused())
            .map(|w| w.as_ref())
            .collect();
        let (literal, globs): (Vec<&Watch>, Vec<&Watch>) = watches
            .iter()
            .partition(|w| crate::glob::is_literal(&w.spec.pattern));
        keys.extend(literal.iter().map(|w| (db, w.spec.pattern.clone())));
        if !globs.is_empty() {
            let patterns = crate::glob::Set::new(globs.iter().map(|w| (&w.spec.pattern[..], 1)));
            keys.extend(scan_db(tsc, db, &patterns).into_iter().map(|k| (db, k)));
        }
    }
    keys
}

/// Names of the keys in `db` that match `patterns`; the GIL is released every few
/// hundred keys so a large keyspace never stalls the server.
pub(super) fn scan_db(tsc: &Tsc, db: i32, patterns: &crate::glob::Set) -> Vec<Vec<u8>> {
    let cursor = redis_module::KeysCursor::new();
    let mut found = Vec::new();
    loop {
        let ctx = gil::lock(tsc);
        if !ctx.get_flags().contains(ContextFlags::MASTER) || !ffi::select_db(&ctx, db) {
            return found;
        }
        let mut more = true;
        for _ in 0..64 {
            more = cursor.scan(&ctx, &|_ctx, name, _key| {
                let n = name.as_slice();
                if patterns.tags(n) != 0 {
                    found.push(n.to_vec());
                }
            });
            if !more {
                break;
            }
        }
        drop(ctx);
        if !more {
            return found;
        }
    }
}
