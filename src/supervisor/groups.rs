//! One stream watch per consumer group and stream: two watches that consume the same
//! stream through the same group would each run every entry. `WATCH` and the config
//! file refuse such pairs; the store may still hold one (edited by hand, or written
//! before that check), so when a key is looked at, only one of them runs it: the one
//! already consuming it, else the oldest watch. Each refusal is said once, in the log
//! and as a `duplicate-group` event naming both watches.

use super::events::LifecycleEvents;
use crate::ffi;
use crate::watch::Watch;
use std::collections::BTreeSet;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Groups {
    /// (db, key, watch, rival): refusals already said.
    refused: BTreeSet<(i32, Vec<u8>, u64, u64)>,
}

impl Groups {
    /// The watches changed: refusals are said again if they still hold.
    pub(super) fn watches_changed(&mut self) {
        self.refused.clear();
    }

    /// Of the stream watches that cover `key`, one per consumer group; `consuming`
    /// says whether a watch already has a queue on the key.
    pub(super) fn one_per_group(
        &mut self,
        db: i32,
        key: &[u8],
        mut streams: Vec<Arc<Watch>>,
        consuming: impl Fn(&Watch) -> bool,
        events: &mut LifecycleEvents,
    ) -> Vec<Arc<Watch>> {
        if streams.len() < 2 {
            return streams;
        }
        streams.sort_by_key(|w| (!consuming(w), w.id));
        let mut kept: Vec<Arc<Watch>> = Vec::with_capacity(streams.len());
        for w in streams {
            let rival = kept
                .iter()
                .find(|k| k.spec.stream.group == w.spec.stream.group);
            let Some(r) = rival else {
                kept.push(w);
                continue;
            };
            if self.refused.insert((db, key.to_vec(), w.id, r.id)) {
                ffi::log_warning(format!(
                    "streamwatch: watch '{}' does not run stream '{}' (db {db}): watch '{}' consumes it through the same group '{}'",
                    String::from_utf8_lossy(&w.spec.pattern),
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(&r.spec.pattern),
                    String::from_utf8_lossy(&w.spec.stream.group),
                ));
                events.duplicate_group(&w, db, key, r);
            }
        }
        kept
    }
}
