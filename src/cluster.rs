//! Redis Cluster: which hash slots this node owns, so that it runs the jobs of exactly
//! those keys.
//!
//! A key's jobs run on the primary that owns the key's slot. While a slot is being
//! resharded, a key already copied to the importing node is not run there until the
//! slot is assigned to it (`CLUSTER SETSLOT ... NODE`), and the migrating node stops a
//! key's jobs when MIGRATE deletes it: there is a short window where neither node runs
//! the key's jobs, never one where both do. Ownership has no server event, so the
//! supervisor polls it (`POLL`) in cluster mode.
//!
//! Everything here is called by the supervisor thread with the GIL held.

use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context, ContextFlags};
use std::time::Duration;

/// How often the supervisor re-reads slot ownership in cluster mode.
pub const POLL: Duration = Duration::from_millis(200);

const SLOTS: usize = 16384;

/// The set of slots this node serves as a primary.
#[derive(Clone, PartialEq, Eq)]
pub struct Owned(Vec<u64>);

impl Owned {
    fn empty() -> Owned {
        Owned(vec![0; SLOTS / 64])
    }
    fn insert(&mut self, slot: usize) {
        if slot < SLOTS {
            self.0[slot / 64] |= 1 << (slot % 64);
        }
    }
    pub fn contains(&self, slot: u16) -> bool {
        let s = slot as usize;
        s < SLOTS && self.0[s / 64] & (1 << (s % 64)) != 0
    }
    pub fn first(&self) -> Option<u16> {
        (0..SLOTS as u16).find(|&s| self.contains(s))
    }
}

pub fn enabled(ctx: &Context) -> bool {
    ctx.get_flags().contains(ContextFlags::CLUSTER)
}

/// The slots this node owns, from `CLUSTER NODES` ("myself" line; slots being imported
/// are not owned yet, slots being migrated away still are).
pub fn owned(ctx: &Context) -> Owned {
    let opts = CallOptionsBuilder::new().build();
    let r: CallResult = ctx.call_ext("CLUSTER", &opts, &[b"NODES".as_slice()]);
    match r {
        Ok(CallReply::String(s)) => parse_nodes(&String::from_utf8_lossy(s.as_bytes())),
        _ => Owned::empty(),
    }
}

fn parse_nodes(text: &str) -> Owned {
    let mut owned = Owned::empty();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(flags) = f.get(2) else { continue };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"myself") || !flags.contains(&"master") {
            continue;
        }
        for range in f.iter().skip(8) {
            if range.starts_with('[') {
                continue; // [slot->-node] migrating, [slot-<-node] importing
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                for s in a..=b.min(SLOTS - 1) {
                    owned.insert(s);
                }
            }
        }
    }
    owned
}

/// The hash slot of `key` (`CLUSTER KEYSLOT`).
pub fn key_slot(ctx: &Context, key: &[u8]) -> Option<u16> {
    let opts = CallOptionsBuilder::new().build();
    let r: CallResult = ctx.call_ext("CLUSTER", &opts, &[b"KEYSLOT".as_slice(), key]);
    match r {
        Ok(CallReply::I64(i)) => u16::try_from(i.to_i64()).ok(),
        _ => None,
    }
}

/// A key name for this node's own copy of `base` (the events stream): `base{tag}` with
/// a hash tag whose slot this node owns, so the key is served by this node.
pub fn own_key(ctx: &Context, base: &str, owned: &Owned) -> Option<String> {
    owned.first()?;
    (0..100_000).find_map(|i| {
        let name = format!("{base}{{sw{i}}}");
        key_slot(ctx, name.as_bytes())
            .filter(|&s| owned.contains(s))
            .map(|_| name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_myself_slots_skipping_imports() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-2 5 [6-<-b2] [7->-b2]
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 8-16383
c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected
";
        let o = parse_nodes(text);
        let got: Vec<u16> = (0..16384).filter(|&s| o.contains(s)).collect();
        assert_eq!(got, vec![0, 1, 2, 5]);
        assert_eq!(o.first(), Some(0));
        let replica = parse_nodes("c3 127.0.0.1:7002@17002 myself,slave a1 0 0 1 connected\n");
        assert_eq!(replica.first(), None);
    }
}
