//! `STREAMWATCH.REPLAY key [COUNT n] [DB n]`: dead-lettered entries go back onto their
//! stream.
//!
//! Why it exists: an entry that used its last attempt waits in its watch's dead-letter
//! stream, usually because of something the operator then fixes (a bug in the handler,
//! a service that was down). Putting it back by hand means XRANGE, XADD without the
//! eight pairs the module appended (and not losing the entry's own field that happens to
//! be called `error`), then XDEL, with a window where the entry is in both streams or in
//! neither. Here it is one command on the main thread: no client and no job sees half of
//! it, and what it did is replicated as its effects (each XADD with the id it got, each
//! XDEL), never as the command, which would give other ids on a replica.
//!
//! What moves: a dead-letter entry ends with exactly the pairs `ABOUT`, in that order
//! (see `supervisor/queue/flush.rs`). Its fields before them are the original entry's;
//! they are added to `key` with a new id (`*`) and one more field, `replayed_from`, the
//! original id (an earlier `replayed_from`, of an entry replayed before, is replaced),
//! and the dead-letter entry is deleted. An entry that does not end so (written by hand,
//! or by another program) is not the module's to interpret: it is skipped and stays.
//! A replayed entry is a new entry of the stream: every group of the stream sees it, not
//! only the one that dead-lettered it, and it starts again from its first attempt.
//!
//! Where from: the dead-letter stream of every stream watch that covers `key` in the
//! database (`DEADLETTER`, default `<key>:dead`), each once, in the order of the
//! registry (as `STREAMWATCH.WATCHES` lists the watches), oldest entries first;
//! `COUNT` (default 100, at most 1000, which bounds the work on the main thread) counts
//! the entries moved from all of them together. Entries do not say which stream they
//! came from, so a dead-letter stream that may also hold other streams' entries (a
//! `DEADLETTER` shared by a pattern watch's streams, or by several watches) is refused
//! rather than emptied onto the wrong stream.

use crate::acl::Caller;
use crate::cluster;
use crate::ffi::{self, CmdError};
use crate::glob;
use crate::spec::{Kind, WatchSpec};
use crate::watch;
use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context};

/// Entries moved by one call unless `COUNT` says otherwise.
pub const DEFAULT_COUNT: usize = 100;
/// The most `COUNT` may ask for.
pub const MAX_COUNT: usize = 1000;
/// The most dead-letter entries one call looks at (those not written by the module are
/// skipped, and must not make a call walk a whole stream).
const SCAN_MAX: usize = 10 * MAX_COUNT;

/// The names of the pairs the module appends to a dead-lettered entry, in their order.
pub const ABOUT: [&[u8]; 8] = [
    b"id",
    b"attempts",
    b"error",
    b"last_exit",
    b"output",
    b"watch",
    b"group",
    b"handler",
];

/// The field a replayed entry gets: the id of the entry it replaces.
pub const REPLAYED_FROM: &[u8] = b"replayed_from";

/// An entry's fields and values, in stream order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn err<T>(msg: String) -> Result<T, CmdError> {
    Err(CmdError::Msg(msg))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Moves up to `count` dead-lettered entries of stream `key` in database `db` back onto
/// it; the number moved.
pub fn run(ctx: &Context, db: i32, key: &[u8], count: usize) -> Result<i64, CmdError> {
    let _db = InDb::enter(ctx, db)?;
    let snapshot = watch::snapshot();
    let covering: Vec<&WatchSpec> = snapshot
        .iter()
        .filter(|w| w.spec.kind == Kind::Stream && w.covers(db, key))
        .map(|w| &w.spec)
        .collect();
    if covering.is_empty() {
        return err(format!(
            "ERR no stream watch covers '{}' in database {db} (key)",
            text(key)
        ));
    }
    let all: Vec<&WatchSpec> = snapshot.iter().map(|w| &w.spec).collect();
    let streams = dead_letter_streams(&covering, &all, db, key)?;
    let caller = Caller::current(ctx);
    for dl in &streams {
        same_slot(ctx, key, dl)?;
        caller.check_read(ctx, dl, "the dead-letter stream")?;
        caller.check_write(ctx, dl, "the dead-letter stream")?;
        expect_stream(ctx, dl, "the dead-letter stream ")?;
    }
    expect_stream(ctx, key, "")?;
    let mut m = Mover {
        ctx,
        key,
        moved: 0,
        scanned: 0,
    };
    for dl in &streams {
        if m.moved == count {
            break;
        }
        let before = m.moved;
        m.move_from(dl, count)?;
        if m.moved > before {
            ffi::log_notice(format!(
                "streamwatch: REPLAY moved {} entries from '{}' back onto '{}' (db {db})",
                m.moved - before,
                text(dl),
                text(key)
            ));
        }
    }
    Ok(m.moved as i64)
}

/// The dead-letter streams of the stream watches `covering` key in `db`, each once, in
/// their order; an error naming the first that another watch of `all` could also
/// dead-letter another stream's entries into (whose entries could not be told apart).
pub fn dead_letter_streams(
    covering: &[&WatchSpec],
    all: &[&WatchSpec],
    db: i32,
    key: &[u8],
) -> Result<Vec<Vec<u8>>, CmdError> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for spec in covering {
        let dl = spec.stream.deadletter_of(key);
        if out.contains(&dl) {
            continue;
        }
        if let Some(other) = all.iter().find(|s| feeds_other(s, db, key, &dl)) {
            return err(format!(
                "ERR the dead-letter stream '{}' of '{}' may also hold entries of other \
                 streams (watch '{}' dead-letters into it) and entries do not say which \
                 stream they came from; move them by hand (key)",
                text(&dl),
                text(key),
                text(&other.pattern)
            ));
        }
        out.push(dl);
    }
    Ok(out)
}

/// Could watch `s` dead-letter the entries of a stream other than `key` of `db` into
/// `dl`? With `DEADLETTER dl`, unless its pattern names `key` alone; with the default
/// (`<k>:dead`), if it covers the one other `k` whose dead-letter stream is `dl`.
fn feeds_other(s: &WatchSpec, db: i32, key: &[u8], dl: &[u8]) -> bool {
    if s.kind != Kind::Stream || !s.db.covers(db) {
        return false;
    }
    match &s.stream.deadletter {
        Some(d) => d == dl && !(glob::is_literal(&s.pattern) && s.pattern == key),
        None => dl
            .strip_suffix(b":dead")
            .is_some_and(|k| k != key && glob::Glob::new(&s.pattern).matches(k)),
    }
}

/// The entry to add back for a dead-letter entry: the original fields (without an
/// earlier `replayed_from`), then `replayed_from` = the original id. `None` unless the
/// entry ends with the pairs `ABOUT`, in order.
pub fn original(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<Fields> {
    let split = fields.len().checked_sub(ABOUT.len())?;
    let (own, about) = fields.split_at(split);
    if !about
        .iter()
        .zip(ABOUT)
        .all(|((name, _), want)| name == want)
    {
        return None;
    }
    let id = about[0].1.clone();
    let mut back: Fields = own
        .iter()
        .filter(|(name, _)| name != REPLAYED_FROM)
        .cloned()
        .collect();
    back.push((REPLAYED_FROM.to_vec(), id));
    Some(back)
}

/// The moves of one call.
struct Mover<'a> {
    ctx: &'a Context,
    key: &'a [u8],
    moved: usize,
    /// Dead-letter entries looked at.
    scanned: usize,
}

impl Mover<'_> {
    /// Moves the entries of `dl` the module wrote, oldest first, until `count` are moved
    /// in all, `dl` ends or `SCAN_MAX` entries were looked at.
    fn move_from(&mut self, dl: &[u8], count: usize) -> Result<(), CmdError> {
        let mut start = b"-".to_vec();
        while self.moved < count && self.scanned < SCAN_MAX {
            let want = (count - self.moved).min(SCAN_MAX - self.scanned);
            let entries = range(self.ctx, dl, &start, want).map_err(|e| {
                CmdError::Msg(format!(
                    "ERR cannot read the dead-letter stream '{}' (key): {e}",
                    text(dl)
                ))
            })?;
            let got = entries.len();
            // Added here, deleted there in one XDEL (also when an XADD failed).
            let mut added: Vec<Vec<u8>> = Vec::new();
            let mut failed = None;
            for (id, fields) in entries {
                self.scanned += 1;
                start = [b"(", &id[..]].concat();
                let Some(back) = original(&fields) else {
                    continue; // not written by the module: left where it is
                };
                if let Err(e) = self.add(&back) {
                    failed = Some(e);
                    break;
                }
                added.push(id);
                self.moved += 1;
            }
            self.delete(dl, &added);
            if let Some(e) = failed {
                return Err(e);
            }
            if got < want {
                break; // the end of `dl`
            }
        }
        Ok(())
    }

    /// `XDEL dl ids...`: the entries just added to `key`.
    fn delete(&self, dl: &[u8], ids: &[Vec<u8>]) {
        if ids.is_empty() {
            return;
        }
        let mut args: Vec<&[u8]> = vec![dl];
        args.extend(ids.iter().map(|id| &id[..]));
        if let Err(e) = call(self.ctx, "XDEL", &args, true) {
            // Cannot happen to a stream just read; said, as the entries are now twice.
            ffi::log_warning(format!(
                "streamwatch: REPLAY added {} entries of '{}' to '{}' but could not delete them: {e}",
                ids.len(),
                text(dl),
                text(self.key)
            ));
        }
    }

    fn add(&self, fields: &Fields) -> Result<(), CmdError> {
        let mut args: Vec<&[u8]> = vec![self.key, b"*"];
        for (f, v) in fields {
            args.extend([&f[..], &v[..]]);
        }
        call(self.ctx, "XADD", &args, true)
            .map(|_| ())
            .map_err(|e| {
                CmdError::Msg(format!(
                    "ERR cannot add to '{}' (key), after moving {} entries: {e}",
                    text(self.key),
                    self.moved
                ))
            })
    }
}

/// A command, its errors as text; `replicate`: its effects go to replicas and the AOF.
fn call<'a>(
    ctx: &'a Context,
    cmd: &str,
    args: &[&[u8]],
    replicate: bool,
) -> Result<CallReply<'a>, String> {
    let opts = CallOptionsBuilder::new().errors_as_replies();
    let opts = match replicate {
        true => opts.replicate(),
        false => opts,
    };
    let r: CallResult = ctx.call_ext(cmd, &opts.build(), args);
    r.map_err(|e| e.to_utf8_string().unwrap_or_else(|| "error".into()))
}

fn bytes(r: &CallResult) -> Option<Vec<u8>> {
    match r {
        Ok(CallReply::String(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// `XRANGE dl start + COUNT count`: ids and fields.
fn range(
    ctx: &Context,
    dl: &[u8],
    start: &[u8],
    count: usize,
) -> Result<Vec<(Vec<u8>, Fields)>, String> {
    let count = count.to_string();
    let r = call(
        ctx,
        "XRANGE",
        &[dl, start, b"+", b"COUNT", count.as_bytes()],
        false,
    )?;
    let mut out = Vec::new();
    let CallReply::Array(list) = r else {
        return Ok(out);
    };
    for item in list.iter() {
        let Ok(CallReply::Array(pair)) = item else {
            continue;
        };
        let (Some(id), Some(Ok(CallReply::Array(fv)))) = (pair.get(0), pair.get(1)) else {
            continue;
        };
        let Some(id) = bytes(&id) else {
            continue;
        };
        let flat: Vec<Vec<u8>> = fv.iter().filter_map(|x| bytes(&x)).collect();
        let fields = flat
            .chunks_exact(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        out.push((id, fields));
    }
    Ok(out)
}

/// An error unless `key` is a stream or does not exist (XADD creates `key`; a missing
/// dead-letter stream has nothing to move). `what` comes before the key's name.
fn expect_stream(ctx: &Context, key: &[u8], what: &str) -> Result<(), CmdError> {
    let kind = match call(ctx, "TYPE", &[key], false) {
        Ok(CallReply::String(s)) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    match &kind[..] {
        b"stream" | b"none" => Ok(()),
        other => err(format!(
            "ERR {what}'{}' holds a {}, not a stream (key)",
            text(key),
            text(other)
        )),
    }
}

/// In a cluster, an error unless `dl` is in the slot of `key` (the server routed the
/// command by `key`; another slot may be on another node).
fn same_slot(ctx: &Context, key: &[u8], dl: &[u8]) -> Result<(), CmdError> {
    if !cluster::enabled(ctx) || cluster::key_slot(ctx, key) == cluster::key_slot(ctx, dl) {
        return Ok(());
    }
    err(format!(
        "ERR the dead-letter stream '{}' is in another hash slot than '{}'; give the \
         stream and its DEADLETTER one hash tag, as '{{q}}' and '{{q}}:dead' (key)",
        text(dl),
        text(key)
    ))
}

/// The command's database switched to `db` while this lives (the client keeps the one
/// it had selected).
struct InDb<'a> {
    ctx: &'a Context,
    was: i32,
}

impl<'a> InDb<'a> {
    fn enter(ctx: &'a Context, db: i32) -> Result<InDb<'a>, CmdError> {
        let was = ffi::selected_db(ctx);
        if was != db && !ffi::select_db(ctx, db) {
            return err(format!("ERR cannot select database {db} (DB)"));
        }
        Ok(InDb { ctx, was })
    }
}

impl Drop for InDb<'_> {
    fn drop(&mut self) {
        if ffi::selected_db(self.ctx) != self.was {
            ffi::select_db(self.ctx, self.was);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DbSel, OnChange, Source, StreamOpts};

    fn pairs(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A dead-letter entry as the module writes it: `own` then the eight pairs.
    fn dead(own: &[(&str, &str)], id: &str) -> Fields {
        let mut f = pairs(own);
        f.extend(pairs(&[
            ("id", id),
            ("attempts", "2"),
            ("error", "exit code 1"),
            ("last_exit", "1"),
            ("output", "boom"),
            ("watch", "q*"),
            ("group", "streamwatch"),
            ("handler", "h"),
        ]));
        f
    }

    #[test]
    fn the_original_fields_come_back_with_replayed_from() {
        let back = original(&dead(&[("url", "a"), ("error", "mine")], "1-1")).unwrap();
        assert_eq!(
            back,
            pairs(&[("url", "a"), ("error", "mine"), ("replayed_from", "1-1")])
        );
        // Nothing of its own: only replayed_from.
        assert_eq!(
            original(&dead(&[], "2-0")).unwrap(),
            pairs(&[("replayed_from", "2-0")])
        );
        // Replayed before: the earlier replayed_from is replaced.
        let again = dead(&[("url", "a"), ("replayed_from", "1-1")], "3-0");
        assert_eq!(
            original(&again).unwrap(),
            pairs(&[("url", "a"), ("replayed_from", "3-0")])
        );
    }

    #[test]
    fn entries_not_written_by_the_module_are_not_replayed() {
        assert_eq!(original(&pairs(&[("url", "a")])), None);
        assert_eq!(original(&[]), None);
        // The eight names, in another order.
        let mut f = dead(&[("url", "a")], "1-1");
        f.swap(1, 2);
        assert_eq!(original(&f), None);
        // A field after them.
        let mut f = dead(&[("url", "a")], "1-1");
        f.push((b"x".to_vec(), b"y".to_vec()));
        assert_eq!(original(&f), None);
    }

    fn spec(pattern: &str, dl: Option<&str>, db: DbSel) -> WatchSpec {
        WatchSpec {
            pattern: pattern.as_bytes().to_vec(),
            handler: "h".into(),
            kind: Kind::Stream,
            db,
            onchange: OnChange::Restart,
            source: Source::Command,
            stream: StreamOpts {
                deadletter: dl.map(|d| d.as_bytes().to_vec()),
                ..StreamOpts::default()
            },
        }
    }

    fn streams(
        covering: &[&WatchSpec],
        all: &[&WatchSpec],
        key: &str,
    ) -> Result<Vec<String>, String> {
        match dead_letter_streams(covering, all, 0, key.as_bytes()) {
            Ok(v) => Ok(v.iter().map(|d| text(d)).collect()),
            Err(CmdError::Msg(m)) => Err(m),
            Err(CmdError::Arity) => Err("arity".into()),
        }
    }

    #[test]
    fn each_covering_watch_gives_its_dead_letter_stream_once() {
        let a = spec("q*", None, DbSel::One(0));
        let mut b = spec("q1", Some("failed"), DbSel::All);
        b.stream.group = b"other".to_vec();
        let mut c = spec("*1", None, DbSel::One(0));
        c.stream.group = b"third".to_vec();
        let all = [&a, &b, &c];
        assert_eq!(
            streams(&[&a, &b, &c], &all, "q1"),
            Ok(vec!["q1:dead".into(), "failed".into()])
        );
    }

    #[test]
    fn a_dead_letter_stream_other_streams_may_share_is_refused() {
        // DEADLETTER of a pattern watch: every stream it covers dead-letters there.
        let shared = spec("jobs:*", Some("failed"), DbSel::One(0));
        let e = streams(&[&shared], &[&shared], "jobs:a").unwrap_err();
        assert!(
            e.starts_with("ERR the dead-letter stream 'failed' of 'jobs:a'"),
            "{e}"
        );
        assert!(e.contains("watch 'jobs:*'") && e.ends_with("(key)"), "{e}");
        // Two literal watches with one DEADLETTER.
        let a = spec("a", Some("failed"), DbSel::One(0));
        let b = spec("b", Some("failed"), DbSel::One(0));
        assert!(streams(&[&a], &[&a, &b], "a").is_err());
        // ... unless the other is in another database.
        let b5 = spec("b", Some("failed"), DbSel::One(5));
        assert_eq!(streams(&[&a], &[&a, &b5], "a"), Ok(vec!["failed".into()]));
        // A watch's default `<k>:dead` that is another's DEADLETTER.
        let q = spec("q", Some("x:dead"), DbSel::One(0));
        let x = spec("x*", None, DbSel::One(0));
        assert!(streams(&[&q], &[&q, &x], "q").is_err());
        let y = spec("y*", None, DbSel::One(0));
        assert_eq!(streams(&[&q], &[&q, &y], "q"), Ok(vec!["x:dead".into()]));
        // The default `<key>:dead` of a pattern watch is the key's own.
        let p = spec("q*", None, DbSel::All);
        assert_eq!(streams(&[&p], &[&p, &x], "q1"), Ok(vec!["q1:dead".into()]));
    }
}
