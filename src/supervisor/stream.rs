//! The Redis stream calls of stream watches, in one small module: reading through the
//! consumer group (XREADGROUP, XPENDING, XCLAIM), acknowledging (XACK), dead-lettering
//! (XADD), deleting (XDEL), creating the group (XGROUP) and its figures (XINFO). Each
//! takes the context of a GIL hold the caller already has; the writes are replicated.

use redis_module::{
    CallOptionsBuilder, CallReply, CallResult, Context, ErrorReply, KeyType, RedisString,
};
use std::collections::HashMap;

/// The most ids one `XACK` or `XDEL` names.
const IDS_PER_CALL: usize = 512;

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sid(pub u64, pub u64);

impl Sid {
    pub fn parse(b: &[u8]) -> Option<Sid> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-')?;
        Some(Sid(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One queue: a watch applied to one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub db: i32,
    pub key: Vec<u8>,
    pub watch: u64,
}

/// An entry's fields and values, in stream order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Where an entry is for a group, as the stream and the group tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not in the stream (never added, deleted, or the key is not a stream).
    Missing,
    /// Not delivered to the group yet (or the group does not exist yet).
    Unread,
    /// Delivered and not acknowledged (in the group's PEL).
    Pending,
    /// Delivered and acknowledged.
    Acked,
}

/// Why a group read failed.
pub enum ReadError {
    /// The group does not exist (yet).
    NoGroup,
    Other(String),
}

/// One stream, read and written through one consumer group as one consumer.
pub struct Group<'a> {
    pub ctx: &'a Context,
    pub key: &'a [u8],
    pub group: &'a [u8],
    pub consumer: &'a [u8],
    /// Where the group starts if it must be created (the watch's `START`).
    pub start: &'a [u8],
}

impl Group<'_> {
    /// Whether the key holds a stream.
    pub fn exists(&self) -> bool {
        let name: RedisString = crate::ffi::string(self.ctx, self.key);
        let k = self
            .ctx
            .open_key_with_flags(&name, redis_module::key::KeyFlags::NOTOUCH);
        k.key_type() == KeyType::Stream
    }

    /// Calls `read`; if the group does not exist yet, creates it (at `start`: `0` by
    /// default, so the backlog is processed) and calls `read` once more.
    pub fn created<T>(&self, read: impl Fn(&Self) -> Result<T, ReadError>) -> Result<T, String> {
        let first = match read(self) {
            Err(ReadError::NoGroup) => {
                let _ = call(
                    self.ctx,
                    "XGROUP",
                    &[b"CREATE", self.key, self.group, self.start],
                );
                read(self)
            }
            other => other,
        };
        first.map_err(|e| match e {
            ReadError::NoGroup => "NOGROUP the group cannot be created".into(),
            ReadError::Other(text) => text,
        })
    }

    /// `XACK` of the entries `ids`.
    pub fn ack(&self, ids: &[Sid]) {
        self.per_ids("XACK", &[self.key, self.group], ids);
    }

    /// `XDEL`: the entries leave the stream (the watch's `ACK delete`, once done).
    pub fn delete(&self, ids: &[Sid]) {
        self.per_ids("XDEL", &[self.key], ids);
    }

    /// `command first... id...`, a call per `IDS_PER_CALL` ids: one call for all the
    /// entries a flush finished, instead of one each.
    fn per_ids(&self, command: &str, first: &[&[u8]], ids: &[Sid]) {
        for chunk in ids.chunks(IDS_PER_CALL) {
            let ids: Vec<String> = chunk.iter().map(Sid::to_string).collect();
            let mut args: Vec<&[u8]> = first.to_vec();
            args.extend(ids.iter().map(|id| id.as_bytes()));
            let _ = call(self.ctx, command, &args);
        }
    }

    /// `XADD stream * <fields> extra...`, the entry as it goes to a dead-letter stream.
    pub fn add(
        &self,
        stream: &[u8],
        fields: &Fields,
        extra: &[(&str, &[u8])],
    ) -> Result<(), String> {
        let mut args: Vec<&[u8]> = vec![stream, b"*"];
        for (f, v) in fields {
            args.push(f);
            args.push(v);
        }
        for (f, v) in extra {
            args.push(f.as_bytes());
            args.push(v);
        }
        call(self.ctx, "XADD", &args)
            .map(|_| ())
            .map_err(|e| error_text(&e))
    }

    /// `XCLAIM ... 0 ids`: the entries now delivered to us (counted as a delivery),
    /// without those deleted from the stream.
    pub fn claim(&self, ids: &[Sid]) -> HashMap<Sid, Fields> {
        let texts: Vec<String> = ids.iter().map(Sid::to_string).collect();
        let mut args: Vec<&[u8]> = vec![self.key, self.group, self.consumer, b"0"];
        args.extend(texts.iter().map(|s| s.as_bytes()));
        parse_entries(&call(self.ctx, "XCLAIM", &args))
            .into_iter()
            .collect()
    }

    /// `XPENDING key group (after + count`: the group's pending entries after `after`
    /// (from the first without), with their delivery counts.
    pub fn pending(&self, after: Option<Sid>, count: usize) -> Result<Vec<(Sid, u32)>, ReadError> {
        let start = match after {
            Some(s) => format!("({s}"),
            None => "-".into(),
        };
        let count = count.to_string();
        let args: [&[u8]; 5] = [
            self.key,
            self.group,
            start.as_bytes(),
            b"+",
            count.as_bytes(),
        ];
        let r = call(self.ctx, "XPENDING", &args).map_err(read_error)?;
        let mut out = Vec::new();
        if let CallReply::Array(list) = &r {
            for item in list.iter() {
                let Ok(CallReply::Array(p)) = item else {
                    continue;
                };
                let Some(sid) = sid_of(p.get(0)) else {
                    continue;
                };
                let deliveries = p.get(3).as_ref().and_then(int_of).unwrap_or(1);
                out.push((sid, deliveries.clamp(0, u32::MAX as i64) as u32));
            }
        }
        Ok(out)
    }

    /// `XREADGROUP ... COUNT count STREAMS key >`: up to `count` new entries.
    pub fn read_new(&self, count: usize) -> Result<Vec<(Sid, Fields)>, ReadError> {
        let count = count.to_string();
        let args: [&[u8]; 8] = [
            b"GROUP",
            self.group,
            self.consumer,
            b"COUNT",
            count.as_bytes(),
            b"STREAMS",
            self.key,
            b">",
        ];
        let r = call(self.ctx, "XREADGROUP", &args).map_err(read_error)?;
        if let CallReply::Array(streams) = &r {
            if let Some(Ok(CallReply::Array(s))) = streams.get(0) {
                return Ok(parse_entries(&s.get(1).unwrap_or(Ok(CallReply::Unknown))));
            }
        }
        Ok(Vec::new())
    }

    /// `pending` and `lag` of the group (XINFO GROUPS); lag is 0 when unknown.
    pub fn figures(&self) -> Option<(i64, i64)> {
        self.group_info().map(|(pending, lag, _)| (pending, lag))
    }

    /// Where entry `sid` is for this group (read only).
    pub fn stage(&self, sid: Sid) -> Stage {
        let id = sid.to_string();
        let id = id.as_bytes();
        let opts = CallOptionsBuilder::new().build();
        let r: CallResult = self.ctx.call_ext("XRANGE", &opts, &[self.key, id, id]);
        if !matches!(&r, Ok(CallReply::Array(a)) if a.len() > 0) {
            return Stage::Missing;
        }
        let args: [&[u8]; 5] = [self.key, self.group, id, id, b"1"];
        match self.ctx.call_ext("XPENDING", &opts, &args) {
            Ok(CallReply::Array(a)) if a.len() > 0 => return Stage::Pending,
            Err(_) => return Stage::Unread, // no group yet
            _ => {}
        }
        match self.group_info() {
            Some((_, _, Some(last))) if sid <= last => Stage::Acked,
            _ => Stage::Unread,
        }
    }

    /// The group's pending count, lag and last delivered id (XINFO GROUPS).
    fn group_info(&self) -> Option<(i64, i64, Option<Sid>)> {
        let opts = CallOptionsBuilder::new().build();
        let r: CallResult = self
            .ctx
            .call_ext("XINFO", &opts, &[b"GROUPS".as_slice(), self.key]);
        let Ok(CallReply::Array(groups)) = &r else {
            return None;
        };
        for g in groups.iter() {
            let Ok(CallReply::Array(kv)) = g else {
                continue;
            };
            let items: Vec<CallResult> = kv.iter().collect();
            let mut name = None;
            let (mut pending, mut lag, mut last) = (0, 0, None);
            for pair in items.chunks_exact(2) {
                match bytes_of(&pair[0]).as_deref() {
                    Some(b"name") => name = bytes_of(&pair[1]),
                    Some(b"pending") => pending = int_of(&pair[1]).unwrap_or(0),
                    Some(b"lag") => lag = int_of(&pair[1]).unwrap_or(0),
                    Some(b"last-delivered-id") => {
                        last = bytes_of(&pair[1]).and_then(|b| Sid::parse(&b))
                    }
                    _ => {}
                }
            }
            if name.as_deref() == Some(self.group) {
                return Some((pending, lag, last));
            }
        }
        None
    }
}

fn call<'a>(ctx: &'a Context, cmd: &str, args: &[&[u8]]) -> CallResult<'a> {
    let opts = CallOptionsBuilder::new().replicate().build();
    ctx.call_ext(cmd, &opts, args)
}

fn error_text(e: &ErrorReply) -> String {
    e.to_utf8_string().unwrap_or_else(|| "error".into())
}

fn read_error(e: ErrorReply) -> ReadError {
    let text = error_text(&e);
    match text.starts_with("NOGROUP") {
        true => ReadError::NoGroup,
        false => ReadError::Other(text),
    }
}

fn bytes_of(r: &CallResult) -> Option<Vec<u8>> {
    match r {
        Ok(CallReply::String(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn int_of(r: &CallResult) -> Option<i64> {
    match r {
        Ok(CallReply::I64(i)) => Some(i.to_i64()),
        _ => None,
    }
}

/// An entry id from an element of an array reply.
fn sid_of(r: Option<CallResult>) -> Option<Sid> {
    bytes_of(&r?).and_then(|b| Sid::parse(&b))
}

/// `[[id, [f, v, ...]], ...]` (XREADGROUP's per-stream list, XCLAIM's reply), without
/// the entries deleted while pending (nothing to run).
fn parse_entries(r: &CallResult) -> Vec<(Sid, Fields)> {
    let mut out = Vec::new();
    let Ok(CallReply::Array(list)) = r else {
        return out;
    };
    for item in list.iter() {
        let Ok(CallReply::Array(pair)) = item else {
            continue;
        };
        let Some(id) = sid_of(pair.get(0)) else {
            continue;
        };
        let Some(Ok(CallReply::Array(fv))) = pair.get(1) else {
            continue;
        };
        let flat: Vec<Vec<u8>> = fv.iter().filter_map(|x| bytes_of(&x)).collect();
        let fields = flat
            .chunks_exact(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        out.push((id, fields));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_like_redis() {
        let a = Sid::parse(b"1700000000000-2").unwrap();
        let b = Sid::parse(b"1700000000000-10").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(Sid::parse(b"nope"), None);
        assert_eq!(Sid::parse(b"1-"), None);
    }
}
