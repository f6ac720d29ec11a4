//! Counters and gauges the supervisor publishes for `STREAMWATCH.STATUS` and
//! `INFO streamwatch`, so those answer on the main thread without asking the
//! supervisor. Atomics only: one writer (the supervisor, or the main thread for
//! `events`/`events_dropped`), any number of readers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub static EVENTS: AtomicU64 = AtomicU64::new(0);
pub static EVENTS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bytes of worker output dropped because the supervisor was behind (see `runner`).
pub static OUTPUT_DROPPED: AtomicU64 = AtomicU64::new(0);
pub static RECONCILES: AtomicU64 = AtomicU64::new(0);
pub static RUNS_STARTED: AtomicU64 = AtomicU64::new(0);
pub static EXITS: AtomicU64 = AtomicU64::new(0);
pub static FAILURES: AtomicU64 = AtomicU64::new(0);
pub static JOBS_OVER_LIMIT: AtomicU64 = AtomicU64::new(0);
pub static PAUSED: AtomicBool = AtomicBool::new(false);
pub static PRIMARY: AtomicBool = AtomicBool::new(false);

/// Job states, in the order the SPEC lists them.
pub const STATES: [&str; 6] = [
    "starting", "running", "backoff", "stopping", "exited", "failed",
];

pub static JOBS_BY_STATE: [AtomicU64; 6] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn bump_if(c: &AtomicU64, yes: bool) {
    if yes {
        bump(c);
    }
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub fn state_index(state: &str) -> Option<usize> {
    STATES.iter().position(|s| *s == state)
}

pub fn set_states(counts: [u64; 6]) {
    for (slot, n) in JOBS_BY_STATE.iter().zip(counts) {
        slot.store(n, Ordering::Relaxed);
    }
}

pub fn total_jobs() -> u64 {
    JOBS_BY_STATE.iter().map(get).sum()
}
