//! The supervisor's turns at Redis's GIL, spaced so that the main thread gets its own.
//!
//! Why: the GIL is a plain mutex, not a fair one. Redis's main thread takes it after
//! every event-loop sleep; when a module thread unlocks it and locks it again at once,
//! the main thread, just woken, usually has no CPU yet and loses it again. With 10,000
//! workers starting on two cores, back-to-back holds kept the main thread waiting
//! 8–16 ms (`LATENCY` event `module-acquire-GIL`) although no single hold lasted more
//! than 3 ms. So the supervisor keeps a debt: the time it held the GIL, less the time
//! it left it free. Past `ALLOWANCE` of debt, a turn first waits until the GIL has been
//! free as long as it was held, and at least `ROOM`: the main thread then waits for
//! about one hold at most, even when it is slow to get a CPU.
//! Turns with room between them (stream jobs: a few short holds per job, far apart)
//! run up no debt and never wait.

use redis_module::{Context, ContextGuard, DetachedFromClient, ThreadSafeContext};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Held time the supervisor may run ahead of free time before a turn waits.
const ALLOWANCE: Duration = Duration::from_micros(250);
/// Once a turn must wait, the least time the GIL is then left free. The main thread,
/// woken when the GIL is freed, must get a CPU before the next turn locks it again.
/// With 10,000 workers starting on two cores that took it up to 3 ms (0.07 ms on
/// average, `perf sched latency`), and a look at a 10,000-field hash took its 40
/// slices in 4-5 ms with under 0.1 ms between two of them.
const ROOM: Duration = Duration::from_millis(1);
/// The longest wait before a turn (a hold that long was the thread descheduled while
/// holding; waiting longer would only slow the supervisor).
const MAX_WAIT: Duration = Duration::from_millis(5);

thread_local! {
    /// When the last turn ended, and the debt then.
    static LAST: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The GIL, held until dropped; derefs to the context.
pub struct Gil {
    // Dropped in this order: the lock, then the turn (which notes the time).
    ctx: ContextGuard,
    turn: Turn,
}

struct Turn {
    started: Instant,
    /// The debt when the turn started.
    debt: Duration,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let now = Instant::now();
        LAST.set(Some((now, self.debt + (now - self.started))));
    }
}

/// Takes the GIL, first leaving the main thread room if this thread is in debt.
pub fn lock(tsc: &ThreadSafeContext<DetachedFromClient>) -> Gil {
    let mut debt = Duration::ZERO;
    if let Some((ended, owed)) = LAST.get() {
        let free = ended.elapsed();
        debt = owed.saturating_sub(free);
        if debt > ALLOWANCE {
            let wait = (debt - ALLOWANCE)
                .max(ROOM.saturating_sub(free))
                .min(MAX_WAIT);
            std::thread::sleep(wait);
            debt = debt.saturating_sub(wait);
        }
    }
    let ctx = tsc.lock();
    // From when it is ours: time spent waiting for the main thread is not a debt.
    let turn = Turn {
        started: Instant::now(),
        debt,
    };
    Gil { ctx, turn }
}

impl Gil {
    /// How long this turn has held the GIL so far.
    pub fn held(&self) -> Duration {
        self.turn.started.elapsed()
    }
}

impl std::ops::Deref for Gil {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}
