//! What became of a stream entry once its work is over: acked, dead-lettered or
//! cancelled, with its attempts, result, error, progress and last output lines. Kept in
//! Redis (not in the module), so that it is replicated, persisted with the data and
//! still there after a failover, and readable by `STREAMWATCH.JOB` and
//! `STREAMWATCH.WAIT` on the main thread without asking the supervisor.
//!
//! Where: beside the stream, in two generations of a hash: `<key>:outcomes` (field:
//! the entry id; value: the outcome as a JSON object, `{"id":"…","group":"…",…}`),
//! where a flush keeps all its outcomes of a stream in one `HSET`, and
//! `<key>:outcomes:old`. When the first holds half of `outcomes-max`, it becomes the
//! second (the one before is dropped): so each stream keeps between half and all of
//! `outcomes-max` of its most recent outcomes, for three calls per flush at most and no
//! index to maintain. Both expire `outcomes-ttl-ms` after the stream's last outcome.
//! Such keys are never hash jobs (`Watch::covers`). Entries cancelled before they were
//! read are noted in the set `<key>:cancels`, so that whoever reads them (after a
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

/// An outcome ready to be kept: its entry id and JSON text, made before the GIL hold
/// that writes it.
pub struct Kept {
    id: String,
    text: Vec<u8>,
}

impl Kept {
    pub fn of(o: &Outcome) -> Kept {
        Kept {
            id: o.id.clone(),
            // Strings, numbers and JSON values only: serializing cannot fail.
            text: serde_json::to_vec(o).unwrap_or_default(),
        }
    }
}

/// How many outcomes a stream keeps (0: none).
pub fn max_kept() -> i64 {
    config::OUTCOMES_MAX.load(Ordering::Relaxed).max(0)
}

/// The hash of `key`'s recent outcomes.
pub fn key_of(key: &[u8]) -> Vec<u8> {
    [key, b":outcomes"].concat()
}

/// The hash of `key`'s older outcomes (the generation before).
pub fn old_of(key: &[u8]) -> Vec<u8> {
    [key, b":outcomes:old"].concat()
}

/// Whether `key` is where some stream keeps its outcomes (never a hash job).
pub fn is_outcomes_key(key: &[u8]) -> bool {
    key.ends_with(b":outcomes") || key.ends_with(b":outcomes:old")
}

/// Whether outcomes of `key` may be kept: some are kept, and in a Cluster the key has
/// a hash tag, so that its outcome keys are in its slot.
fn usable(ctx: &Context, key: &[u8]) -> bool {
    max_kept() > 0 && beside(ctx, key)
}

/// Whether keys beside `key` are in its slot (always, outside a Cluster): where its
/// cancels are noted, also when no outcome is kept (`outcomes-max 0`).
fn beside(ctx: &Context, key: &[u8]) -> bool {
    !cluster::enabled(ctx) || has_hash_tag(key)
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

fn call<'a>(ctx: &'a Context, cmd: &str, args: &[&[u8]]) -> CallResult<'a> {
    let opts = CallOptionsBuilder::new().replicate().build();
    ctx.call_ext(cmd, &opts, args)
}

/// The outcome of entry `id` of `key`: through `group` if given, else whichever kept.
pub fn find(ctx: &Context, key: &[u8], id: &str, group: Option<&[u8]>) -> Option<Outcome> {
    if !usable(ctx, key) {
        return None;
    }
    let get = |hash: Vec<u8>| match call(ctx, "HGET", &[&hash, id.as_bytes()]) {
        Ok(CallReply::String(text)) => serde_json::from_slice::<Outcome>(text.as_bytes()).ok(),
        _ => None,
    };
    let o = get(key_of(key)).or_else(|| get(old_of(key)))?;
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
/// in one `HSET`, and notes those of `unread` (cancelled before they were read) in
/// `cancels_of(key)`. `len`: how many the recent generation holds, if known (asked
/// once, then kept by the caller); at half of `outcomes-max` it becomes the old one.
/// `Err`: why they could not be kept (a key holds another type, say).
pub fn keep_all(
    ctx: &Context,
    key: &[u8],
    os: &[Kept],
    unread: &[&str],
    len: &mut Option<i64>,
) -> Result<(), String> {
    let ttl = config::OUTCOMES_TTL_MS.load(Ordering::Relaxed).to_string();
    let expire = |k: &[u8]| {
        if ttl != "0" {
            let _ = call(ctx, "PEXPIRE", &[k, ttl.as_bytes()]);
        }
    };
    // A cancel is noted even where no outcome is kept: CANCEL said 1.
    if !unread.is_empty() && beside(ctx, key) {
        let cancels = cancels_of(key);
        let mut args: Vec<&[u8]> = vec![&cancels];
        args.extend(unread.iter().map(|id| id.as_bytes()));
        call(ctx, "SADD", &args).map_err(error_text)?;
        expire(&cancels);
    }
    if os.is_empty() || !usable(ctx, key) {
        return Ok(());
    }
    let okey = key_of(key);
    let int = |r: CallResult| match r {
        Ok(CallReply::I64(n)) => Ok(n.to_i64()),
        Ok(_) => Ok(0),
        Err(e) => Err(error_text(e)),
    };
    let before = match *len {
        Some(n) => n,
        None => int(call(ctx, "HLEN", &[&okey]))?,
    };
    let mut args: Vec<&[u8]> = vec![&okey];
    for o in os {
        args.push(o.id.as_bytes());
        args.push(&o.text);
    }
    let added = int(call(ctx, "HSET", &args))?;
    *len = Some(before + added);
    // The recent generation's expiry, every time: the HSET may have made it again
    // although `before` (kept, not asked) says it holds some (a client deleted it,
    // another watch's queue on this stream renamed it), and `tend` may not come again.
    expire(&okey);
    let half = (max_kept() + 1) / 2;
    if before + added >= half {
        // The old generation goes (freed in the background), the recent one takes
        // its place.
        let old = old_of(key);
        let _ = call(ctx, "UNLINK", &[&old]);
        call(ctx, "RENAME", &[&okey, &old]).map_err(error_text)?;
        *len = Some(0);
    }
    Ok(())
}

/// The expiry of the keys beside `key`: `outcomes-ttl-ms` from now.
pub fn tend(ctx: &Context, key: &[u8]) {
    let ttl = config::OUTCOMES_TTL_MS.load(Ordering::Relaxed).to_string();
    if ttl == "0" || !usable(ctx, key) {
        return;
    }
    for k in [key_of(key), old_of(key), cancels_of(key)] {
        let _ = call(ctx, "PEXPIRE", &[&k, ttl.as_bytes()]);
    }
}

/// Which of `ids` (entries of `key` just read) were cancelled before they were read:
/// they are taken out of `cancels_of(key)` and are not to run.
/// `known`: whether the set exists, if known (asked once, then kept by the caller: only
/// the primary adds to it, in `keep_all`).
pub fn take_cancelled(
    ctx: &Context,
    key: &[u8],
    ids: &[String],
    known: &mut Option<bool>,
) -> Vec<String> {
    let cancels = cancels_of(key);
    if ids.is_empty() || !beside(ctx, key) || *known == Some(false) {
        return Vec::new();
    }
    let exists = *known.get_or_insert_with(
        || matches!(call(ctx, "EXISTS", &[&cancels]), Ok(CallReply::I64(n)) if n.to_i64() > 0),
    );
    if !exists {
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
        *known = None; // it may be empty (gone) now
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
