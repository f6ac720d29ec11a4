//! What became of a stream entry once its work is over: acked, dead-lettered or
//! cancelled, with its attempts, result, error, progress and last output lines. Kept in
//! Redis (not in the module), so that it is replicated, persisted with the data and
//! still there after a failover, and readable by `STREAMWATCH.JOB` and
//! `STREAMWATCH.WAIT` on the main thread without asking the supervisor.
//!
//! Where: one sorted set per stream, `<key>:outcomes` (a type no watch consumes). A
//! member is one outcome as a JSON object (`{"id":"…","group":"…",…}`); its score is
//! the millisecond part of the entry's id, so the outcome of an entry is found among
//! the few members of its millisecond. Retention: the `outcomes-max` outcomes of the
//! newest entries of each stream (older ones are evicted as new ones come), and the
//! whole set expires `outcomes-ttl-ms` after its last write. A stream whose outcomes
//! key would be in another Cluster slot keeps none (use a hash tag: `{q}`).
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

/// The sorted set of `key`'s outcomes.
pub fn key_of(key: &[u8]) -> Vec<u8> {
    [key, b":outcomes"].concat()
}

/// The outcomes key of `key`, if outcomes are kept and it is in the same Cluster slot.
fn usable_key(ctx: &Context, key: &[u8]) -> Option<Vec<u8>> {
    if max_kept() == 0 {
        return None;
    }
    let okey = key_of(key);
    match cluster::enabled(ctx) && cluster::key_slot(ctx, &okey) != cluster::key_slot(ctx, key) {
        true => None,
        false => Some(okey),
    }
}

/// The score of entry `id`'s outcome: its millisecond part, written the one way Redis
/// will parse back to the same double.
fn score(id: &str) -> String {
    let ms: u64 = id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    format!("{}", ms as f64)
}

fn call<'a>(ctx: &'a Context, cmd: &str, args: &[&[u8]]) -> CallResult<'a> {
    let opts = CallOptionsBuilder::new().replicate().build();
    ctx.call_ext(cmd, &opts, args)
}

/// The outcomes members of entry `id`'s millisecond, with their text.
fn members(ctx: &Context, okey: &[u8], id: &str) -> Vec<(Vec<u8>, Outcome)> {
    let s = score(id);
    let Ok(CallReply::Array(list)) =
        call(ctx, "ZRANGEBYSCORE", &[okey, s.as_bytes(), s.as_bytes()])
    else {
        return Vec::new();
    };
    let prefix = format!("{{\"id\":{}", serde_json::Value::from(id));
    let mut out = Vec::new();
    for item in list.iter() {
        let Ok(CallReply::String(m)) = item else {
            continue;
        };
        let text = m.as_bytes();
        if !text.starts_with(prefix.as_bytes()) {
            continue;
        }
        if let Ok(o) = serde_json::from_slice::<Outcome>(text) {
            out.push((text.to_vec(), o));
        }
    }
    out
}

/// The outcome of entry `id` of `key`: through `group` if given, else any group's.
pub fn find(ctx: &Context, key: &[u8], id: &str, group: Option<&[u8]>) -> Option<Outcome> {
    let okey = usable_key(ctx, key)?;
    let mut found = members(ctx, &okey, id);
    found.retain(|(_, o)| group.is_none_or(|g| o.group.as_bytes() == g));
    found.pop().map(|(_, o)| o)
}

/// Keeps `o`, the outcome of an entry of `key` (replacing the same group's earlier
/// one), then evicts the oldest past `outcomes-max` and sets the expiry. `Err`: why it
/// could not be kept (the outcomes key holds another type, say).
pub fn keep(ctx: &Context, key: &[u8], o: &Outcome) -> Result<(), String> {
    let Some(okey) = usable_key(ctx, key) else {
        return Ok(());
    };
    for (text, old) in members(ctx, &okey, &o.id) {
        if old.group == o.group {
            let _ = call(ctx, "ZREM", &[&okey, &text]);
        }
    }
    let member = serde_json::to_vec(o).map_err(|e| e.to_string())?;
    let s = score(&o.id);
    if let Err(e) = call(ctx, "ZADD", &[&okey, s.as_bytes(), &member]) {
        return Err(e.to_utf8_string().unwrap_or_default());
    }
    if let Ok(CallReply::I64(n)) = call(ctx, "ZCARD", &[&okey]) {
        let over = n.to_i64() - max_kept();
        if over > 0 {
            let last = (over - 1).to_string();
            let _ = call(ctx, "ZREMRANGEBYRANK", &[&okey, b"0", last.as_bytes()]);
        }
    }
    let ttl = config::OUTCOMES_TTL_MS.load(Ordering::Relaxed);
    if ttl > 0 {
        let _ = call(ctx, "PEXPIRE", &[&okey, ttl.to_string().as_bytes()]);
    }
    Ok(())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A JSON text a run wrote (its result or progress), or the text itself as a JSON
/// string if it is not valid JSON.
pub fn json_value(text: &[u8]) -> serde_json::Value {
    serde_json::from_slice(text)
        .unwrap_or_else(|_| serde_json::Value::from(String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip_through_a_double() {
        for (id, want) in [
            ("1700000000000-0", "1700000000000"),
            ("0-1", "0"),
            ("5-0", "5"),
            ("18446744073709551615-0", "18446744073709552000"),
        ] {
            assert_eq!(score(id), want, "{id}");
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
