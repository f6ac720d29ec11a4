//! The lifecycle event stream: the events waiting to be appended (one per job or entry
//! started, exited, stopped, ...) and their appending with XADD, a slice per GIL hold.

use super::gil;
use super::jobs::{Job, JobKey};
use super::stream::{QueueKey, Sid};
use crate::cluster;
use crate::config;
use crate::ffi;
use crate::stats;
use crate::watch::Watch;
use redis_module::{CallOptionsBuilder, CallResult, ContextFlags, ThreadSafeContext};
use std::sync::atomic::Ordering;

/// Lifecycle events appended per GIL hold.
const EVENTS_PER_HOLD: usize = 32;

/// One event: its fields and values, in order.
type Event = Vec<(&'static str, Vec<u8>)>;

/// The events not yet appended, and what appending them found.
#[derive(Default)]
pub(super) struct LifecycleEvents {
    pending: Vec<Event>,
    /// Appending to the events stream failed (and was logged) the last time.
    failing: bool,
    /// In cluster mode, this node's events stream: (events-key, name with a hash tag).
    key: Option<(String, String)>,
}

impl LifecycleEvents {
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues an event about the module itself (`paused`, `resumed`).
    pub(super) fn push_plain(&mut self, name: &'static str) {
        self.pending.push(vec![("event", name.as_bytes().to_vec())]);
    }

    /// Queues an event about one watch (`paused`, `resumed` by `STREAMWATCH.PAUSE
    /// pattern` / `RESUME pattern`).
    pub(super) fn push_watch(&mut self, name: &'static str, pattern: &[u8]) {
        self.push_fields(name, vec![("watch", pattern.to_vec())]);
    }

    /// Queues an event about the module itself with fields of its own (`gated`).
    pub(super) fn push_fields(&mut self, name: &'static str, extra: Vec<(&'static str, Vec<u8>)>) {
        let mut fields = vec![("event", name.as_bytes().to_vec())];
        fields.extend(extra);
        self.pending.push(fields);
    }

    /// Queues one lifecycle event about a job.
    pub(super) fn job(
        &mut self,
        name: &'static str,
        jk: &JobKey,
        job: &Job,
        extra: Vec<(&'static str, Vec<u8>)>,
    ) {
        let about = ("field", jk.field.clone());
        self.push(name, &job.watch, jk.db, &jk.key, about, extra);
    }

    /// Queues one lifecycle event about a stream entry.
    pub(super) fn entry(
        &mut self,
        name: &'static str,
        qk: &QueueKey,
        watch: &Watch,
        sid: Sid,
        extra: Vec<(&'static str, Vec<u8>)>,
    ) {
        let about = ("id", sid.to_string().into_bytes());
        self.push(name, watch, qk.db, &qk.key, about, extra);
    }

    /// Queues one lifecycle event about a pool worker (of handler `handler`).
    pub(super) fn worker(
        &mut self,
        name: &'static str,
        handler: &str,
        extra: Vec<(&'static str, Vec<u8>)>,
    ) {
        let mut fields = vec![
            ("event", name.as_bytes().to_vec()),
            ("handler", handler.as_bytes().to_vec()),
        ];
        fields.extend(extra);
        self.pending.push(fields);
    }

    /// Queues `duplicate-group`: stream watch `watch` does not run stream `key`, which
    /// `other` consumes through the same group.
    pub(super) fn duplicate_group(&mut self, watch: &Watch, db: i32, key: &[u8], other: &Watch) {
        self.pending.push(vec![
            ("event", b"duplicate-group".to_vec()),
            ("watch", watch.spec.pattern.clone()),
            ("db", db.to_string().into_bytes()),
            ("key", key.to_vec()),
            ("other", other.spec.pattern.clone()),
            ("group", watch.spec.stream.group.clone()),
        ]);
    }

    /// The one way an event is built: `event, watch, db, key`, then `field` (a job) or
    /// `id` (an entry), then the event's own fields.
    fn push(
        &mut self,
        name: &'static str,
        watch: &Watch,
        db: i32,
        key: &[u8],
        about: (&'static str, Vec<u8>),
        extra: Vec<(&'static str, Vec<u8>)>,
    ) {
        let mut fields = vec![
            ("event", name.as_bytes().to_vec()),
            ("watch", watch.spec.pattern.clone()),
            ("db", db.to_string().into_bytes()),
            ("key", key.to_vec()),
            about,
        ];
        fields.extend(extra);
        self.pending.push(fields);
    }

    /// Appends pending events to the events stream (one GIL hold), on a primary only;
    /// `in_cluster`: write this node's own stream (see `cluster::own_key`).
    pub(super) fn flush(
        &mut self,
        tsc: &ThreadSafeContext<redis_module::DetachedFromClient>,
        in_cluster: bool,
    ) -> Flushed {
        if self.pending.is_empty() {
            return Flushed::Done;
        }
        let events = std::mem::take(&mut self.pending);
        let mut key = config::get(&config::EVENTS_KEY);
        if key.is_empty() {
            return Flushed::Done;
        }
        let maxlen = config::events_maxlen().to_string();
        let ctx = gil::lock(tsc);
        if !ctx.get_flags().contains(ContextFlags::MASTER) || !ffi::select_db(&ctx, 0) {
            return Flushed::Done;
        }
        if ctx.avoid_replication_traffic() {
            // CLIENT PAUSE WRITE, FAILOVER: a write now would crash the server (it
            // asserts that nothing is replicated meanwhile). The events wait.
            self.pending = events;
            return Flushed::WritesPaused;
        }
        if in_cluster {
            // Cluster: this node's own stream, in a slot it serves and that is not
            // being migrated away (read now, under the same GIL hold as the writes).
            let shard = cluster::shard(&ctx);
            let cached = self.key.as_ref().filter(|(base, name)| {
                *base == key
                    && cluster::key_slot(&ctx, name.as_bytes()).is_some_and(|s| shard.contains(s))
            });
            let name = match cached {
                Some((_, name)) => name.clone(),
                None => match cluster::own_key(&ctx, &key, &shard) {
                    Some(name) => {
                        self.key = Some((key.clone(), name.clone()));
                        name
                    }
                    None => return Flushed::Done, // no slot: nowhere to write
                },
            };
            key = name;
        }
        let opts = CallOptionsBuilder::new().replicate().build();
        // A burst (10,000 jobs started at once) is written a slice per GIL hold, so the
        // main thread never waits long; the rest goes on the next turns.
        let mut events = events;
        if events.len() > EVENTS_PER_HOLD {
            let rest = events.split_off(EVENTS_PER_HOLD);
            self.pending = rest;
        }
        let total = events.len();
        for (written, fields) in events.into_iter().enumerate() {
            let mut args: Vec<&[u8]> = vec![key.as_bytes()];
            if config::events_maxlen() > 0 {
                args.extend([b"MAXLEN".as_slice(), b"~", maxlen.as_bytes()]);
            }
            args.push(b"*");
            let values: Vec<std::borrow::Cow<[u8]>> =
                fields.iter().map(|(_, v)| event_value(v)).collect();
            for ((k, _), v) in fields.iter().zip(&values) {
                args.push(k.as_bytes());
                args.push(v);
            }
            let r: CallResult = ctx.call_ext("XADD", &opts, args.as_slice());
            if let Err(e) = r {
                // Counted, and said once until appending works again (a key of the
                // wrong type would otherwise log a line per event).
                stats::EVENTS_DROPPED.fetch_add((total - written) as u64, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    ffi::log_warning(format!(
                        "streamwatch: cannot append to the events stream '{key}': {}; \
                         events are dropped (counted in events_dropped) until it works again",
                        e.to_utf8_string().unwrap_or_default()
                    ));
                }
                return Flushed::Done;
            }
        }
        if std::mem::take(&mut self.failing) {
            ffi::log_notice(format!(
                "streamwatch: the events stream '{key}' is written again"
            ));
        }
        Flushed::Done
    }
}

/// What a flush of pending writes (events, queues) did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flushed {
    Done,
    /// This node is no longer a primary: nothing was written.
    Demoted,
    /// Writes are paused (CLIENT PAUSE WRITE, FAILOVER): nothing was written; try
    /// again a little later.
    WritesPaused,
}

/// Longest value of an event's field (a key, a field name, an error): the events stream
/// keeps up to `events-maxlen` entries, and a client's 500 KB key name must not be
/// copied into each of them.
const MAX_EVENT_VALUE: usize = 1024;

/// An event's field value as written: longer ones are cut, saying how long they were.
fn event_value(v: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if v.len() <= MAX_EVENT_VALUE {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut cut = v[..MAX_EVENT_VALUE].to_vec();
    cut.extend_from_slice(format!("... ({} bytes)", v.len()).as_bytes());
    std::borrow::Cow::Owned(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_values_are_cut_saying_how_long() {
        assert_eq!(&*event_value(b"k"), b"k");
        let long = vec![b'k'; MAX_EVENT_VALUE + 1];
        let cut = event_value(&long);
        assert!(cut.starts_with(&long[..MAX_EVENT_VALUE]));
        assert!(cut.ends_with(format!("... ({} bytes)", MAX_EVENT_VALUE + 1).as_bytes()));
    }
}
