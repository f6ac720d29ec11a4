//! The `start-paused` module config (immutable): whether the module, once loaded, waits
//! before it runs any job, and for what.
//!
//! * `no` (the default): jobs start as soon as the node is a primary that accepts writes.
//! * `until-resume`: nothing runs until `STREAMWATCH.RESUME`.
//! * `until-replica`: nothing runs until this node has rejoined a replication set: it is
//!   a replica (then a later promotion runs the jobs as usual), or a primary with at
//!   least one replica in sync (`state=online`). `STREAMWATCH.RESUME` also releases it.
//!
//! The hold is taken once, when the module loads, and released once; what holds and
//! releases it is `supervisor/gate.rs`'s. Redis hands an enum config to the module as a
//! number; the names here are what `CONFIG GET` and the module arguments use.

use redis_module::configuration::{ConfigurationContext, ConfigurationValue};
use redis_module::{EnumConfigurationValue, RedisError};
use std::sync::atomic::{AtomicI32, Ordering};

/// The value of `start-paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPaused {
    No = 0,
    UntilResume = 1,
    UntilReplica = 2,
}

impl StartPaused {
    const ALL: [StartPaused; 3] = [
        StartPaused::No,
        StartPaused::UntilResume,
        StartPaused::UntilReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StartPaused::No => "no",
            StartPaused::UntilResume => "until-resume",
            StartPaused::UntilReplica => "until-replica",
        }
    }
}

impl TryFrom<i32> for StartPaused {
    type Error = RedisError;

    fn try_from(v: i32) -> Result<StartPaused, RedisError> {
        StartPaused::ALL
            .into_iter()
            .find(|s| *s as i32 == v)
            .ok_or(RedisError::Str("start-paused: no such value"))
    }
}

impl From<StartPaused> for i32 {
    fn from(s: StartPaused) -> i32 {
        s as i32
    }
}

impl EnumConfigurationValue for StartPaused {
    fn get_options(&self) -> (Vec<String>, Vec<i32>) {
        let all = StartPaused::ALL;
        (
            all.iter().map(|s| s.name().to_string()).collect(),
            all.iter().map(|s| *s as i32).collect(),
        )
    }
}

/// The config's cell (registered in lib.rs).
pub struct StartPausedConfig(AtomicI32);

pub static START_PAUSED: StartPausedConfig = StartPausedConfig(AtomicI32::new(0));

impl StartPausedConfig {
    pub fn get(&self) -> StartPaused {
        StartPaused::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(StartPaused::No)
    }
}

impl ConfigurationValue<StartPaused> for StartPausedConfig {
    fn get(&self, _ctx: &ConfigurationContext) -> StartPaused {
        StartPausedConfig::get(self)
    }

    fn set(&self, _ctx: &ConfigurationContext, val: StartPaused) -> Result<(), RedisError> {
        self.0.store(val as i32, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_numbers_and_names() {
        let (names, numbers) = StartPaused::No.get_options();
        assert_eq!(names, ["no", "until-resume", "until-replica"]);
        for (name, n) in names.iter().zip(numbers) {
            let s = StartPaused::try_from(n).unwrap();
            assert_eq!(s.name(), name);
            assert_eq!(i32::from(s), n);
        }
        assert!(StartPaused::try_from(3).is_err());
    }
}
