//! What became of a stream entry once its work is over: acked, dead-lettered or
//! cancelled, with its attempts, result, error, progress and last output lines. Kept in
//! Redis (not in the module), so that it is replicated, persisted with the data and
//! still there after a failover, and readable by `STREAMWATCH.JOB` and
//! `STREAMWATCH.WAIT` on the main thread without asking the supervisor.
//!
//! Where: beside the stream, a hash `<key>:outcomes` (field: the entry id; value: the
//! outcome as a JSON object, `{"id":"…","group":"…",…}`), so that a flush keeps all its
//! outcomes of a stream in one `HSET`, and a sorted set `<key>:outcomes:index` that
//! orders them for eviction (the ids padded to a fixed width, equal scores, so they
//! sort as the ids do). Keys ending in `:outcomes` are never hash jobs (`Watch::covers`).
//! Retention (`tend`, at most every second or tenth of the bound): the
//! `outcomes-max` outcomes of the newest entries of each stream, and all of a stream's
//! outcomes expire `outcomes-ttl-ms` after its last one. Entries cancelled before they
//! were read are noted in the set `<key>:cancels`, so that whoever reads them (after a
//! restart, on a new primary) acknowledges them without running them. One outcome per
//! entry: two watches reading one stream through two groups keep the last one's. In a
//! Redis Cluster a stream keeps outcomes only if its name has a hash tag (`{q}`: the
//! keys beside it are then in its slot).
//!
//! Every call takes the context of a GIL hold (or a command) the caller already has,
//! in the stream's database; the writes are replicated.

use crate::cluster;
use crate::config;
use crate::ffi::Reply;
use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// The end states of an entry.
pub const ACKED: &str = "acked";
pub const DEAD: &str = "dead";
pub const CANCELLED: &str = "cancelled";

/// The most bytes of an entry's last output lines an outcome keeps.
pub const OUTPUT_BYTES: usize = 2 << 10;

/// One finished entry. Field order is the JSON's: `id` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub group: String,
    pub state: String,
    pub watch: String,
    pub attempts: u32,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub progress: Option<serde_json::Value>,
    pub output: String,
    pub finished_ms: u64,
    pub duration_ms: u64,
}

impl Outcome {
    /// The map of `STREAMWATCH.JOB`/`WAIT` for this outcome of entry `id` of `key`.
    pub fn reply(&self, db: i32, key: &[u8]) -> Reply {
        let json = |v: &Option<serde_json::Value>| match v {
            Some(v) => Reply::str(v.to_string()),
            None => Reply::Nil,
        };
        Reply::Map(vec![
            ("watch".into(), Reply::str(&self.watch)),
            ("db".into(), Reply::Int(db.into())),
            ("key".into(), Reply::str(key)),
            ("id".into(), Reply::str(&self.id)),
            ("state".into(), Reply::str(&self.state)),
            ("group".into(), Reply::str(&self.group)),
            ("attempts".into(), Reply::Int(self.attempts.into())),
            ("result".into(), json(&self.result)),
            (
                "error".into(),
                self.error.as_ref().map_or(Reply::Nil, Reply::str),
            ),
            ("progress".into(), json(&self.progress)),
            ("output".into(), Reply::str(&self.output)),
            ("finished_ms".into(), Reply::Int(self.finished_ms as i64)),
            ("duration_ms".into(), Reply::Int(self.duration_ms as i64)),
        ])
    }
}

/// How many outcomes a stream keeps (0: none).
pub fn max_kept() -> i64 {
    config::OUTCOMES_MAX.load(Ordering::Relaxed).max(0)
}

/// The hash of `key`'s outcomes.
pub fn key_of(key: &[u8]) -> Vec<u8> {
    [key, b":outcomes"].concat()
}

/// Whether `key` is where some stream keeps its outcomes (never a hash job).
pub fn is_outcomes_key(key: &[u8]) -> bool {
    key.ends_with(b":outcomes")
}

/// The index (sorted set) of `key`'s outcomes.
pub fn index_of(key: &[u8]) -> Vec<u8> {
    [key, b":outcomes:index"].concat()
}

/// Whether outcomes of `key` may be kept: some are kept, and in a Cluster the key has
/// a hash tag, so that its outcome keys are in its slot.
fn usable(ctx: &Context, key: &[u8]) -> bool {
    max_kept() > 0 && (!cluster::enabled(ctx) || has_hash_tag(key))
}

/// A non-empty `{...}` part, as Redis Cluster hashes keys.
fn has_hash_tag(key: &[u8]) -> bool {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return false;
    };
    key[open + 1..]
        .iter()
        .position(|&b| b == b'}')
        .is_some_and(|close| close > 0)
}

/// Entry `id` as a member of the index: both numbers padded to 20 digits, so that
/// members of equal score sort as the ids do.
fn member(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    Some(format!(
        "{:020}-{:020}",
        ms.parse::<u64>().ok()?,
        seq.parse::<u64>().ok()?
    ))
}

/// The entry id of an index member.
fn id_of(member: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(member).ok()?;
    let (ms, seq) = s.split_once('-')?;
    Some(format!(
        "{}-{}",
        ms.parse::<u64>().ok()?,
        seq.parse::<u64>().ok()?
    ))
}

fn call<'a>(ctx: &'a Context, cmd: &str, args: &[&[u8]]) -> CallResult<'a> {
    let opts = CallOptionsBuilder::new().replicate().build();
    ctx.call_ext(cmd, &opts, args)
}

/// The outcome of entry `id` of `key`: through `group` if given, else whichever kept.
pub fn find(ctx: &Context, key: &[u8], id: &str, group: Option<&[u8]>) -> Option<Outcome> {
    if !usable(ctx, key) {
        return None;
    }
    let Ok(CallReply::String(text)) = call(ctx, "HGET", &[&key_of(key), id.as_bytes()]) else {
        return None;
    };
    let o: Outcome = serde_json::from_slice(text.as_bytes()).ok()?;
    (o.id == id && group.is_none_or(|g| o.group.as_bytes() == g)).then_some(o)
}

/// The set of `key`'s entries cancelled before they were read.
pub fn cancels_of(key: &[u8]) -> Vec<u8> {
    [key, b":cancels"].concat()
}

fn error_text(e: redis_module::ErrorReply) -> String {
    e.to_utf8_string().unwrap_or_default()
}

/// Keeps the outcomes `os` of entries of `key` (one flush's, replacing earlier ones)
/// in one `HSET` and one `ZADD`, and notes those of `unread` (cancelled before they
/// were read) in `cancels_of(key)`. `Err`: why they could not be kept (a key holds
/// another type, say).
pub fn keep_all(ctx: &Context, key: &[u8], os: &[Outcome], unread: &[&str]) -> Result<(), String> {
    if os.is_empty() || !usable(ctx, key) {
        return Ok(());
    }
    let mut texts = Vec::with_capacity(os.len());
    let mut members = Vec::with_capacity(os.len());
    for o in os {
        if let Some(m) = member(&o.id) {
            texts.push((
                o.id.as_bytes(),
                serde_json::to_vec(o).map_err(|e| e.to_string())?,
            ));
            members.push(m);
        }
    }
    let okey = key_of(key);
    let mut args: Vec<&[u8]> = vec![&okey];
    for (id, text) in &texts {
        args.push(id);
        args.push(text);
    }
    call(ctx, "HSET", &args).map_err(error_text)?;
    let index = index_of(key);
    let mut args: Vec<&[u8]> = vec![&index];
    for m in &members {
        args.push(b"0");
        args.push(m.as_bytes());
    }
    call(ctx, "ZADD", &args).map_err(error_text)?;
    if !unread.is_empty() {
        let cancels = cancels_of(key);
        let mut args: Vec<&[u8]> = vec![&cancels];
        args.extend(unread.iter().map(|id| id.as_bytes()));
        call(ctx, "SADD", &args).map_err(error_text)?;
    }
    Ok(())
}

/// Retention for `key`'s outcomes: the oldest past `outcomes-max` go, and the keys
/// beside the stream expire `outcomes-ttl-ms` from now.
pub fn tend(ctx: &Context, key: &[u8]) {
    if !usable(ctx, key) {
        return;
    }
    let (okey, index) = (key_of(key), index_of(key));
    if let Ok(CallReply::I64(n)) = call(ctx, "ZCARD", &[&index]) {
        let over = n.to_i64() - max_kept();
        if over > 0 {
            evict(ctx, &okey, &index, over);
        }
    }
    let ttl = config::OUTCOMES_TTL_MS.load(Ordering::Relaxed).to_string();
    if ttl != "0" {
        for k in [okey, index, cancels_of(key)] {
            let _ = call(ctx, "PEXPIRE", &[&k, ttl.as_bytes()]);
        }
    }
}

/// Evicts the `n` oldest outcomes of the hash `okey`.
fn evict(ctx: &Context, okey: &[u8], index: &[u8], n: i64) {
    let count = n.to_string();
    let Ok(CallReply::Array(popped)) = call(ctx, "ZPOPMIN", &[index, count.as_bytes()]) else {
        return;
    };
    // [member, score, member, score, ...]
    let items: Vec<_> = popped.iter().collect();
    let ids: Vec<String> = items
        .chunks(2)
        .filter_map(|pair| match pair.first() {
            Some(Ok(CallReply::String(m))) => id_of(m.as_bytes()),
            _ => None,
        })
        .collect();
    for chunk in ids.chunks(1024) {
        let mut args: Vec<&[u8]> = vec![okey];
        args.extend(chunk.iter().map(|id| id.as_bytes()));
        let _ = call(ctx, "HDEL", &args);
    }
}

/// Which of `ids` (entries of `key` just read) were cancelled before they were read:
/// they are taken out of `cancels_of(key)` and are not to run.
pub fn take_cancelled(ctx: &Context, key: &[u8], ids: &[String]) -> Vec<String> {
    let cancels = cancels_of(key);
    if ids.is_empty() || !usable(ctx, key) {
        return Vec::new();
    }
    if !matches!(call(ctx, "EXISTS", &[&cancels]), Ok(CallReply::I64(n)) if n.to_i64() > 0) {
        return Vec::new();
    }
    let mut args: Vec<&[u8]> = vec![&cancels];
    args.extend(ids.iter().map(|id| id.as_bytes()));
    let Ok(CallReply::Array(flags)) = call(ctx, "SMISMEMBER", &args) else {
        return Vec::new();
    };
    let found: Vec<String> = flags
        .iter()
        .zip(ids)
        .filter(|(f, _)| matches!(f, Ok(CallReply::I64(n)) if n.to_i64() == 1))
        .map(|(_, id)| id.clone())
        .collect();
    if !found.is_empty() {
        let mut args: Vec<&[u8]> = vec![&cancels];
        args.extend(found.iter().map(|id| id.as_bytes()));
        let _ = call(ctx, "SREM", &args);
    }
    found
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The most bytes of a result, a progress or an error an outcome keeps.
pub const MAX_PART: usize = 16 << 10;

/// A JSON text a run wrote (its result or progress) as kept: the value, or if it is
/// longer than `MAX_PART` a string saying so.
pub fn json_kept(text: &str) -> serde_json::Value {
    if text.len() > MAX_PART {
        let note = format!("(not kept: {} bytes, more than {MAX_PART})", text.len());
        return serde_json::Value::from(note);
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::from(text))
}

/// `text` cut to at most `MAX_PART` bytes (at a character boundary).
pub fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_PART);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_members_sort_as_the_ids_do() {
        let ids = [
            "1-9",
            "1-10",
            "2-0",
            "18446744073709551615-18446744073709551615",
        ];
        let members: Vec<String> = ids.iter().map(|i| member(i).unwrap()).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        for (i, m) in ids.iter().zip(&members) {
            assert_eq!(id_of(m.as_bytes()).as_deref(), Some(*i));
        }
        assert_eq!(member("x-1"), None);
    }

    #[test]
    fn hash_tags_as_cluster_reads_them() {
        for (key, tagged) in [
            (&b"{q}"[..], true),
            (b"a{q}b", true),
            (b"{}q", false),
            (b"q", false),
            (b"q}{", false),
            (b"{q", false),
        ] {
            assert_eq!(has_hash_tag(key), tagged, "{key:?}");
        }
    }

    #[test]
    fn an_outcome_is_json_that_starts_with_its_id() {
        let o = Outcome {
            id: "1-0".into(),
            group: "g".into(),
            state: ACKED.into(),
            watch: "q*".into(),
            attempts: 2,
            result: Some(serde_json::json!({"n": [1, "x"]})),
            error: None,
            progress: None,
            output: "line\n".into(),
            finished_ms: 5,
            duration_ms: 3,
        };
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.starts_with(r#"{"id":"1-0","#), "{text}");
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), o);
    }
}
