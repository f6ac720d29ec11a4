//! The supervisor's turns at Redis's GIL, spaced so that the main thread gets its own.
//!
//! Why: the GIL is a plain mutex, not a fair one. Redis's main thread takes it after
//! every event-loop sleep; when a module thread unlocks it and locks it again at once,
//! the main thread, just woken, usually has no CPU yet and loses it again. With 10,000
//! workers starting on two cores, back-to-back holds kept the main thread waiting
//! 8–16 ms (`LATENCY` event `module-acquire-GIL`) although no single hold lasted more
//! than 3 ms. So a turn that follows the last one closely first waits as long as the
//! last one lasted (at most `MAX_GAP`): the GIL is free at least as long as the
//! supervisor holds it, and the main thread waits for about one hold at most.
//! Turns that are not back to back (the usual case) do not wait at all.

use redis_module::{Context, ContextGuard, DetachedFromClient, ThreadSafeContext};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The longest pause between two turns (a hold that long was the thread descheduled
/// while holding; making the next turn wait longer would only slow the supervisor).
const MAX_GAP: Duration = Duration::from_millis(5);

thread_local! {
    /// When the last turn ended, and how long it was.
    static LAST: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The GIL, held until dropped; derefs to the context.
pub struct Gil {
    // Dropped in this order: the lock, then the turn (which notes the time).
    ctx: ContextGuard,
    _turn: Turn,
}

struct Turn {
    started: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        LAST.set(Some((Instant::now(), self.started.elapsed())));
    }
}

/// Takes the GIL, first leaving the main thread room after a turn that just ended.
pub fn lock(tsc: &ThreadSafeContext<DetachedFromClient>) -> Gil {
    if let Some((ended, held)) = LAST.get() {
        let wait = held.min(MAX_GAP).saturating_sub(ended.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    let turn = Turn {
        started: Instant::now(),
    };
    Gil {
        ctx: tsc.lock(),
        _turn: turn,
    }
}

impl std::ops::Deref for Gil {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}
