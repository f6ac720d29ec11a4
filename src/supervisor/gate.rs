//! The gate: a primary that runs jobs only while nothing holds them back.
//!
//! Two things can, besides PAUSE:
//! * **The server would refuse writes** because `min-replicas-to-write` is not met (too
//!   few replicas acknowledged within `min-replicas-max-lag`). Such a node is likely an
//!   old primary that came back after a failover (Sentinel demotes it some seconds later)
//!   or one cut off from its replicas: its writes, acks of stream entries included, may
//!   be lost, so it runs nothing. Refusal is read, not provoked: the same predicate as
//!   the server's (`checkGoodReplicasStatus`): a primary with both configs non-zero and
//!   fewer good replicas than `min-replicas-to-write`, the count being INFO
//!   replication's `min_slaves_good_slaves` (so named on Redis 7.0 and Valkey 9 alike,
//!   and shown only while both configs are non-zero). The module's own writes are not
//!   refused by the server (only a script-mode call is), so the module holds them back
//!   itself: lifecycle events and stream acks wait, written when the gate opens.
//! * **`start-paused`** (see `config/start_paused.rs`): a hold taken at load, released
//!   by `STREAMWATCH.RESUME` or, for `until-replica`, once the node is a replica or a
//!   primary with a replica in sync (`state=online`).
//!
//! The facts are read under the GIL (a `CONFIG GET` of both configs, and INFO
//! replication when needed: a few microseconds) when the module loads, when the node
//! becomes a primary, on RESUME, and every `CHECK_EVERY` while either config or an
//! `until-replica` hold is in force (else every `CHECK_IDLE`, to notice a `CONFIG SET`).
//! So a replica whose connection closes stops the primary's jobs within `CHECK_EVERY`
//! (the server recounts at once), one that stops acknowledging within
//! `min-replicas-max-lag` plus a second (the server recounts once a second) plus
//! `CHECK_EVERY`. A gate that closes stops every job as a demotion does (in-flight
//! stream entries stay pending in their group, run again once the gate opens here or on
//! the new primary); one that opens brings a full reconcile. `policy` is the rule, as a
//! pure function; the rest applies it.

use super::{gil, Deadline, Supervisor};
use crate::config::{self, StartPaused};
use crate::ffi;
use redis_module::{Context, ContextFlags, RedisValue};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// How often the gate is checked while `min-replicas-to-write` (with a non-zero
/// `min-replicas-max-lag`) or an `until-replica` hold is in force.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// ...and otherwise (to notice `CONFIG SET min-replicas-to-write`).
const CHECK_IDLE: Duration = Duration::from_secs(1);

/// What holds a primary's jobs back (`gate` in STATUS and INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open = 0,
    /// The server would refuse writes: `min-replicas-to-write` is not met.
    WritesRefused = 1,
    /// `start-paused until-resume`, not resumed yet.
    UntilResume = 2,
    /// `start-paused until-replica`, no replica in sync yet.
    UntilReplica = 3,
}

const GATES: [Gate; 4] = [
    Gate::Open,
    Gate::WritesRefused,
    Gate::UntilResume,
    Gate::UntilReplica,
];

impl Gate {
    pub fn name(self) -> &'static str {
        match self {
            Gate::Open => "open",
            Gate::WritesRefused => "writes-refused",
            Gate::UntilResume => "until-resume",
            Gate::UntilReplica => "until-replica",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Gate::Open => "nothing holds them back",
            Gate::WritesRefused => {
                "the server refuses writes (min-replicas-to-write is not met: too few \
                 replicas acknowledged within min-replicas-max-lag)"
            }
            Gate::UntilResume => "start-paused until-resume (STREAMWATCH.RESUME releases it)",
            Gate::UntilReplica => {
                "start-paused until-replica (released once this node has a replica in \
                 sync, or is a replica; STREAMWATCH.RESUME releases it too)"
            }
        }
    }
}

/// The gate as last published (for STATUS and INFO, read on the main thread).
static PUBLISHED: AtomicU8 = AtomicU8::new(Gate::Open as u8);

/// The gate as the supervisor last saw it.
pub fn current() -> Gate {
    let n = PUBLISHED.load(Ordering::Relaxed);
    GATES
        .into_iter()
        .find(|g| *g as u8 == n)
        .unwrap_or(Gate::Open)
}

/// What one look at the server found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Facts {
    pub primary: bool,
    /// `min-replicas-to-write` and `min-replicas-max-lag`.
    pub to_write: i64,
    pub max_lag: i64,
    /// INFO replication's `min_slaves_good_slaves` (absent while either config is 0).
    pub good: Option<i64>,
    /// Replicas in sync (`state=online`); counted only while `until-replica` holds.
    pub online: i64,
}

/// The rule: given the start-paused hold still in force and the facts, the hold that
/// remains and the gate.
pub(super) fn policy(hold: StartPaused, f: &Facts) -> (StartPaused, Gate) {
    let hold = match hold {
        StartPaused::UntilReplica if !f.primary || f.online > 0 => StartPaused::No,
        h => h,
    };
    let refused = f.primary
        && f.to_write > 0
        && f.max_lag > 0
        // A server that does not say (none known) is taken at its word: not refusing.
        && f.good.is_some_and(|good| good < f.to_write);
    let gate = match hold {
        StartPaused::UntilResume => Gate::UntilResume,
        StartPaused::UntilReplica => Gate::UntilReplica,
        StartPaused::No if refused => Gate::WritesRefused,
        StartPaused::No => Gate::Open,
    };
    (hold, gate)
}

/// Whether the gate needs the frequent checks.
fn in_force(hold: StartPaused, f: &Facts) -> bool {
    hold == StartPaused::UntilReplica || (f.to_write > 0 && f.max_lag > 0)
}

/// The supervisor's side: the hold, the gate, the facts last read.
pub(super) struct GateState {
    hold: StartPaused,
    gate: Gate,
    facts: Facts,
}

impl Default for GateState {
    /// Until the supervisor's first check (before it runs anything), as if this were a
    /// lone primary that accepts writes: the first check then logs a closed gate and
    /// queues its event.
    fn default() -> GateState {
        let hold = config::START_PAUSED.get();
        let alone = Facts {
            primary: true,
            ..Facts::default()
        };
        GateState {
            hold,
            gate: policy(hold, &alone).1,
            facts: Facts::default(),
        }
    }
}

/// The gate when the module loads (main thread, before the supervisor starts), so that
/// STATUS says it from the first answer: a `CONFIG GET` and, if it matters, INFO
/// replication; no I/O.
pub fn at_load(ctx: &Context) {
    let hold = config::START_PAUSED.get();
    let gate = policy(hold, &read_facts(ctx, hold)).1;
    PUBLISHED.store(gate as u8, Ordering::Relaxed);
}

impl GateState {
    /// Jobs may run (as far as the gate is concerned).
    pub(super) fn open(&self) -> bool {
        self.gate == Gate::Open
    }

    /// The server would refuse writes: the module writes nothing either.
    pub(super) fn writes_refused(&self) -> bool {
        self.gate == Gate::WritesRefused
    }
}

/// Reads the facts (under the GIL held by `ctx`); INFO replication only when they
/// depend on it.
fn read_facts(ctx: &Context, hold: StartPaused) -> Facts {
    let mut f = Facts {
        primary: ctx.get_flags().contains(ContextFlags::MASTER),
        ..Facts::default()
    };
    let configs = ctx.call(
        "CONFIG",
        &["GET", "min-replicas-to-write", "min-replicas-max-lag"],
    );
    if let Ok(RedisValue::Array(v)) = configs {
        for pair in v.chunks_exact(2) {
            let (RedisValue::SimpleString(name) | RedisValue::BulkString(name)) = &pair[0] else {
                continue;
            };
            let value = match &pair[1] {
                RedisValue::SimpleString(s) | RedisValue::BulkString(s) => s.parse().ok(),
                RedisValue::Integer(n) => Some(*n),
                _ => None,
            };
            match name.as_str() {
                "min-replicas-to-write" => f.to_write = value.unwrap_or(0),
                "min-replicas-max-lag" => f.max_lag = value.unwrap_or(0),
                _ => {}
            }
        }
    }
    let counting = hold == StartPaused::UntilReplica;
    if !f.primary || !(in_force(hold, &f) || counting) {
        return f;
    }
    let info = ctx.server_info("replication");
    let int = |name: &str| info.field(name).and_then(|s| s.parse_integer().ok());
    if f.to_write > 0 && f.max_lag > 0 {
        f.good = int("min_slaves_good_slaves");
    }
    if counting {
        let replicas = int("connected_slaves").unwrap_or(0).clamp(0, 10_000);
        f.online = (0..replicas)
            .filter(|i| {
                info.field(&format!("slave{i}"))
                    .is_some_and(|s| s.to_string_lossy().contains("state=online"))
            })
            .count() as i64;
    }
    f
}

impl Supervisor {
    /// Reads the facts and moves the gate; a gate that closed stops every job, one that
    /// opened reconciles. True if it reconciled.
    pub(super) fn check_gate(&mut self) -> bool {
        let facts = {
            let ctx = gil::lock(&self.tsc);
            read_facts(&ctx, self.gate.hold)
        };
        self.gate.facts = facts;
        let every = match in_force(self.gate.hold, &facts) {
            true => CHECK_EVERY,
            false => CHECK_IDLE,
        };
        self.timers
            .set(Deadline::Gate, Some(Instant::now() + every));
        self.settle_gate()
    }

    /// `STREAMWATCH.RESUME`: releases a start-paused hold (the caller reconciles).
    pub(super) fn release_hold(&mut self) {
        if self.gate.hold != StartPaused::No {
            ffi::log_notice(format!(
                "streamwatch: start-paused {} released by STREAMWATCH.RESUME",
                self.gate.hold.name()
            ));
            self.gate.hold = StartPaused::No;
        }
        self.move_gate();
    }

    /// Applies the rule to the facts last read; acts on a change of what runs.
    fn settle_gate(&mut self) -> bool {
        let was_live = self.live();
        self.move_gate();
        match (was_live, self.live()) {
            (true, false) => {
                self.stop_everything();
                false
            }
            (false, true) => {
                self.reconcile_all();
                true
            }
            _ => false,
        }
    }

    /// The new hold and gate: logged, published, and an event (`gated` with its
    /// `reason`, or `ungated`).
    fn move_gate(&mut self) {
        let (hold, gate) = policy(self.gate.hold, &self.gate.facts);
        if hold != self.gate.hold {
            ffi::log_notice(format!(
                "streamwatch: start-paused {} released: this node has a replica in sync, \
                 or is a replica",
                self.gate.hold.name()
            ));
            self.gate.hold = hold;
        }
        // (Also when unchanged: `at_load` may have published another.)
        PUBLISHED.store(gate as u8, Ordering::Relaxed);
        let before = self.gate.gate;
        if gate == before {
            return;
        }
        self.gate.gate = gate;
        self.stats_now = true;
        if gate == Gate::Open {
            ffi::log_notice(format!(
                "streamwatch: jobs may run again (was: {})",
                before.name()
            ));
            self.events.push_plain("ungated");
        } else {
            let f = &self.gate.facts;
            let counts = match gate {
                Gate::WritesRefused => {
                    format!(" ({} of {} good replicas)", f.good.unwrap_or(0), f.to_write)
                }
                _ => String::new(),
            };
            ffi::log_notice(format!(
                "streamwatch: no job runs on this node: {}{counts}",
                gate.why()
            ));
            self.events
                .push_fields("gated", vec![("reason", gate.name().as_bytes().to_vec())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StartPaused::{No, UntilReplica, UntilResume};

    fn facts(primary: bool, to_write: i64, max_lag: i64, good: Option<i64>, online: i64) -> Facts {
        Facts {
            primary,
            to_write,
            max_lag,
            good,
            online,
        }
    }

    #[test]
    fn the_gate_follows_the_servers_own_rule_and_the_start_hold() {
        let p = true;
        // (hold, facts, hold after, gate)
        let table = [
            // min-replicas-to-write 0 (the default): never refused.
            (No, facts(p, 0, 10, None, 0), No, Gate::Open),
            // Met, not met, met exactly.
            (No, facts(p, 1, 10, Some(1), 1), No, Gate::Open),
            (No, facts(p, 1, 10, Some(0), 0), No, Gate::WritesRefused),
            (No, facts(p, 2, 10, Some(1), 1), No, Gate::WritesRefused),
            (No, facts(p, 2, 10, Some(3), 3), No, Gate::Open),
            // max-lag 0 turns the check off, as in the server.
            (No, facts(p, 1, 0, Some(0), 0), No, Gate::Open),
            // A server that does not report the count is taken as accepting writes.
            (No, facts(p, 1, 10, None, 0), No, Gate::Open),
            // A replica refuses client writes for another reason: not this gate.
            (No, facts(false, 1, 10, Some(0), 0), No, Gate::Open),
            // until-resume holds whatever happens.
            (
                UntilResume,
                facts(p, 0, 10, None, 1),
                UntilResume,
                Gate::UntilResume,
            ),
            (
                UntilResume,
                facts(false, 0, 10, None, 0),
                UntilResume,
                Gate::UntilResume,
            ),
            // until-replica: held on a lone primary, released by a replica in sync...
            (
                UntilReplica,
                facts(p, 0, 10, None, 0),
                UntilReplica,
                Gate::UntilReplica,
            ),
            (UntilReplica, facts(p, 0, 10, None, 1), No, Gate::Open),
            // ...or by being a replica (a later promotion then runs the jobs).
            (UntilReplica, facts(false, 0, 10, None, 0), No, Gate::Open),
            // Released, the write rule still applies.
            (
                UntilReplica,
                facts(p, 2, 10, Some(1), 1),
                No,
                Gate::WritesRefused,
            ),
            // The hold is named first while both apply.
            (
                UntilReplica,
                facts(p, 1, 10, Some(0), 0),
                UntilReplica,
                Gate::UntilReplica,
            ),
        ];
        for (hold, f, want_hold, want_gate) in table {
            assert_eq!(policy(hold, &f), (want_hold, want_gate), "{hold:?} {f:?}");
        }
    }

    #[test]
    fn checks_are_frequent_only_while_something_can_close_the_gate() {
        assert!(!in_force(No, &facts(true, 0, 10, None, 0)));
        assert!(!in_force(No, &facts(true, 1, 0, None, 0)));
        assert!(in_force(No, &facts(true, 1, 10, Some(1), 0)));
        assert!(in_force(UntilReplica, &facts(true, 0, 10, None, 0)));
        assert!(!in_force(UntilResume, &facts(true, 0, 10, None, 0)));
    }

    #[test]
    fn published_gates_read_back() {
        for g in GATES {
            PUBLISHED.store(g as u8, Ordering::Relaxed);
            assert_eq!(current(), g);
        }
        PUBLISHED.store(Gate::Open as u8, Ordering::Relaxed);
    }
}
