//! The registry's side of `STREAMWATCH.RELOAD`: the watches follow a config file read
//! again, keeping the identity (and so the jobs) of every watch the new file leaves as
//! it was.
//!
//! A watch whose options are unchanged but whose handler's definition changed keeps
//! its id and counters with the new handler: the supervisor then restarts its jobs a
//! batch at a time (`supervisor/reload.rs`). A config-file watch whose options changed
//! is a new watch (as `WATCH ... REPLACE` makes one), and one the file dropped is gone.
//! A new file the watches made by command cannot live with (their handler removed or
//! unable to serve them, or their pattern now the file's) is refused and changes
//! nothing: the caller swaps the file only when this succeeds.
//!
//! Runs with the GIL held (the supervisor's reload), so no command sees half of it.

use super::{with, Registry, Watch};
use crate::config::{self, Config, Handler};
use crate::spec::{Source, WatchSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a reload changed.
#[derive(Debug, Default, PartialEq)]
pub struct Reloaded {
    /// The watches kept with a changed handler: their jobs restart.
    pub changed: Vec<u64>,
    pub handlers_added: Vec<String>,
    pub handlers_changed: Vec<String>,
    pub handlers_removed: Vec<String>,
    pub watches_added: Vec<String>,
    pub watches_changed: Vec<String>,
    pub watches_removed: Vec<String>,
}

/// Makes the registry follow `new`, the config file read again (see the file's doc).
pub fn reload(new: &Config) -> Result<Reloaded, String> {
    let old_handlers = config::file().handlers.clone();
    with(|r| {
        let old = r.watches.clone();
        let mut out = handler_changes(&old_handlers, &new.handlers);
        let mut list: Vec<Arc<Watch>> = Vec::with_capacity(new.watches.len() + old.len());
        for spec in &new.watches {
            let handler = new.handlers[&spec.handler].clone();
            let was = old
                .iter()
                .find(|w| w.spec.source == Source::Config && w.spec.pattern == spec.pattern);
            let pattern = || String::from_utf8_lossy(&spec.pattern).into_owned();
            match was {
                Some(w) if w.spec == *spec => {
                    list.push(r.with_handler(w, handler, &mut out.changed));
                }
                Some(_) => {
                    out.watches_changed.push(pattern());
                    list.push(r.new_watch(spec.clone(), handler));
                }
                None => {
                    out.watches_added.push(pattern());
                    list.push(r.new_watch(spec.clone(), handler));
                }
            }
        }
        for w in old.iter().filter(|w| w.spec.source == Source::Config) {
            if !new.watches.iter().any(|s| s.pattern == w.spec.pattern) {
                out.watches_removed
                    .push(String::from_utf8_lossy(&w.spec.pattern).into());
            }
        }
        for w in old.iter().filter(|w| w.spec.source == Source::Command) {
            let handler = command_watch_handler(&w.spec, new)?;
            list.push(r.with_handler(w, handler, &mut out.changed));
        }
        // A retired watch brought back by a re-read of the store must not bring back
        // its old handler.
        r.retired.retain(|w| {
            new.handlers
                .get(&w.spec.handler)
                .is_some_and(|h| **h == *w.handler)
        });
        r.publish(list);
        Ok(out)
    })
}

/// The handler in `new` that the command watch `spec` keeps, or why there is none.
fn command_watch_handler(spec: &WatchSpec, new: &Config) -> Result<Arc<Handler>, String> {
    let pattern = String::from_utf8_lossy(&spec.pattern);
    if new.watches.iter().any(|s| s.pattern == spec.pattern) {
        return Err(format!(
            "the file has a watch with pattern '{pattern}', which STREAMWATCH.WATCH made; \
             UNWATCH it first"
        ));
    }
    let Some(handler) = new.handlers.get(&spec.handler) else {
        return Err(format!(
            "the file has no handler '{}', which watch '{pattern}' (made by \
             STREAMWATCH.WATCH) uses; UNWATCH it first",
            spec.handler
        ));
    };
    if let Some(problem) = config::handler_problem(spec, handler) {
        return Err(format!(
            "watch '{pattern}' (made by STREAMWATCH.WATCH) cannot keep handler '{}': {problem}",
            spec.handler
        ));
    }
    Ok(handler.clone())
}

/// The handlers added, changed and removed between `old` and `new`.
fn handler_changes(
    old: &BTreeMap<String, Arc<Handler>>,
    new: &BTreeMap<String, Arc<Handler>>,
) -> Reloaded {
    let mut out = Reloaded::default();
    for (name, h) in new {
        match old.get(name) {
            None => out.handlers_added.push(name.clone()),
            Some(o) if **o != **h => out.handlers_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    out.handlers_removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    out
}

impl Registry {
    /// `w` itself if `handler` is defined as its own is, else the same watch (id,
    /// spec, counters) with `handler`, its id noted in `changed`.
    fn with_handler(
        &mut self,
        w: &Arc<Watch>,
        handler: Arc<Handler>,
        changed: &mut Vec<u64>,
    ) -> Arc<Watch> {
        if *handler == *w.handler {
            return w.clone();
        }
        changed.push(w.id);
        Arc::new(Watch {
            id: w.id,
            spec: w.spec.clone(),
            glob: crate::glob::Glob::new(&w.spec.pattern),
            handler,
            jobs: w.jobs.clone(),
            queue: w.queue.clone(),
            // Marked by `publish`, as every watch is.
            paused: Default::default(),
        })
    }
}
