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
    fn remove(&mut self, slot: usize) {
        if slot < SLOTS {
            self.0[slot / 64] &= !(1 << (slot % 64));
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
    parse_nodes(&nodes(ctx), false)
}

/// The slots of this node's shard: its own as a primary, its primary's as a replica,
/// less any slot being migrated away. A primary and its replicas agree on it, and a
/// promoted replica inherits it.
pub fn shard(ctx: &Context) -> Owned {
    parse_nodes(&nodes(ctx), true)
}

fn nodes(ctx: &Context) -> String {
    let opts = CallOptionsBuilder::new().build();
    let r: CallResult = ctx.call_ext("CLUSTER", &opts, &[b"NODES".as_slice()]);
    match r {
        Ok(CallReply::String(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => String::new(),
    }
}

fn parse_nodes(text: &str, shard: bool) -> Owned {
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let flags = |f: &Vec<&str>| -> Vec<String> {
        f.get(2)
            .map(|x| x.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let Some(me) = lines
        .iter()
        .find(|f| flags(f).iter().any(|x| x == "myself"))
    else {
        return Owned::empty();
    };
    let line = if flags(me).iter().any(|x| x == "master") {
        me
    } else if shard {
        match lines.iter().find(|f| f.first() == me.get(3)) {
            Some(primary) => primary,
            None => return Owned::empty(),
        }
    } else {
        return Owned::empty();
    };
    let mut owned = Owned::empty();
    let mut migrating = Vec::new();
    for range in line.iter().skip(8) {
        if let Some(m) = range.strip_prefix('[') {
            // [slot->-node] migrating away, [slot-<-node] importing (not owned yet)
            if let Some((slot, _)) = m.split_once("->-") {
                migrating.extend(slot.parse::<usize>().ok());
            }
            continue;
        }
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            for s in a..=b.min(SLOTS - 1) {
                owned.insert(s);
            }
        }
    }
    if shard {
        // A key written into a slot that is leaving would be carried away by the
        // reshard (or collide with it): the shard's own keys avoid such slots.
        for s in migrating {
            owned.remove(s);
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

/// A key name for this node's own copy of `base` (the events stream, the watches
/// store): `base{swN}` with the first tag `swN` whose slot is in `owned`, so the key is
/// served by this node (and, for the shard's slots, named alike on its replicas).
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
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-2 5 7 [6-<-b2] [7->-b2]
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 8-16383
c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected
";
        let o = parse_nodes(text, false);
        let got: Vec<u16> = (0..16384).filter(|&s| o.contains(s)).collect();
        assert_eq!(got, vec![0, 1, 2, 5, 7]);
        let shard = parse_nodes(text, true);
        let got: Vec<u16> = (0..16384).filter(|&s| shard.contains(s)).collect();
        assert_eq!(
            got,
            vec![0, 1, 2, 5],
            "a slot being migrated away is left out"
        );
        assert_eq!(o.first(), Some(0));
        let replica = text
            .replace("myself,master", "master")
            .replace("slave a1", "myself,slave a1");
        assert_eq!(parse_nodes(&replica, false).first(), None);
        assert_eq!(parse_nodes(&replica, true).first(), Some(0));
    }
}
