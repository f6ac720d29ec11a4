//! A run's start time as `/proc/PID/stat` gives it (clock ticks since boot): with the
//! pid, it is how the module knows the process again after a crash. The kernel takes it
//! from the boot-time clock during the clone, so readings of that clock just before and
//! just after the clone that fall in the same tick give it without opening `/proc`
//! (an open per run was a tenth of the CPU the module spends on a short stream job).
//! The first run checks this against `/proc`; if they disagree, `/proc` it is.

/// `/proc/PID/stat`, shared with the module and the test harness.
#[path = "../../src/procstat.rs"]
mod procstat;

use crate::sys;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// 0: not checked yet; 1: the clock agrees with /proc; 2: it does not.
static CLOCK_OK: AtomicU8 = AtomicU8::new(0);

/// The boot-time clock, in nanoseconds: read just before and just after a clone.
pub fn now_ns() -> u64 {
    sys::boottime_ns()
}

fn tick_ns() -> u64 {
    static TICK: OnceLock<u64> = OnceLock::new();
    *TICK.get_or_init(|| 1_000_000_000 / sys::clock_ticks_per_second().unwrap_or(100))
}

/// `pid`'s start time, cloned between the readings `before` and `after`; 0 if
/// unknown.
pub fn of(pid: i32, before: u64, after: u64) -> u64 {
    let (a, b) = (before / tick_ns(), after / tick_ns());
    match CLOCK_OK.load(Ordering::Relaxed) {
        1 if a == b => return a,
        0 | 1 => {}
        _ => return from_proc(pid).unwrap_or(0),
    }
    let proc = from_proc(pid);
    if let (0, true, Some(p)) = (CLOCK_OK.load(Ordering::Relaxed), a == b, proc) {
        CLOCK_OK.store(if p == a { 1 } else { 2 }, Ordering::Relaxed);
    }
    proc.unwrap_or(0)
}

/// Field 22 of `/proc/PID/stat` (the run is our child, not reaped: it is there).
pub fn from_proc(pid: i32) -> Option<u64> {
    parse_stat(&procstat::read(pid)?)
}

/// The start time (field 22) of a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<u64> {
    procstat::fields(stat)?.nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_field_22_past_any_command_name() {
        let rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        assert_eq!(parse_stat(&format!("77 (cat) {rest}")), Some(424242));
        assert_eq!(parse_stat(&format!("77 (a) b) (c d) {rest}")), Some(424242));
        assert_eq!(parse_stat("77 (cat) S 1 2"), None);
        assert_eq!(parse_stat("77 (cat)"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    fn own_start_time_is_in_the_past() {
        let me = std::process::id() as i32;
        let start = from_proc(me).expect("/proc/self/stat");
        assert!(start > 0 && start <= now_ns() / tick_ns());
        assert_eq!(from_proc(-1), None);
    }

    #[test]
    fn a_child_clock_reading_agrees_with_proc() {
        let before = now_ns();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let after = now_ns();
        let pid = child.id() as i32;
        let proc = from_proc(pid).unwrap();
        assert!(before / tick_ns() <= proc && proc <= after / tick_ns());
        assert_eq!(of(pid, before, after), proc);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
