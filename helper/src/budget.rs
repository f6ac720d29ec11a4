//! How fast a run's output is forwarded (stdout and stderr, and its replies on
//! descriptor 3, together): a worker that writes faster waits on its pipe, so no amount
//! of output is ever buffered on either side.

use std::time::{Duration, Instant};

/// Output one run may forward: this many bytes a second, in bursts of `RUN_BURST`.
pub const RUN_RATE: usize = 1 << 20;
pub const RUN_BURST: usize = 1 << 20;
/// Output all runs together may forward.
pub const TOTAL_RATE: usize = 16 << 20;
pub const TOTAL_BURST: usize = 4 << 20;
/// How long a run over its budget (or all runs, over theirs) is not read.
pub const OUTPUT_PAUSE: Duration = Duration::from_millis(50);
/// At most this much of one run's output is read per wake-up.
pub const READ_PER_TURN: usize = 64 * 1024;

/// How much output may be forwarded to the module, refilled with time (a token
/// bucket): a worker that writes without pause (`yes`) is read only at this rate, so its
/// output costs neither the helper, the module nor Redis's memory more than that.
pub struct Budget {
    bytes: f64,
    at: Instant,
}

impl Budget {
    pub fn full(burst: usize, now: Instant) -> Budget {
        Budget {
            bytes: burst as f64,
            at: now,
        }
    }

    /// Bytes available now.
    pub fn refill(&mut self, now: Instant, rate: usize, burst: usize) -> usize {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.bytes = (self.bytes + dt * rate as f64).min(burst as f64);
        self.at = now;
        self.bytes as usize
    }

    pub fn spend(&mut self, n: usize) {
        self.bytes = (self.bytes - n as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_never_exceeds_the_burst() {
        let t0 = Instant::now();
        let mut b = Budget::full(1000, t0);
        assert_eq!(b.refill(t0, 100, 1000), 1000);
        assert_eq!(b.refill(t0 + Duration::from_secs(60), 100, 1000), 1000);
    }

    #[test]
    fn refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::full(1000, t0);
        b.spend(1000);
        assert_eq!(b.refill(t0, 100, 1000), 0);
        assert_eq!(b.refill(t0 + Duration::from_millis(500), 100, 1000), 50);
        b.spend(20);
        assert_eq!(b.refill(t0 + Duration::from_secs(1), 100, 1000), 80);
        // Half a byte is not a byte, but it is kept.
        b.spend(80);
        assert_eq!(b.refill(t0 + Duration::from_millis(1005), 100, 1000), 0);
        assert_eq!(b.refill(t0 + Duration::from_millis(1015), 100, 1000), 1);
    }

    #[test]
    fn overspending_stops_at_zero_and_time_never_runs_backwards() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let mut b = Budget::full(10, later);
        b.spend(1_000_000);
        assert_eq!(b.refill(later, 100, 1000), 0);
        // A reading older than the last one adds nothing.
        assert_eq!(b.refill(t0, 100, 1000), 0);
        assert_eq!(b.refill(t0 + Duration::from_millis(100), 100, 1000), 10);
    }

    // A full read per turn fits in a run's burst, a run's burst and rate in everyone's.
    const _: () = assert!(READ_PER_TURN <= RUN_BURST && RUN_BURST <= TOTAL_BURST);
    const _: () = assert!(RUN_RATE <= TOTAL_RATE);
}
