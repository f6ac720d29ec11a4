//! Pacing the looks at hot keys. Every hinted key is looked at at once, except a key
//! written back to back whose looks are costly: its next look waits, so that looking at
//! one key never holds the GIL more than about 1/`PACE_FACTOR` of the time. A burst of
//! writes to a big hash cannot starve the main thread, and the look that follows still
//! sees the latest state. Pure bookkeeping over the times it is given.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A look at a key counts as costing at least this much (a look that takes no GIL
/// still costs the main thread a wake-up) when it paces that key's next look...
pub(super) const PACE_MIN: Duration = Duration::from_micros(50);
/// ...to no sooner than this many times its cost later (about 10% of the GIL at most).
const PACE_FACTOR: u32 = 9;
/// A hint this soon after the key's last look counts as a write back to back...
const HOT_GAP: Duration = Duration::from_micros(500);
/// ...and this many such looks in a row start the pacing.
const HOT_STREAK: u32 = 4;
/// A key's pacing state is forgotten this long after its last look.
const PACE_KEEP: Duration = Duration::from_millis(20);

pub(super) type KeyRef = (i32, Vec<u8>);

/// How hot a key with costly looks is.
struct Pace {
    /// No look before this time.
    at: Option<Instant>,
    /// Hot looks in a row.
    streak: u32,
    last_end: Instant,
    /// Hinted while waiting for `at`.
    hot: bool,
}

#[derive(Default)]
pub(super) struct Pacer {
    pace: HashMap<KeyRef, Pace>,
    /// Hinted keys waiting for their pace.
    deferred: BTreeSet<KeyRef>,
}

impl Pacer {
    /// The keys waiting for their pace, to be looked at now whatever their pace (a
    /// command came: what came before it is seen first).
    pub(super) fn take_deferred(&mut self) -> BTreeSet<KeyRef> {
        std::mem::take(&mut self.deferred)
    }

    /// Whether `key`, hinted at `now`, may be looked at now; if not it waits.
    pub(super) fn admit(&mut self, key: &KeyRef, now: Instant) -> bool {
        match self.pace.get_mut(key) {
            Some(p) if p.at.is_some_and(|at| now < at) => {
                p.hot = true; // hinted again before its pace: still hot
                self.deferred.insert(key.clone());
                false
            }
            _ => true,
        }
    }

    /// `key` was looked at from `began` to `end`, which cost the server `cost` (the
    /// time it held the GIL, at least `PACE_MIN`). A key written back to back (hinted
    /// during its pace, or right after its last look) is hot; a few hot looks in a row
    /// and it is paced. Writes a millisecond apart are each looked at at once.
    pub(super) fn looked(&mut self, key: KeyRef, began: Instant, cost: Duration, end: Instant) {
        let p = self.pace.entry(key).or_insert(Pace {
            at: None,
            streak: 0,
            last_end: end - HOT_GAP,
            hot: false,
        });
        if p.hot || began.saturating_duration_since(p.last_end) < HOT_GAP {
            p.streak += 1;
        } else {
            p.streak = 0;
        }
        p.hot = false;
        p.last_end = end;
        p.at = (p.streak >= HOT_STREAK).then(|| end + cost.max(PACE_MIN) * PACE_FACTOR);
    }

    /// Waiting keys whose time has come, into `due`; returns when the next one comes.
    pub(super) fn due(&mut self, due: &mut BTreeSet<KeyRef>, now: Instant) -> Option<Instant> {
        if self.deferred.is_empty() && self.pace.len() <= 1024 {
            return None; // nothing waits, nothing to trim (the check below)
        }
        let mut next: Option<Instant> = None;
        let pace = &self.pace;
        self.deferred
            .retain(|k| match pace.get(k).and_then(|p| p.at) {
                Some(at) if at > now => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
                _ => {
                    due.insert(k.clone());
                    false
                }
            });
        // Every key looked at has an entry; one not looked at for PACE_KEEP can be
        // neither hot nor waiting, so a stream of writes to many keys stays bounded.
        if self.pace.len() > 4 * self.deferred.len() + 1024 {
            self.pace.retain(|_, p| {
                p.at.is_some_and(|at| at > now)
                    || now.saturating_duration_since(p.last_end) < PACE_KEEP
            });
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_back_to_back_is_paced_and_one_written_slowly_is_not() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let us = |n: u64| t0 + Duration::from_micros(n);
        let key: KeyRef = (0, b"k".to_vec());
        let cost = Duration::from_micros(100);
        // (hinted at, look ends at) -> admitted?
        let mut p = Pacer::default();
        let table = [
            (0, 100, true),
            (200, 300, true),
            (400, 500, true),
            (600, 700, true), // the 4th look back to back: paced until 700 + 9 × 100 µs
            (800, 0, false),  // waits
            (1500, 0, false), // still waits
            (1600, 1700, true), // its pace is over
        ];
        for (i, (hinted, end, admitted)) in table.into_iter().enumerate() {
            assert_eq!(p.admit(&key, us(hinted)), admitted, "row {i}");
            if admitted {
                p.looked(key.clone(), us(hinted), cost, us(end));
            }
        }

        // Writes 2 ms apart are never paced.
        let mut p = Pacer::default();
        for i in 0..20 {
            let at = us(i * 2000);
            assert!(p.admit(&key, at), "write {i}");
            p.looked(key.clone(), at, cost, at + cost);
        }
    }

    #[test]
    fn a_waiting_key_is_due_when_its_pace_is_over() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let us = |n: u64| t0 + Duration::from_micros(n);
        let key: KeyRef = (3, b"big".to_vec());
        let mut p = Pacer::default();
        for i in 0..5 {
            p.looked(
                key.clone(),
                us(i * 100),
                Duration::from_millis(1),
                us(i * 100 + 50),
            );
        }
        assert!(!p.admit(&key, us(500)));
        let mut due = BTreeSet::new();
        let next = p.due(&mut due, us(600)).expect("the key waits");
        assert!(due.is_empty());
        assert_eq!(p.due(&mut due, next), None);
        assert!(due.contains(&key) && due.len() == 1);
        // A command takes the waiting keys whatever their pace.
        assert!(!p.admit(&key, us(700)));
        assert_eq!(p.take_deferred().len(), 1);
    }
}
